/**
 * A local HTTPS server that stands in for Azure services the tests cannot reach (no Azure
 * account is available to test machines): it records every request the real Azure SDKs send
 * and answers like the service does, for the small subset Deltaship uses.
 *
 *   const tls = makeTestCertificates();               // a throwaway CA and a 127.0.0.1 server cert
 *   const hub = await startHttpsStandin(tls, iotHubResponder(twins), { port: 443 });
 *   after(() => hub.close());
 *   // … point the SDK at https://127.0.0.1 (trusting tls.caPem), then assert hub.requests.
 *
 * Responders for IoT Hub (registry: applyConfigurationContent, twin query) and Communication
 * Services email (send + operation status) are below; they check the SDKs' signatures with the
 * key the test configured, so a request that would be refused by Azure is refused here too.
 */
import { execFile } from "node:child_process";
import { createHash, createHmac, randomUUID } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { createServer } from "node:https";
import type { AddressInfo } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { makeServerCertificates } from "../../local/services/certificates.js";
import { readRequestBody } from "./request-body.js";

/** Attempts and pause when a fixed port is busy: 50 × 200 ms bounds the wait to 10 s. */
const LISTEN_ATTEMPTS = 50;
const LISTEN_RETRY_MS = 200;
/** Largest request body the stand-in reads; the SDK requests we serve are a few KB. */
const MAX_REQUEST_BODY_BYTES = 4 * 1024 * 1024;

export interface TestCertificates {
  /** PEM of the throwaway CA: hand it to the client (NODE_EXTRA_CA_CERTS or a ca option). */
  caPem: string;
  /** Path of a file holding caPem, for NODE_EXTRA_CA_CERTS. */
  caPath: string;
  keyPem: string;
  certPem: string;
  /** Deletes the temporary directory holding the files. */
  dispose(): void;
}

/** Makes a CA and a server certificate for 127.0.0.1 and localhost with the openssl binary. */
export function makeTestCertificates(): TestCertificates {
  const dir = mkdtempSync(join(tmpdir(), "deltaship-tls-"));
  const files = makeServerCertificates(dir);
  return {
    caPem: readFileSync(files.caPath, "utf8"),
    caPath: files.caPath,
    keyPem: readFileSync(files.keyPath, "utf8"),
    certPem: readFileSync(files.certPath, "utf8"),
    dispose: () => rmSync(dir, { recursive: true, force: true }),
  };
}

/** Bound on a client child process: its SDK calls against the stand-in take a few seconds. */
const CLIENT_TIMEOUT_MS = 60_000;

/**
 * Runs a TypeScript client script in a child Node process that trusts the stand-in's CA (for
 * SDKs that take no CA option: NODE_EXTRA_CA_CERTS is read only at process start), with
 * `argument` as JSON in argv[2]; returns what the script printed.
 */
export async function runTrustingClient(
  script: string,
  tls: TestCertificates,
  argument: unknown,
): Promise<string> {
  const { stdout } = await promisify(execFile)(
    process.execPath,
    ["--import", "tsx", script, JSON.stringify(argument)],
    { env: { ...process.env, NODE_EXTRA_CA_CERTS: tls.caPath }, timeout: CLIENT_TIMEOUT_MS },
  );
  return stdout;
}

export interface RecordedRequest {
  method: string;
  /** Path and query string, as sent. */
  url: string;
  path: string;
  query: Record<string, string>;
  /** Header names in lower case. */
  headers: Record<string, string>;
  body: string;
  /** The body parsed as JSON, or undefined when it is not JSON. */
  json: unknown;
}

export interface StandinResponse {
  status: number;
  headers?: Record<string, string>;
  body?: unknown;
}

export type Responder = (request: RecordedRequest, standin: { origin: string }) => StandinResponse;

export interface HttpsStandin {
  /** https://127.0.0.1:<port> */
  origin: string;
  port: number;
  /** Every request received, in order. */
  requests: RecordedRequest[];
  close(): Promise<void>;
}

