/**
 * Layer compression: detect gzip / zstd / none from the first bytes, and stream-decompress
 * (gzip through node:zlib, zstd through zstd-napi's native context) or gzip-compress.
 */
import { Readable, type TransformOptions } from "node:stream";
import {
  type BrotliOptions,
  createGunzip,
  createGzip,
  type ZlibOptions,
  constants as zlibConstants,
} from "node:zlib";
import zstd from "zstd-napi/binding.js";
import type { LayerCompression } from "./types.js";

/**
 * Largest zstd window a layer may ask for (2^27 = 128 MiB, zstd's own default limit): the decoder
 * allocates the window, so a hostile frame header must not make it allocate gigabytes.
 */
export const MAX_ZSTD_WINDOW_LOG = 27;

export class CompressionError extends Error {
  override readonly name = "CompressionError";
}

const GZIP_MAGIC = [0x1f, 0x8b];
const ZSTD_MAGIC = [0x28, 0xb5, 0x2f, 0xfd];

export function detectCompression(head: Uint8Array): LayerCompression {
  if (head.length >= 2 && head[0] === GZIP_MAGIC[0] && head[1] === GZIP_MAGIC[1]) return "gzip";
  if (head.length >= 4 && ZSTD_MAGIC.every((b, i) => head[i] === b)) return "zstd";
  return "none";
}

/** Compression named by an OCI or Docker layer media type; undefined for types that are not layers. */
export function compressionOfMediaType(mediaType: string): LayerCompression | undefined {
  if (mediaType.endsWith("+gzip") || mediaType === "application/vnd.docker.image.rootfs.diff.tar.gzip") {
    return "gzip";
  }
  if (mediaType.endsWith("+zstd") || mediaType === "application/vnd.docker.image.rootfs.diff.tar.zstd") {
    return "zstd";
  }
  if (mediaType.endsWith(".tar") || mediaType === "application/vnd.docker.image.rootfs.diff.tar")
    return "none";
  return undefined;
}

/** The OCI media type of a layer stored with the given compression. */
export function ociLayerMediaType(compression: LayerCompression): string {
  const base = "application/vnd.oci.image.layer.v1.tar";
  return compression === "none" ? base : `${base}+${compression}`;
}

/**
 * Reads the first bytes to detect the compression and returns it with a stream that still yields
 * every byte (the peeked ones first).
 */
export async function peekCompression(
  input: AsyncIterable<Uint8Array>,
): Promise<{ compression: LayerCompression; stream: AsyncIterable<Uint8Array> }> {
  const iterator = input[Symbol.asyncIterator]();
  const head: Uint8Array[] = [];
  let headLength = 0;
  let done = false;
  while (headLength < ZSTD_MAGIC.length) {
    const next = await iterator.next();
    if (next.done) {
      done = true;
      break;
    }
    head.push(next.value);
    headLength += next.value.length;
  }
  const first = head.length === 1 ? head[0]! : Buffer.concat(head);
  async function* replay(): AsyncGenerator<Uint8Array> {
    try {
      for (const chunk of head) yield chunk;
      if (done) return;
      for (;;) {
        const next = await iterator.next();
        if (next.done) return;
        yield next.value;
      }
    } finally {
      if (!done) await iterator.return?.();
    }
  }
  return { compression: detectCompression(first), stream: replay() };
}

/** Decompresses a stream; "auto" detects the compression from its first bytes. */
export async function* decompress(
  input: AsyncIterable<Uint8Array>,
  compression: LayerCompression | "auto" = "auto",
): AsyncGenerator<Uint8Array> {
  let kind = compression;
  let stream = input;
  if (kind === "auto") ({ compression: kind, stream } = await peekCompression(input));
  if (kind === "none") yield* stream;
  else if (kind === "gzip") yield* gunzip(stream);
  else yield* unzstd(stream);
}

