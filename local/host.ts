/**
 * The local Functions host: serves the app's HTTP functions under the same routes as in Azure
 * (`/api/...`), the Durable extension's HTTP API (`/runtime/webhooks/durabletask/...`, which the
 * real DurableClient and the check-status URLs use), runs orchestrations and activities on the
 * local engine, and invokes Event Hub and Service Bus triggers with messages handed to it.
 *
 * Function keys are not enforced, as in Azure Functions Core Tools' local mode.
 */
import { randomUUID } from "node:crypto";
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import azureFunctions, { type HttpResponseInit, type InvocationContext } from "@azure/functions";
import {
  DurableEngine,
  InstanceCompletedError,
  InstanceExistsError,
  InstanceNotFoundError,
} from "./durable/engine.js";
import type { InstanceRecord, InstanceStore } from "./durable/store.js";
import type { BindingMetadata, LocalFunctionApp, RegisteredFunction } from "./functions-app.js";

export const TASK_HUB = "DeltashipHub";
const WEBHOOK_PREFIX = "/runtime/webhooks/durabletask/";
/** Largest request body the host reads: deployment requests are at most 1 MiB. */
const MAX_BODY_BYTES = 4 * 1024 * 1024;

export interface LocalHostOptions {
  app: LocalFunctionApp;
  store: InstanceStore;
  /** 127.0.0.1 by default. */
  host?: string;
  /** 7071 by default, as in Azure Functions Core Tools; 0 picks a free port. */
  port?: number;
  log?: (line: string) => void;
}

interface Route {
  fn: RegisteredFunction;
  methods: string[];
  pattern: RegExp;
  params: string[];
  /** Literal routes win over templated ones, as in the Functions host. */
  literal: boolean;
}

export class LocalFunctionHost {
  readonly engine: DurableEngine;
  private readonly routes: Route[];
  private server?: Server;
  origin = "";

  constructor(private readonly options: LocalHostOptions) {
    this.engine = new DurableEngine({
      store: options.store,
      orchestrators: options.app.orchestrators(),
      activities: options.app.activities(),
      log: options.log,
    });
    this.routes = options.app
      .withTrigger("httpTrigger")
      .map(toRoute)
      .sort((a, b) => Number(b.literal) - Number(a.literal));
  }

  async start(): Promise<string> {
    const server = createServer((req, res) => {
      this.handle(req, res).catch((error) => {
        this.log(`host error on ${req.method} ${req.url}: ${describe(error)}`);
        if (!res.headersSent) res.writeHead(500, { "content-type": "application/json" });
        res.end(JSON.stringify({ error: describe(error) }));
      });
    });
    this.server = server;
    server.listen(this.options.port ?? 7071, this.options.host ?? "127.0.0.1");
    await new Promise<void>((resolve, reject) => {
      server.once("listening", resolve);
      server.once("error", reject);
    });
    const address = server.address() as AddressInfo;
    this.origin = `http://${address.address}:${address.port}`;
    await this.engine.resume();
    return this.origin;
  }

  async stop(): Promise<void> {
    await this.engine.close();
    await new Promise<void>((resolve) => (this.server ? this.server.close(() => resolve()) : resolve()));
    this.server?.closeAllConnections();
  }

  /** Invokes an Event Hub trigger with a batch, the way the host delivers IoT Hub messages (cardinality many). */
  async invokeEventHub(
    functionName: string,
    messages: unknown[],
    systemProperties: Record<string, unknown>[],
  ) {
    const fn = this.function(functionName, "eventHubTrigger");
    const many = fn.trigger.cardinality === "many";
    const enqueued = new Date().toISOString();
    const triggerMetadata = many
      ? { systemPropertiesArray: systemProperties, enqueuedTimeUtcArray: messages.map(() => enqueued) }
      : { systemProperties: systemProperties[0], enqueuedTimeUtc: enqueued };
    return fn.handler(many ? messages : messages[0], this.context(fn, triggerMetadata));
  }

  /** Invokes a Service Bus trigger with one message body. */
  async invokeServiceBus(functionName: string, message: unknown, metadata: Record<string, unknown> = {}) {
    const fn = this.function(functionName, "serviceBusTrigger");
    const triggerMetadata = { messageId: randomUUID(), deliveryCount: 1, ...metadata };
    return fn.handler(message, this.context(fn, triggerMetadata));
  }