export async function startHttpsStandin(
  tls: TestCertificates,
  respond: Responder,
  options: { port?: number } = {},
): Promise<HttpsStandin> {
  const requests: RecordedRequest[] = [];
  let origin = "";
  const server = createServer({ key: tls.keyPem, cert: tls.certPem }, (req, res) => {
    readRequestBody(req, MAX_REQUEST_BODY_BYTES).then(
      (body) => {
        const url = new URL(req.url ?? "/", "https://127.0.0.1");
        const headers: Record<string, string> = {};
        for (const [name, value] of Object.entries(req.headers)) {
          headers[name] = Array.isArray(value) ? value.join(", ") : (value ?? "");
        }
        const recorded: RecordedRequest = {
          method: req.method ?? "",
          url: req.url ?? "",
          path: url.pathname,
          query: Object.fromEntries(url.searchParams),
          headers,
          body,
          json: parseJson(body),
        };
        requests.push(recorded);
        let answer: StandinResponse;
        try {
          answer = respond(recorded, { origin });
        } catch (error) {
          answer = { status: 500, body: { error: { code: "StandinFailure", message: String(error) } } };
        }
        const payload = answer.body === undefined ? "" : JSON.stringify(answer.body);
        res.writeHead(answer.status, {
          ...(payload === "" ? {} : { "content-type": "application/json; charset=utf-8" }),
          "content-length": String(Buffer.byteLength(payload)),
          ...answer.headers,
        });
        res.end(payload);
      },
      (error: Error) => {
        res.writeHead(413).end(error.message);
      },
    );
  });
  // A fixed port (443 for IoT Hub) may be held for a moment by another test process on the same machine.
  for (let attempt = 1; ; attempt++) {
    try {
      await new Promise<void>((resolve, reject) => {
        server.once("error", reject);
        server.listen(options.port ?? 0, "127.0.0.1", () => {
          server.off("error", reject);
          resolve();
        });
      });
      break;
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code;
      if (code === "EADDRINUSE" && attempt < LISTEN_ATTEMPTS) {
        await new Promise((resolve) => setTimeout(resolve, LISTEN_RETRY_MS));
        continue;
      }
      throw new Error(
        `the HTTPS stand-in could not listen on 127.0.0.1:${options.port ?? 0} (${code}); ` +
          (code === "EACCES"
            ? "ports below 1024 need root or CAP_NET_BIND_SERVICE"
            : "free the port and retry"),
      );
    }
  }
  const port = (server.address() as AddressInfo).port;
  origin = port === 443 ? "https://127.0.0.1" : `https://127.0.0.1:${port}`;
  return {
    origin,
    port,
    requests,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

function parseJson(text: string): unknown {
  if (text === "") return undefined;
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}

// ---------------------------------------------------------------- IoT Hub

export interface IotHubStandinOptions {
  /** Device twins the query endpoint searches (each needs a deviceId). */
  twins: Record<string, unknown>[];
  /** Name and key of the shared access policy the stand-in accepts (from the test's connection string). */
  policyName: string;
  policyKey: string;
  /** Devices for which applyConfigurationContent answers 404 DeviceNotFound, like IoT Hub does. */
  unknownDevices?: string[];
}

/**
 * Answers the IoT Hub service REST calls that Registry makes for Deltaship:
 * `POST /devices/{id}/applyConfigurationContent` (204) and `POST /devices/query` (twin query,
 * `SELECT * | deviceId FROM devices WHERE a.b = 'x' [AND …]`, paged by x-ms-max-item-count and
 * x-ms-continuation). Requests without a valid SharedAccessSignature get 401 as from IoT Hub.
 */
export function iotHubResponder(options: IotHubStandinOptions): Responder {
  return (request) => {
    const authProblem = checkIotHubSignature(request, options);
    if (authProblem !== undefined) return iotHubError(401, "IotHubUnauthorizedAccess", authProblem);
    const apply = /^\/devices\/([^/]+)\/applyConfigurationContent$/.exec(request.path);
    if (request.method === "POST" && apply !== null) {
      const deviceId = decodeURIComponent(apply[1]);
      if (options.unknownDevices?.includes(deviceId)) {
        return iotHubError(404, "DeviceNotFound", `Device ${deviceId} not registered`);
      }
      return { status: 204 };
    }
    if (request.method === "POST" && request.path === "/devices/query") {
      return answerTwinQuery(request, options.twins);
    }
    return iotHubError(404, "NotFound", `the stand-in does not serve ${request.method} ${request.path}`);
  };
}

function checkIotHubSignature(request: RecordedRequest, options: IotHubStandinOptions): string | undefined {
  const header = request.headers.authorization ?? "";
  if (!header.startsWith("SharedAccessSignature ")) return "expected a SharedAccessSignature authorization";
  const fields = new URLSearchParams(header.slice("SharedAccessSignature ".length));
  const sr = fields.get("sr") ?? "";
  const se = fields.get("se") ?? "";
  if (fields.get("skn") !== options.policyName) return `unknown policy ${fields.get("skn")}`;
  const expected = createHmac("sha256", Buffer.from(options.policyKey, "base64"))
    .update(`${encodeURIComponent(sr)}\n${se}`)
    .digest("base64");
  if (fields.get("sig") !== expected) return "signature does not verify";
  if (Number(se) * 1000 < Date.now()) return "token expired";
  return undefined;
}

function iotHubError(status: number, code: string, message: string): StandinResponse {
  return { status, body: { Message: `ErrorCode:${code};${message}`, ExceptionMessage: "" } };
}

const TWIN_QUERY = /^SELECT\s+(\*|deviceId)\s+FROM\s+devices\s+WHERE\s+(.+)$/i;
const TWIN_CONDITION = /^([A-Za-z0-9_$]+(?:\.[A-Za-z0-9_$-]+)*)\s*=\s*'((?:[^']|'')*)'$/;

