/**
 * Content digests as OCI writes them (`sha256:<64 hex>`): of bytes, of streams, and checks that a
 * string is one (digests become file names, so a hostile manifest must not smuggle in a path).
 */
import { createHash, type Hash } from "node:crypto";

const DIGEST_PATTERN = /^sha256:[0-9a-f]{64}$/;

export class DigestError extends Error {
  override readonly name = "DigestError";
}

export function isDigest(value: unknown): value is string {
  return typeof value === "string" && DIGEST_PATTERN.test(value);
}

/** Throws unless `value` is `sha256:` and 64 lowercase hex digits; `what` names it in the error. */
export function assertDigest(value: unknown, what: string): string {
  if (!isDigest(value)) {
    throw new DigestError(
      `${what} must be a digest like "sha256:<64 lowercase hex digits>", found ${JSON.stringify(value)}`,
    );
  }
  return value;
}

/** The 64 hex digits of a digest. */
export function digestHex(digest: string): string {
  return assertDigest(digest, "digest").slice("sha256:".length);
}

export function digestOf(bytes: Uint8Array): string {
  return `sha256:${createHash("sha256").update(bytes).digest("hex")}`;
}

/** Digest and size of a whole stream. */
export async function digestStream(
  input: AsyncIterable<Uint8Array>,
): Promise<{ digest: string; size: number }> {
  const hash = createHash("sha256");
  let size = 0;
  for await (const chunk of input) {
    hash.update(chunk);
    size += chunk.length;
  }
  return { digest: `sha256:${hash.digest("hex")}`, size };
}

/**
 * Passes a stream through unchanged while hashing it; after the last chunk it compares against
 * `expected` (digest and, when given, size) and throws if they differ, so a consumer never
 * finishes reading unverified bytes without being told.
 */
export async function* verifyingStream(
  input: AsyncIterable<Uint8Array>,
  expected: { digest: string; size?: number },
  what: string,
): AsyncGenerator<Uint8Array> {
  const hash: Hash = createHash("sha256");
  let size = 0;
  for await (const chunk of input) {
    hash.update(chunk);
    size += chunk.length;
    if (expected.size !== undefined && size > expected.size) {
      throw new DigestError(`${what} is longer than the expected ${expected.size} bytes`);
    }
    yield chunk;
  }
  const digest = `sha256:${hash.digest("hex")}`;
  if (digest !== expected.digest || (expected.size !== undefined && size !== expected.size)) {
    throw new DigestError(
      `${what} should be ${expected.digest}${expected.size !== undefined ? ` (${expected.size} bytes)` : ""} ` +
        `but is ${digest} (${size} bytes); the blob is corrupt or was replaced`,
    );
  }
}

/**
 * A layer's uncompressed tar, checked against its diff_id. An uncompressed blob already checked
 * against its digest needs no second hash (its digest is its diff_id).
 */
export function tarChecked(
  tar: AsyncIterable<Uint8Array>,
  layer: { readonly digest: string; readonly diffId: string },
  what: string,
): AsyncIterable<Uint8Array> {
  if (layer.digest === layer.diffId) return tar;
  return verifyingStream(tar, { digest: layer.diffId }, `${what} uncompressed tar (diff_id)`);
}
