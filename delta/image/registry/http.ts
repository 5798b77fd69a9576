/**
 * The registry client's HTTP layer on node:http(s): bodies are sent from the caller's buffer
 * without the copy fetch makes (an upload holds one chunk in memory, not several), and
 * connections are kept alive per client.
 */
import {
  type ClientRequest,
  Agent as HttpAgent,
  request as httpRequest,
  type IncomingMessage,
} from "node:http";
import { Agent as HttpsAgent, request as httpsRequest } from "node:https";
import { finished } from "node:stream/promises";

/** No byte for this long, either way, and the request fails: a stalled registry must not hang an apply. */
export const IDLE_TIMEOUT_MS = 120_000;
/** Parallel connections per registry; requests are mostly sequential. */
const MAX_SOCKETS = 8;
/** Unread bodies up to this size are drained so the connection can be reused; larger ones close it. */
const DRAIN_LIMIT_BYTES = 64 * 1024;

export interface HttpHeaders {
  get(name: string): string | null;
}

/** What a request answers: the parts of fetch's Response the client uses. */
export interface HttpResponse {
  readonly status: number;
  readonly statusText: string;
  readonly headers: HttpHeaders;
  /** The body as a stream; read it, or call `cancel()` to release the connection. */
  readonly body: AsyncIterable<Uint8Array> & { cancel(): Promise<void> };
}

/**
 * A request body of known length read from its source at send time: nothing is held in memory,
 * and each attempt (a retry after a stale connection or an auth challenge) opens it again. Each
 * chunk is handed to the socket before the next is pulled, so the source may reuse one buffer.
 */
export interface StreamedBody {
  readonly length: number;
  open(): AsyncIterable<Uint8Array>;
}

/** Marks an error that came from reading a streamed body, not from the connection. */
export interface BodyError extends Error {
  readonly bodyFailed: true;
}

export class HttpTransport {
  private readonly http = new HttpAgent({ keepAlive: true, maxSockets: MAX_SOCKETS });
  private readonly https = new HttpsAgent({ keepAlive: true, maxSockets: MAX_SOCKETS });

  async send(
    url: URL,
    method: string,
    headers: Record<string, string>,
    body: Uint8Array | StreamedBody | undefined,
  ): Promise<HttpResponse> {
    try {
      return await this.attempt(url, method, headers, body);
    } catch (error) {
      // A kept-alive connection the server closed while idle fails on first use: retry once on a new one.
      if (!(error as { reusedSocket?: boolean }).reusedSocket) throw error;
      const code = (error as NodeJS.ErrnoException).code;
      if (code !== "ECONNRESET" && code !== "EPIPE") throw error;
      return this.attempt(url, method, headers, body);
    }
  }

  private attempt(
    url: URL,
    method: string,
    headers: Record<string, string>,
    body: Uint8Array | StreamedBody | undefined,
  ): Promise<HttpResponse> {
    return new Promise((resolve, reject) => {
      const secure = url.protocol === "https:";
      const all: Record<string, string> = { ...headers };
      if (body !== undefined || method === "PUT" || method === "POST" || method === "PATCH") {
        all["content-length"] = String(body?.length ?? 0);
      }
      const request = (secure ? httpsRequest : httpRequest)(url, {
        method,
        headers: all,
        agent: secure ? this.https : this.http,
      });
      request.setTimeout(IDLE_TIMEOUT_MS, () => {
        request.destroy(new Error(`no data for ${IDLE_TIMEOUT_MS / 1000} s`));
      });
      request.once("error", (error) => {
        reject(Object.assign(error, { reusedSocket: request.reusedSocket }));
      });
      request.once("response", (message) => resolve(wrap(message, method)));
      if (body === undefined || body instanceof Uint8Array) {
        request.end(body);
        return;
      }
      // Ends the request when the source ends; a source that fails takes the request down with it.
      sendBody(body.open(), request).catch((error: Error) => {
        request.destroy(error);
        reject(error);
      });
    });
  }

  close(): void {
    this.http.destroy();
    this.https.destroy();
  }
}

/**
 * Writes a body chunk by chunk, each handed to the socket before the next is pulled (the source
 * may reuse its buffer), then ends the request. Leaving early (the connection went) closes the
 * source, and its file handle with it.
 */
async function sendBody(source: AsyncIterable<Uint8Array>, request: ClientRequest): Promise<void> {
  for await (const chunk of marked(source)) {
    if (request.destroyed) return;
    // Node calls this back with an error if the connection goes first (test: "cut off").
    await new Promise<void>((resolve, reject) =>
      request.write(chunk, (error) => (error ? reject(error) : resolve())),
    );
  }
  request.end();
}

/** Passes a body through, marking an error it throws as the body's, not the connection's. */
async function* marked(source: AsyncIterable<Uint8Array>): AsyncGenerator<Uint8Array> {
  try {
    yield* source;
  } catch (error) {
    throw Object.assign(error as Error, { bodyFailed: true });
  }
}

function wrap(message: IncomingMessage, method: string): HttpResponse {
  const iterate = message[Symbol.asyncIterator].bind(message) as () => AsyncIterator<Uint8Array>;
  return {
    status: message.statusCode ?? 0,
    statusText: message.statusMessage ?? "",
    headers: {
      get(name: string) {
        const value = message.headers[name.toLowerCase()];
        return value === undefined ? null : Array.isArray(value) ? value.join(", ") : value;
      },
    },
    body: {
      [Symbol.asyncIterator]: iterate,
      async cancel() {
        if (message.destroyed) return;
        // A HEAD answer's Content-Length describes a body that never comes.
        const length = method === "HEAD" ? 0 : Number(message.headers["content-length"] ?? Number.NaN);
        // Reading to the end (even of a body already received) is what frees the connection.
        if (message.complete || length <= DRAIN_LIMIT_BYTES || message.statusCode === 204) {
          message.resume();
          await finished(message).catch(() => {});
        } else {
          message.destroy();
        }
      },
    },
  };
}