  /** The Durable client binding data the host gives a function with a durable client input. */
  clientData(): Record<string, unknown> {
    const base = `${this.origin}${WEBHOOK_PREFIX}`;
    const query = `taskHub=${TASK_HUB}&connection=Storage&code=local`;
    return {
      taskHubName: TASK_HUB,
      creationUrls: {
        createNewInstancePostUri: `${base}orchestrators/{functionName}[/{instanceId}]?code=local`,
        createAndWaitOnNewInstancePostUri: `${base}orchestrators/{functionName}[/{instanceId}]?timeout={timeoutInSeconds}&pollingInterval={intervalInSeconds}&code=local`,
      },
      managementUrls: {
        id: "INSTANCEID",
        statusQueryGetUri: `${base}instances/INSTANCEID?${query}`,
        sendEventPostUri: `${base}instances/INSTANCEID/raiseEvent/{eventName}?${query}`,
        terminatePostUri: `${base}instances/INSTANCEID/terminate?reason={text}&${query}`,
        rewindPostUri: `${base}instances/INSTANCEID/rewind?reason={text}&${query}`,
        purgeHistoryDeleteUri: `${base}instances/INSTANCEID?${query}`,
        restartPostUri: `${base}instances/INSTANCEID/restart?${query}`,
        suspendPostUri: `${base}instances/INSTANCEID/suspend?reason={text}&${query}`,
        resumePostUri: `${base}instances/INSTANCEID/resume?reason={text}&${query}`,
      },
      baseUrl: base.slice(0, -1),
      requiredQueryStringParameters: "code=local",
      rpcBaseUrl: base,
    };
  }

  private log(line: string): void {
    this.options.log?.(line);
  }

  private function(name: string, triggerType: string): RegisteredFunction {
    const fn = this.options.app.functions.get(name);
    if (fn === undefined || fn.trigger.type !== triggerType) {
      throw new Error(`the app registers no ${triggerType} function named '${name}'`);
    }
    return fn;
  }

  private context(fn: RegisteredFunction, triggerMetadata?: Record<string, unknown>): InvocationContext {
    const context = new azureFunctions.InvocationContext({
      functionName: fn.name,
      invocationId: randomUUID(),
      triggerMetadata,
      logHandler: (level, ...args) => this.log(`[${fn.name}] ${level}: ${args.map(String).join(" ")}`),
      options: {
        trigger: fn.trigger as never,
        extraInputs: fn.extraInputs as never,
      },
    });
    for (const input of fn.extraInputs) {
      if (isDurableClient(input)) context.extraInputs.set(input.name, this.clientData());
    }
    return context;
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url ?? "/", this.origin);
    const body = await readBody(req);
    if (url.pathname.startsWith(WEBHOOK_PREFIX)) {
      const answer = await this.durableApi(req.method ?? "GET", url, body);
      res.writeHead(answer.status, { "content-type": "application/json" });
      res.end(answer.body === undefined ? "" : JSON.stringify(answer.body));
      return;
    }
    if (url.pathname.startsWith("/api/")) {
      const path = url.pathname.slice("/api/".length);
      for (const route of this.routes) {
        const match = route.pattern.exec(path);
        if (match === null || !route.methods.includes(req.method ?? "GET")) continue;
        const params = Object.fromEntries(route.params.map((p, i) => [p, decodeURIComponent(match[i + 1])]));
        await this.invokeHttp(route.fn, req, url, body, params, res);
        return;
      }
    }
    res.writeHead(404, { "content-type": "application/json" });
    res.end(JSON.stringify({ error: `no function serves ${req.method} ${url.pathname}` }));
  }

  private async invokeHttp(
    fn: RegisteredFunction,
    req: IncomingMessage,
    url: URL,
    body: Buffer,
    params: Record<string, string>,
    res: ServerResponse,
  ): Promise<void> {
    const headers: Record<string, string> = {};
    for (const [name, value] of Object.entries(req.headers)) {
      if (value !== undefined) headers[name] = Array.isArray(value) ? value.join(", ") : value;
    }
    const request = new azureFunctions.HttpRequest({
      method: req.method ?? "GET",
      url: url.href,
      headers,
      query: Object.fromEntries(url.searchParams),
      params,
      body: body.length > 0 ? { string: body.toString("utf8") } : undefined,
    });
    const result = (await fn.handler(request, this.context(fn))) as
      | HttpResponseInit
      | azureFunctions.HttpResponse;
    await writeResponse(result, res);
  }

  /** The subset of the Durable extension's HTTP API that DurableClient and status polling use. */
  private async durableApi(
    method: string,
    url: URL,
    body: Buffer,
  ): Promise<{ status: number; body?: unknown }> {
    const path = decodeURIComponent(url.pathname.slice(WEBHOOK_PREFIX.length));
    try {
      const start = /^orchestrators\/([^/]+)(?:\/(.+))?$/.exec(path);
      if (method === "POST" && start !== null) {
        const input = body.length > 0 ? JSON.parse(body.toString("utf8")) : undefined;
        const id = await this.engine.startNew(start[1], start[2], input);
        return { status: 202, body: this.managementLinks(id) };
      }
      const event = /^instances\/([^/]+)\/raiseEvent\/(.+)$/.exec(path);
      if (method === "POST" && event !== null) {
        const data = body.length > 0 ? JSON.parse(body.toString("utf8")) : undefined;
        await this.engine.raiseEvent(event[1], event[2], data);
        return { status: 202 };
      }
      const terminate = /^instances\/([^/]+)\/terminate$/.exec(path);
      if (method === "POST" && terminate !== null) {
        await this.engine.terminate(terminate[1], url.searchParams.get("reason") ?? "terminated");
        return { status: 202 };
      }
      const instance = /^instances\/([^/]*)$/.exec(path);
      if (method === "GET" && instance !== null) {
        if (instance[1] === "") {
          return { status: 200, body: (await this.engine.listInstances()).map((r) => this.statusBody(r)) };
        }
        const status = await this.engine.getStatus(instance[1]);
        if (status === undefined)
          return { status: 404, body: { message: `no instance with id '${instance[1]}'` } };
        const withHistory = url.searchParams.get("showHistory") === "true";
        const ended = ["Completed", "Failed", "Terminated"].includes(status.record.runtimeStatus);
        return {
          status: ended ? 200 : 202,
          body: {
            ...this.statusBody(status.record),
            ...(withHistory ? { historyEvents: status.history } : {}),
          },
        };
      }
      return { status: 404, body: { message: `the local host does not serve ${method} ${url.pathname}` } };
    } catch (error) {
      if (error instanceof InstanceExistsError) return { status: 409, body: { message: error.message } };
      if (error instanceof InstanceNotFoundError) return { status: 404, body: { message: error.message } };
      if (error instanceof InstanceCompletedError) return { status: 410, body: { message: error.message } };
      if (error instanceof SyntaxError)
        return { status: 400, body: { message: `body is not JSON: ${error.message}` } };
      throw error;
    }
  }

  /** The check-status payload the extension answers a start with: the instance id and its management URLs. */
  private managementLinks(instanceId: string): Record<string, string> {
    const urls = this.clientData().managementUrls as Record<string, string>;
    return Object.fromEntries(
      Object.entries(urls).map(([key, url]) => [key, url.replace("INSTANCEID", instanceId)]),
    );
  }

  private statusBody(record: InstanceRecord | undefined): Record<string, unknown> | undefined {
    if (record === undefined) return undefined;
    return {
      name: record.name,
      instanceId: record.instanceId,
      runtimeStatus: record.runtimeStatus,
      input: record.input,
      customStatus: record.customStatus ?? null,
      output: record.output ?? null,
      createdTime: record.createdTime,
      lastUpdatedTime: record.lastUpdatedTime,
    };
  }
}