function answerTwinQuery(request: RecordedRequest, twins: Record<string, unknown>[]): StandinResponse {
  const text = (request.json as { query?: string } | undefined)?.query ?? "";
  const match = TWIN_QUERY.exec(text.trim());
  if (match === null) return iotHubError(400, "BadRequest", `the stand-in cannot parse query: ${text}`);
  const conditions: [string[], string][] = [];
  for (const part of match[2].split(/\s+AND\s+/i)) {
    const condition = TWIN_CONDITION.exec(part.trim());
    if (condition === null)
      return iotHubError(400, "BadRequest", `the stand-in cannot parse condition: ${part}`);
    conditions.push([condition[1].split("."), condition[2].replace(/''/g, "'")]);
  }
  const hits = twins.filter((twin) =>
    conditions.every(([path, value]) => {
      let node: unknown = twin;
      for (const key of path) node = (node as Record<string, unknown> | undefined)?.[key];
      return node === value;
    }),
  );
  const rows = match[1] === "*" ? hits : hits.map((twin) => ({ deviceId: twin.deviceId }));
  const pageSize = Number(request.headers["x-ms-max-item-count"] ?? 100);
  const start = Number(request.headers["x-ms-continuation"] ?? 0);
  const page = rows.slice(start, start + pageSize);
  const next = start + pageSize < rows.length ? String(start + pageSize) : undefined;
  return {
    status: 200,
    headers: { "x-ms-item-type": "Twin", ...(next === undefined ? {} : { "x-ms-continuation": next }) },
    body: page,
  };
}

// ------------------------------------------------------ Communication Services email

export interface EmailStandinOptions {
  /** Base64 access key the test configured; requests are checked like Communication Services does. */
  accessKey: string;
  /** Status the operation reports when polled: Succeeded unless a test wants a failure. */
  finalStatus?: "Succeeded" | "Failed";
  /** How many polls answer Running before the final status, to make the SDK poll. */
  runningPolls?: number;
}

/**
 * Answers `POST /emails:send` with 202 and an operation-location, then `GET
 * /emails/operations/{id}` with Running (a few times) and the final status. Checks the
 * HMAC-SHA256 signature the SDK computes from the access key; a bad one gets 401.
 */
export function emailResponder(options: EmailStandinOptions): Responder {
  const polls = new Map<string, number>();
  return (request, { origin }): StandinResponse => {
    const authProblem = checkHmacSignature(request, options.accessKey);
    if (authProblem !== undefined) {
      return { status: 401, body: { error: { code: "Denied", message: authProblem } } };
    }
    const apiVersion = request.query["api-version"] ?? "";
    if (request.method === "POST" && request.path === "/emails:send") {
      const id = request.headers["operation-id"] ?? randomUUID();
      polls.set(id, 0);
      return {
        status: 202,
        headers: {
          "operation-location": `${origin}/emails/operations/${id}?api-version=${apiVersion}`,
          "retry-after": "0",
        },
        body: { id, status: "Running" },
      };
    }
    const operation = /^\/emails\/operations\/([^/]+)$/.exec(request.path);
    if (request.method === "GET" && operation !== null) {
      const id = operation[1];
      const seen = polls.get(id);
      if (seen === undefined) return { status: 404, body: { error: { code: "NotFound", message: id } } };
      polls.set(id, seen + 1);
      const status = seen < (options.runningPolls ?? 1) ? "Running" : (options.finalStatus ?? "Succeeded");
      const error =
        status === "Failed" ? { error: { code: "InvalidRecipient", message: "recipient rejected" } } : {};
      return { status: 200, headers: { "retry-after": "0" }, body: { id, status, ...error } };
    }
    return {
      status: 404,
      body: { error: { code: "NotFound", message: `${request.method} ${request.path}` } },
    };
  };
}

function checkHmacSignature(request: RecordedRequest, accessKey: string): string | undefined {
  const date = request.headers["x-ms-date"] ?? "";
  const contentHash = request.headers["x-ms-content-sha256"] ?? "";
  const host = request.headers.host ?? "";
  const actualHash = createHash("sha256").update(request.body).digest("base64");
  if (contentHash !== actualHash) return "x-ms-content-sha256 does not match the body";
  const stringToSign = `${request.method}\n${request.url}\n${date};${host};${contentHash}`;
  const signature = createHmac("sha256", Buffer.from(accessKey, "base64"))
    .update(stringToSign)
    .digest("base64");
  const expected = `HMAC-SHA256 SignedHeaders=x-ms-date;host;x-ms-content-sha256&Signature=${signature}`;
  if (request.headers.authorization !== expected) return "HMAC signature does not verify";
  return undefined;
}
