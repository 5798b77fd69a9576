// POST /api/deployments: validate, start (or find) the deployment set, answer 202 with the Durable check-status payload.

import type { HttpRequest, HttpResponse, HttpResponseInit, InvocationContext } from "@azure/functions";
import type { DurableClient } from "durable-functions";
import { InvalidRequestError, MAX_REQUEST_BYTES, parseDeploymentRequestText } from "./request.js";
import { type StartDeploymentDeps, startDeployment } from "./start.js";

export interface DeploymentHttpDeps extends StartDeploymentDeps {
  durable: Pick<DurableClient, "getStatus" | "startNew" | "createCheckStatusResponse">;
}

/** Response header saying whether this request started the set (true) or found it started (false). */
export const SET_STARTED_HEADER = "Deltaship-Set-Started";

export async function postDeployment(
  request: HttpRequest,
  context: InvocationContext,
  deps: DeploymentHttpDeps,
): Promise<HttpResponse | HttpResponseInit> {
  try {
    const declared = Number(request.headers.get("content-length") ?? 0);
    if (declared > MAX_REQUEST_BYTES) {
      throw new InvalidRequestError(
        "body",
        `request body must be at most ${MAX_REQUEST_BYTES} bytes, found ${declared}`,
      );
    }
    const deployment = parseDeploymentRequestText(await request.text(), deps.now());
    const { setId, started } = await startDeployment(deployment, deps);
    context.log(
      `deployment set ${setId} ${started ? "started" : "already existed"} for ${deployment.requestedBy.email}`,
    );
    const response = deps.durable.createCheckStatusResponse(request, setId);
    response.headers.set(SET_STARTED_HEADER, String(started));
    return response;
  } catch (error) {
    if (error instanceof InvalidRequestError) {
      context.warn(`rejected deployment request: ${error.message}`);
      return badRequest(error);
    }
    // Storage, IoT Hub or the Durable extension failed: nothing the caller sent is wrong, so say retry.
    context.error(`deployment request failed: ${(error as Error).message}`);
    return {
      status: 503,
      headers: { "Retry-After": "30" },
      jsonBody: {
        error: {
          field: "",
          message:
            `could not start the deployment set (${(error as Error).message}); ` +
            "retry later, with an id so a retry cannot start a second set",
        },
      },
    };
  }
}

export function badRequest(error: InvalidRequestError): HttpResponseInit {
  return { status: 400, jsonBody: { error: { field: error.field, message: error.message } } };
}