/** Pipes `input` through a zlib transform, pulled by the consumer; both are destroyed when it stops. */
export async function* throughTransform(
  input: AsyncIterable<Uint8Array>,
  transform: NodeJS.ReadWriteStream & Readable,
): AsyncGenerator<Uint8Array> {
  const source = Readable.from(input, { objectMode: false });
  source.on("error", (err) => transform.destroy(err));
  source.pipe(transform);
  try {
    for await (const chunk of transform) yield chunk as Uint8Array;
  } finally {
    source.unpipe(transform);
    source.destroy();
    transform.destroy();
  }
}

/**
 * Options for a zlib stream that writes `chunkSize` bytes a call and may hold four such chunks for
 * its consumer. zlib works on the thread pool; with the default limit (16 KiB) every chunk filled
 * it, so zlib waited until the consumer took each one. zlib streams hand these options to their
 * Transform, which Node.js's types leave out. Gunzipping the 44.5 MB Node.js layer into sha256:
 * 440–480 ms instead of 475–613 (four alternating runs each).
 */
export function readAheadOptions(chunkSize: number): ZlibOptions & BrotliOptions & TransformOptions {
  return { chunkSize, readableHighWaterMark: 4 * chunkSize };
}

/** gzip streams: 128 KiB a call, four calls ahead. */
const GZIP_STREAM = readAheadOptions(128 * 1024);

async function* gunzip(input: AsyncIterable<Uint8Array>): AsyncGenerator<Uint8Array> {
  try {
    yield* throughTransform(input, createGunzip(GZIP_STREAM));
  } catch (err) {
    const code = (err as { code?: string }).code;
    if (code?.startsWith("Z_") || code === "ERR_ZLIB_INITIALIZATION_FAILED") {
      throw new CompressionError(`gzip stream is corrupt or truncated: ${(err as Error).message}`);
    }
    throw err;
  }
}

/** gzip-compresses a stream (for writing compressed layers); level 6 is what Docker uses. */
export async function* compressGzip(input: AsyncIterable<Uint8Array>, level = 6): AsyncGenerator<Uint8Array> {
  yield* throughTransform(
    input,
    createGzip({ ...GZIP_STREAM, level, strategy: zlibConstants.Z_DEFAULT_STRATEGY }),
  );
}

/** 1 MiB of output per native call: at zstd's suggested 128 KiB the call overhead halves throughput. */
const ZSTD_OUT_SIZE = 1024 * 1024;

async function* unzstd(input: AsyncIterable<Uint8Array>): AsyncGenerator<Uint8Array> {
  let context: InstanceType<typeof zstd.DCtx> | undefined = new zstd.DCtx();
  context.setParameter(zstd.DParameter.windowLogMax, MAX_ZSTD_WINDOW_LOG);
  // Non-zero while a frame is unfinished: the stream must not end there.
  let pending = 0;
  let sawInput = false;
  try {
    for await (const chunk of input) {
      let src = chunk;
      if (src.length > 0) sawInput = true;
      for (;;) {
        const out = Buffer.allocUnsafe(ZSTD_OUT_SIZE);
        let result: [number, number, number];
        try {
          result = context.decompressStream(out, src);
        } catch (err) {
          throw new CompressionError(`zstd stream is corrupt: ${(err as Error).message}`);
        }
        const [hint, produced, consumed] = result;
        // A call that moved nothing reports the next frame's header size, not an unfinished frame.
        if (produced > 0 || consumed > 0) pending = hint;
        src = src.subarray(consumed);
        if (produced > 0) yield out.subarray(0, produced);
        // More output may be waiting inside the context when the buffer was filled.
        if (src.length === 0 && produced < out.length) break;
      }
    }
    if (!sawInput) throw new CompressionError("zstd stream is empty");
    if (pending !== 0) throw new CompressionError("zstd stream is truncated: it ended inside a frame");
  } finally {
    // zstd-napi frees a context only in its finalizer: drop the session and the last reference
    // here so the window (up to 128 MiB) is not pinned by a generator someone keeps around.
    context.reset(zstd.ResetDirective.sessionAndParameters);
    context = undefined;
  }
}
