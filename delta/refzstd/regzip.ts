/**
 * Recompressing gzip files exactly. A changed `.gz` file (a Debian changelog or man page after a
 * security update) differs from its old version from the first changed byte on, so as stored it
 * is sent almost whole. Its decompressed text differs by a few lines. When GNU gzip at some level
 * reproduces the file byte for byte from its text, `ref-zstd` sends the text (compressed against
 * the old version's text) and the device runs the same gzip to rebuild the file.
 *
 * GNU gzip's output for a level has been the same for decades, and Debian builds its packages'
 * `.gz` files with `gzip -9n`. The encoder checks the reproduction on the cloud side before it
 * relies on it, and the device's result is checked too: by the gzip trailer (CRC-32 and length of
 * the text) and by the layer's diff_id before anything is written.
 */
import { spawn } from "node:child_process";
import { gunzipSync } from "node:zlib";

/** The gzip magic and the deflate method byte: where a gzip member starts. */
export const GZIP_MAGIC = Uint8Array.of(0x1f, 0x8b, 0x08);
/** The fixed part of a gzip header; `gzip -n` writes exactly this much (no name, no time). */
export const GZIP_FIXED_HEADER = 10;
/** CRC-32 and length of the text, after the deflate data. */
export const GZIP_TRAILER = 8;
/** gzip levels tried when encoding, most likely first (Debian's dh_compress uses -9, plain gzip -6). */
export const GZIP_LEVELS: readonly number[] = [9, 6];
/** Text bytes of one recompressed file, at most: the device holds the text and the rebuilt file. */
export const MAX_GZIP_TEXT = 8 * 1024 * 1024;
/** A gzip header with an extra field, name and comment, at most (longer ones stay plain bytes). */
export const MAX_GZIP_HEADER = 4096;

const FHCRC = 0x02;
const FEXTRA = 0x04;
const FNAME = 0x08;
const FCOMMENT = 0x10;

/** Length of the gzip header at the start of `bytes`, or -1 if it is not a complete gzip header within MAX_GZIP_HEADER. */
export function gzipHeaderLength(bytes: Uint8Array): number {
  if (bytes.length < GZIP_FIXED_HEADER + GZIP_TRAILER) return -1;
  for (let i = 0; i < GZIP_MAGIC.length; i++) if (bytes[i] !== GZIP_MAGIC[i]) return -1;
  const flags = bytes[3]!;
  if (flags & 0xe0) return -1;
  const limit = Math.min(bytes.length, MAX_GZIP_HEADER);
  let p = GZIP_FIXED_HEADER;
  if (flags & FEXTRA) {
    if (p + 2 > limit) return -1;
    p += 2 + (bytes[p]! | (bytes[p + 1]! << 8));
  }
  for (const flag of [FNAME, FCOMMENT]) {
    if (flags & flag) {
      while (p < limit && bytes[p] !== 0) p++;
      if (p >= limit) return -1;
      p++;
    }
  }
  if (flags & FHCRC) p += 2;
  return p <= limit ? p : -1;
}

/** The decompressed text of a gzip file, or undefined if it is not one or its text exceeds `limit`. */
export function gunzipText(bytes: Uint8Array, limit = MAX_GZIP_TEXT): Uint8Array | undefined {
  if (gzipHeaderLength(bytes) < 0) return undefined;
  try {
    const text = gunzipSync(bytes, { maxOutputLength: limit });
    return new Uint8Array(text.buffer, text.byteOffset, text.byteLength);
  } catch {
    return undefined;
  }
}

/** `gzip -c -n -LEVEL` of `text`, split into the deflate data and the 8-byte trailer. */
export interface Regzipped {
  readonly body: Uint8Array;
  readonly trailer: Uint8Array;
}

/** Runs GNU gzip on `text`; its output may not exceed `text` plus gzip's worst-case growth. */
export async function regzip(text: Uint8Array, level: number): Promise<Regzipped> {
  if (!Number.isInteger(level) || level < 1 || level > 9)
    throw new Error(`gzip level ${level} is not 1 to 9`);
  const limit = text.length + Math.ceil(text.length / 1000) * 5 + 1024;
  const output = await new Promise<Uint8Array>((resolve, reject) => {
    const child = spawn("gzip", ["-c", "-n", `-${level}`], { stdio: ["pipe", "pipe", "pipe"] });
    const chunks: Buffer[] = [];
    let size = 0;
    let stderr = "";
    let failed = false;
    const fail = (err: Error) => {
      if (failed) return;
      failed = true;
      child.kill();
      reject(err);
    };
    child.on("error", (err: NodeJS.ErrnoException) =>
      fail(
        err.code === "ENOENT"
          ? new Error("rebuilding a .gz file needs GNU gzip, and `gzip` is not on the PATH; install it")
          : err,
      ),
    );
    child.stdout.on("data", (chunk: Buffer) => {
      size += chunk.length;
      if (size > limit)
        fail(new Error(`gzip wrote more than ${limit} bytes for ${text.length} bytes of text`));
      else chunks.push(chunk);
    });
    child.stderr.on("data", (chunk: Buffer) => {
      if (stderr.length < 1000) stderr += chunk.toString();
    });
    // A child that exits early makes writes fail with EPIPE; its exit status says why.
    child.stdin.on("error", () => {});
    child.on("close", (code, signal) => {
      if (failed) return;
      if (code !== 0) {
        fail(new Error(`gzip -${level} failed (${signal ?? `exit ${code}`}): ${stderr.trim()}`));
        return;
      }
      resolve(Buffer.concat(chunks, size));
    });
    child.stdin.end(text);
  });
  if (
    output.length < GZIP_FIXED_HEADER + GZIP_TRAILER ||
    output[0] !== GZIP_MAGIC[0] ||
    output[1] !== GZIP_MAGIC[1] ||
    output[3] !== 0
  ) {
    throw new Error("`gzip -c -n` did not write a plain gzip header; is `gzip` GNU gzip?");
  }
  return {
    body: output.subarray(GZIP_FIXED_HEADER, output.length - GZIP_TRAILER),
    trailer: output.subarray(output.length - GZIP_TRAILER),
  };
}

/** How a gzip file is rebuilt from its text: its own header, then `gzip -LEVEL` of the text. */
export interface GzipRecipe {
  readonly level: number;
  readonly headerLength: number;
  readonly text: Uint8Array;
}

function equalBytes(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && Buffer.compare(a, b) === 0;
}

/**
 * How GNU gzip rebuilds `file` exactly (its header kept as is), or undefined when no level of
 * GZIP_LEVELS does (another compressor, several members, trailing bytes, text over the limit).
 */
export async function findGzipRecipe(file: Uint8Array): Promise<GzipRecipe | undefined> {
  const headerLength = gzipHeaderLength(file);
  if (headerLength < 0) return undefined;
  const text = gunzipText(file);
  if (text === undefined) return undefined;
  const body = file.subarray(headerLength, file.length - GZIP_TRAILER);
  const trailer = file.subarray(file.length - GZIP_TRAILER);
  for (const level of GZIP_LEVELS) {
    const made = await regzip(text, level);
    if (equalBytes(made.body, body) && equalBytes(made.trailer, trailer))
      return { level, headerLength, text };
  }
  return undefined;
}