function isDurableClient(binding: BindingMetadata): boolean {
  return binding.type === "durableClient" || binding.type === "orchestrationClient";
}

function toRoute(fn: RegisteredFunction): Route {
  const route = String(fn.trigger.route ?? fn.name).replace(/^\/+|\/+$/g, "");
  const params: string[] = [];
  const pattern = route
    .split("/")
    .map((segment) => {
      const param = /^\{([A-Za-z_][\w]*)(?::[^}?]+)?(\?)?\}$/.exec(segment);
      if (param === null) return segment.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
      params.push(param[1]);
      return "([^/]+)";
    })
    .join("/");
  const methods = ((fn.trigger.methods as string[] | undefined) ?? ["GET", "POST"]).map((m) =>
    m.toUpperCase(),
  );
  return { fn, methods, pattern: new RegExp(`^${pattern}/?$`), params, literal: params.length === 0 };
}

async function readBody(req: IncomingMessage): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let total = 0;
  for await (const chunk of req) {
    total += (chunk as Buffer).length;
    if (total > MAX_BODY_BYTES) throw new Error(`request body over ${MAX_BODY_BYTES} bytes`);
    chunks.push(chunk as Buffer);
  }
  return Buffer.concat(chunks);
}

async function writeResponse(
  result: HttpResponseInit | azureFunctions.HttpResponse | undefined,
  res: ServerResponse,
): Promise<void> {
  if (result === undefined) {
    res.writeHead(204).end();
    return;
  }
  if (result instanceof azureFunctions.HttpResponse) {
    const headers: Record<string, string> = {};
    result.headers.forEach((value, name) => {
      headers[name] = value;
    });
    const text = await result.text();
    res.writeHead(result.status, headers).end(text);
    return;
  }
  const headers: Record<string, string> = {};
  const init = result.headers;
  if (init !== undefined) {
    for (const [name, value] of init instanceof Headers ? init.entries() : Object.entries(init)) {
      headers[name.toLowerCase()] = String(value);
    }
  }
  let text = "";
  if (result.jsonBody !== undefined) {
    headers["content-type"] ??= "application/json";
    text = JSON.stringify(result.jsonBody);
  } else if (typeof result.body === "string") {
    text = result.body;
  }
  res.writeHead(result.status ?? 200, headers).end(text);
}

function describe(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
