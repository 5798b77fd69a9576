/**
 * Streaming zstd decompression of a byte range of a file, pulled by its consumer: nothing is
 * decompressed before the consumer asks for it, so memory stays one input buffer, one output
 * buffer and the frame's window however well the payload compresses. zstd-napi's
 * DecompressStream instead inflates a whole input chunk at once and queues the result.
 */
import { open } from "node:fs/promises";
import { createRequire } from "node:module";
import { createBrotliDecompress } from "node:zlib";
import { readAheadOptions, throughTransform } from "../image/compression.js";
import { readFileStream } from "./scratch.js";

type Binding = typeof import("zstd-napi/binding.js");
const binding = createRequire(import.meta.url)("zstd-napi/binding") as Binding;

/** Compressed bytes read per file read: zstd consumes them into its window before the next read. */
const INPUT_PIECE = 256 * 1024;
/** Decompressed bytes per yielded chunk when the output buffer is reused. */
const REUSED_OUTPUT_PIECE = 1024 * 1024;

export interface InflateOptions {
  /** Frames declaring a larger window are refused (the decoder allocates the frame's window). */
  readonly windowLogMax: number;
  /**
   * When true, every chunk is the same buffer, overwritten by the next: set it only when each
   * chunk is consumed (hashed, written) before the next is requested. When false each chunk is
   * fresh (for consumers that keep chunks, such as the VCDIFF decoder's input).
   */
  readonly reuseOutput: boolean;
}

export class InflateError extends Error {
  override readonly name = "InflateError";
}

/** Decompresses the zstd frames in `length` bytes at `start` of `path`. */
export async function* inflateFileRange(
  path: string,
  start: number,
  length: number,
  options: InflateOptions,
): AsyncGenerator<Uint8Array> {
  const dctx = new binding.DCtx();
  dctx.setParameter(binding.DParameter.windowLogMax, options.windowLogMax);
  const outSize = options.reuseOutput ? REUSED_OUTPUT_PIECE : binding.dStreamOutSize();
  const input = Buffer.allocUnsafe(Math.min(INPUT_PIECE, Math.max(length, 1)));
  let output = Buffer.allocUnsafe(outSize);
  const handle = await open(path, "r");
  let inFrame = false;
  try {
    for (let position = 0; position < length; ) {
      const want = Math.min(input.length, length - position);
      const { bytesRead } = await handle.read(input, 0, want, start + position);
      if (bytesRead === 0) {
        throw new InflateError(
          `${path} ends at byte ${start + position}, inside a ${length}-byte zstd payload at ${start}; the file was truncated`,
        );
      }
      position += bytesRead;
      let src = input.subarray(0, bytesRead);
      for (;;) {
        let result: ReturnType<typeof dctx.decompressStream>;
        try {
          result = dctx.decompressStream(output, src);
        } catch (err) {
          throw new InflateError(`zstd payload at ${start} of ${path}: ${(err as Error).message}`);
        }
        const [remaining, produced, consumed] = result;
        src = src.subarray(consumed);
        inFrame = remaining !== 0;
        if (produced > 0) {
          yield output.subarray(0, produced);
          if (!options.reuseOutput) output = Buffer.allocUnsafe(outSize);
        }
        // Done with this input once it is consumed and zstd has nothing more buffered to flush.
        if (src.length === 0 && (produced < output.length || remaining === 0)) break;
      }
    }
  } finally {
    await handle.close();
  }
  if (inFrame) {
    throw new InflateError(
      `zstd payload at ${start} of ${path} ends in the middle of a frame; the payload is truncated`,
    );
  }
}

/**
 * Decompressed bytes per chunk of a Brotli payload: fewer, larger chunks cost less per byte. The
 * stream may hold four for its consumer (readAheadOptions), so decoding goes on while the consumer
 * hashes, filters and writes: scenario 1's apply (348 MiB, three Brotli layers) took 2.74–2.91 s
 * instead of 2.95–3.09 s with one (five alternating runs each), at the same peak RSS.
 */
const BROTLI_OUTPUT_PIECE = 256 * 1024;

/**
 * Decompresses the Brotli stream in `length` bytes at `start` of `path` (a `brotli` payload).
 * Standard Brotli's window is at most 16 MiB, so that bounds the decoder's memory; the stream is
 * pulled, so nothing is decompressed ahead of the consumer beyond four chunks. A stream
 * that is truncated or corrupt ends in an InflateError. Bytes after the stream's end are ignored
 * (Node's decoder stops there); the payload's sha256 in the signed manifest covers them.
 */
export async function* inflateBrotliFileRange(
  path: string,
  start: number,
  length: number,
): AsyncGenerator<Uint8Array> {
  const inflater = createBrotliDecompress(readAheadOptions(BROTLI_OUTPUT_PIECE));
  try {
    yield* throughTransform(readFileStream(path, start, length), inflater);
  } catch (err) {
    throw new InflateError(`brotli payload at ${start} of ${path}: ${(err as Error).message}`);
  }
}
