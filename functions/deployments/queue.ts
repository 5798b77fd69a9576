// The deployment-requests Service Bus queue: the same request as POST /api/deployments.

import { createHash } from "node:crypto";
import type { InvocationContext } from "@azure/functions";
import { type DeploymentRequest, InvalidRequestError, parseDeploymentRequestText } from "./request.js";
import { type StartDeploymentDeps, type StartedDeployment, startDeployment } from "./start.js";

/**
 * A message that can never become a deployment. The Node.js v4 model has no dead-letter call
 * without the preview Service Bus SDK binding, so the trigger throws this: Service Bus delivers
 * the message again up to the queue's maxDeliveryCount, then moves it to the dead-letter queue.
 * The reason is logged with the message id on every attempt.
 */
export class DeadLetterError extends Error {
  constructor(
    readonly reason: string,
    readonly description: string,
  ) {
    super(`${reason}: ${description}`);
    this.name = "DeadLetterError";
  }
}

export async function receiveDeploymentMessage(
  message: unknown,
  context: InvocationContext,
  deps: StartDeploymentDeps,
): Promise<StartedDeployment> {
  const messageId = String(context.triggerMetadata?.messageId ?? "");
  const deliveryCount = Number(context.triggerMetadata?.deliveryCount ?? 1);
  try {
    const request = withSetId(parseMessage(message, deps.now()), messageId);
    const started = await startDeployment(request, deps);
    context.log(
      `deployment set ${started.setId} ${started.started ? "started" : "already existed"} from message ${messageId}`,
    );
    return started;
  } catch (error) {
    if (error instanceof InvalidRequestError) {
      const deadLetter = new DeadLetterError("InvalidDeploymentRequest", error.message);
      context.error(
        `message ${messageId} (delivery ${deliveryCount}) is not a valid deployment request and will be dead-lettered: ${error.message}`,
      );
      throw deadLetter;
    }
    // Anything else (storage, IoT Hub, the Durable extension) may pass: rethrow so Service Bus redelivers.
    context.warn(
      `message ${messageId} (delivery ${deliveryCount}) failed, will be retried: ${(error as Error).message}`,
    );
    throw error;
  }
}

function parseMessage(message: unknown, now: Date): DeploymentRequest {
  if (typeof message === "string") return parseDeploymentRequestText(message, now);
  if (Buffer.isBuffer(message) || message instanceof Uint8Array) {
    return parseDeploymentRequestText(Buffer.from(message).toString("utf8"), now);
  }
  // The host hands over a JSON body already parsed; size it the way it arrived.
  return parseDeploymentRequestText(JSON.stringify(message ?? null), now);
}

/**
 * Redelivery after a failure past startNew must not start a second set, so a message without a
 * client-chosen id gets one derived from its Service Bus message id.
 */
function withSetId(request: DeploymentRequest, messageId: string): DeploymentRequest {
  if (request.id !== undefined || messageId === "") return request;
  return { ...request, id: `sb-${createHash("sha256").update(messageId).digest("hex").slice(0, 32)}` };
}
