/**
 * A local stand-in for the Durable Functions extension's HTTP API, the part of the Functions host
 * that the real `DurableClient` (durable-functions 3.x) talks to. Without a Functions host there is
 * no extension to answer, so tests point a real client at this server (through the client
 * binding's `rpcBaseUrl`) and assert what the client asked for.
 *
 *   const host = await startDurableHost();
 *   after(() => host.close());
 *   const client = host.client();          // a real DurableClient from df.getClient()
 *   … host.instances.get(id), host.events …
 *
 * It keeps instances in memory: start (refused with 409 while one with the same id is pending or
 * running), status (404 for an unknown id), raise event (404 unknown, 410 completed, 202 recorded).
 */
import { createServer } from "node:http";
import type { AddressInfo } from "node:net";
import azureFunctions from "@azure/functions";
import * as df from "durable-functions";
import { readRequestBody } from "./request-body.js";

/** Largest request body read: orchestration inputs in tests are small. */
const MAX_BODY_BYTES = 8 * 1024 * 1024;
export const TASK_HUB = "DeltashipHub";
/** The function key the check-status URLs carry; the real host fills in the app's system key. */
export const SYSTEM_KEY = "test-system-key";

export type RuntimeStatus = "Pending" | "Running" | "Completed" | "Failed" | "Terminated";

export interface StandinInstance {
  name: string;
  instanceId: string;
  input: unknown;
  runtimeStatus: RuntimeStatus;
  customStatus?: unknown;
  output?: unknown;
  createdTime: string;
}

export interface RaisedEvent {
  instanceId: string;
  name: string;
  data: unknown;
}

export interface DurableHost {
  origin: string;
  instances: Map<string, StandinInstance>;
  /** Events accepted for running instances, in order. */
  events: RaisedEvent[];
  /** Every request, as `METHOD path`. */
  requests: string[];
  /** A real DurableClient bound to this stand-in, obtained the way a trigger does (df.getClient). */
  client(): df.DurableClient;
  close(): Promise<void>;
}

export async function startDurableHost(): Promise<DurableHost> {
  const instances = new Map<string, StandinInstance>();
  const events: RaisedEvent[] = [];
  const requests: string[] = [];
  const server = createServer((req, res) => {
    readRequestBody(req, MAX_BODY_BYTES).then(
      (body) => {
        const url = new URL(req.url ?? "/", "http://127.0.0.1");
        requests.push(`${req.method} ${url.pathname}`);
        const answer = respond(req.method ?? "", url, body);
        const payload = answer.body === undefined ? "" : JSON.stringify(answer.body);
        res.writeHead(answer.status, { "content-type": "application/json" }).end(payload);
      },
      (error: Error) => {
        res.writeHead(413).end(error.message);
      },
    );
  });

  function respond(method: string, url: URL, body: string): { status: number; body?: unknown } {
    const path = decodeURIComponent(url.pathname.replace(/^\/durabletask\//, ""));
    const start = /^orchestrators\/([^/]+)(?:\/(.+))?$/.exec(path);
    if (method === "POST" && start !== null) {
      const [, name, id] = start;
      const instanceId = id ?? `generated-${instances.size + 1}`;
      const existing = instances.get(instanceId);
      if (
        existing !== undefined &&
        (existing.runtimeStatus === "Pending" || existing.runtimeStatus === "Running")
      ) {
        return { status: 409, body: { Message: `An instance with ID '${instanceId}' already exists.` } };
      }
      instances.set(instanceId, {
        name,
        instanceId,
        input: body === "" ? undefined : JSON.parse(body),
        runtimeStatus: "Pending",
        createdTime: new Date().toISOString(),
      });
      return { status: 202, body: { id: instanceId } };
    }
    const raise = /^instances\/([^/]+)\/raiseEvent\/(.+)$/.exec(path);
    if (method === "POST" && raise !== null) {
      const [, instanceId, name] = raise;
      const instance = instances.get(instanceId);
      if (instance === undefined) return { status: 404 };
      if (instance.runtimeStatus !== "Pending" && instance.runtimeStatus !== "Running")
        return { status: 410 };
      events.push({ instanceId, name, data: body === "" ? undefined : JSON.parse(body) });
      return { status: 202 };
    }
    const status = /^instances\/([^/]+)$/.exec(path);
    if (method === "GET" && status !== null) {
      const instance = instances.get(status[1]);
      if (instance === undefined) return { status: 404 };
      return {
        status: 200,
        // The extension sends null for an absent output or custom status; the client insists on the keys.
        body: {
          ...instance,
          input: instance.input ?? null,
          output: instance.output ?? null,
          customStatus: instance.customStatus ?? null,
          lastUpdatedTime: instance.createdTime,
        },
      };
    }
    return { status: 404, body: { Message: `the stand-in does not serve ${method} ${url.pathname}` } };
  }

  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const origin = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;

  return {
    origin,
    instances,
    events,
    requests,
    client() {
      const input = df.input.durableClient();
      const context = new azureFunctions.InvocationContext({
        functionName: "test",
        options: { extraInputs: [input] },
      });
      context.extraInputs.set(input, clientData(origin));
      return df.getClient(context);
    },
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

/** The durable client binding data the host would pass to a trigger, pointing at the stand-in. */
function clientData(origin: string): Record<string, unknown> {
  const webhooks = `${origin}/runtime/webhooks/durabletask`;
  const query = `taskHub=${TASK_HUB}&connection=Storage&code=${SYSTEM_KEY}`;
  const instance = `${webhooks}/instances/INSTANCEID`;
  return {
    taskHubName: TASK_HUB,
    creationUrls: {
      createNewInstancePostUri: `${webhooks}/orchestrators/{functionName}[/{instanceId}]?code=${SYSTEM_KEY}`,
      createAndWaitOnNewInstancePostUri: `${webhooks}/orchestrators/{functionName}[/{instanceId}]?timeout={timeoutInSeconds}&pollingInterval={intervalInSeconds}&code=${SYSTEM_KEY}`,
    },
    managementUrls: {
      id: "INSTANCEID",
      statusQueryGetUri: `${instance}?${query}`,
      sendEventPostUri: `${instance}/raiseEvent/{eventName}?${query}`,
      terminatePostUri: `${instance}/terminate?reason={text}&${query}`,
      rewindPostUri: `${instance}/rewind?reason={text}&${query}`,
      purgeHistoryDeleteUri: `${instance}?${query}`,
      restartPostUri: `${instance}/restart?${query}`,
      suspendPostUri: `${instance}/suspend?reason={text}&${query}`,
      resumePostUri: `${instance}/resume?reason={text}&${query}`,
    },
    baseUrl: webhooks,
    requiredQueryStringParameters: `code=${SYSTEM_KEY}`,
    rpcBaseUrl: `${origin}/durabletask/`,
  };
}
