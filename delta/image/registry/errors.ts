/**
 * The one error type of the registry client. Every message says what was asked, what the
 * registry answered (HTTP status and the `errors[]` of its JSON body) and what to do next.
 */
import type { HttpResponse } from "./http.js";

export class RegistryError extends Error {
  override readonly name = "RegistryError";

  constructor(
    message: string,
    /** HTTP status the registry answered, or 0 when no answer came (network, digest check). */
    readonly status: number = 0,
    /** Error codes from the registry's JSON body, e.g. `MANIFEST_UNKNOWN`. */
    readonly codes: readonly string[] = [],
  ) {
    super(message);
  }
}

/** Longest error body we read back: registries answer a few hundred bytes, proxies maybe an HTML page. */
const MAX_ERROR_BODY_BYTES = 64 * 1024;

/** Reads the registry's error body (bounded) and renders it as ` (CODE: message; …)`. */
export async function describeErrorBody(response: HttpResponse): Promise<{ text: string; codes: string[] }> {
  let raw = "";
  try {
    const bytes = await readBounded(response, MAX_ERROR_BODY_BYTES);
    raw = new TextDecoder().decode(bytes);
  } catch {
    return { text: "", codes: [] };
  }
  try {
    const body = JSON.parse(raw) as { errors?: { code?: unknown; message?: unknown }[] };
    if (Array.isArray(body.errors) && body.errors.length > 0) {
      const entries = body.errors.map((e) => ({
        code: String(e.code ?? "?"),
        message: String(e.message ?? ""),
      }));
      return {
        text: ` (${entries.map((e) => `${e.code}: ${e.message}`).join("; ")})`,
        codes: entries.map((e) => e.code),
      };
    }
  } catch {
    // Not JSON: show the start of whatever came back.
  }
  const snippet = raw.replace(/\s+/g, " ").trim().slice(0, 200);
  return { text: snippet ? ` (${snippet})` : "", codes: [] };
}

/** What to suggest for a status the registry answered. */
export function hintForStatus(status: number): string {
  switch (status) {
    case 401:
      return "check the registry credentials (username/password or refresh token)";
    case 403:
      return "the credentials lack permission for this repository; grant pull (and push to write)";
    case 404:
      return "check the repository name, the tag or digest, and that the image was pushed";
    case 405:
      return "the registry does not allow this operation (deletes may be disabled in its config)";
    case 416:
      return "the byte range is outside the blob; check the blob size";
    case 429:
      return "the registry is rate limiting; retry later";
    default:
      return status >= 500
        ? "the registry failed; retry later or check its logs"
        : "see the registry's answer";
  }
}

/** Reads a whole response body, refusing more than `limit` bytes. */
export async function readBounded(
  response: HttpResponse,
  limit: number,
  what = "response",
): Promise<Uint8Array> {
  const declared = Number(response.headers.get("content-length") ?? "-1");
  if (declared > limit) {
    await response.body?.cancel();
    throw new RegistryError(
      `${what} is ${declared} bytes, more than the ${limit}-byte limit; refusing to read it`,
    );
  }
  const parts: Uint8Array[] = [];
  let total = 0;
  for await (const chunk of response.body) {
    total += chunk.length;
    if (total > limit) {
      await response.body.cancel();
      throw new RegistryError(`${what} is more than the ${limit}-byte limit; refusing to read it`);
    }
    parts.push(chunk);
  }
  return concatBytes(parts, total);
}

export function concatBytes(parts: readonly Uint8Array[], total?: number): Uint8Array {
  const length = total ?? parts.reduce((n, p) => n + p.length, 0);
  const out = new Uint8Array(length);
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}
