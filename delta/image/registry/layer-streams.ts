/**
 * Layer stream transforms for registry blobs. A stand-in until `delta/image/compression.ts`
 * lands: gzip through node:zlib, zstd through zstd-napi's stream.
 */
import { Readable, type Transform } from "node:stream";
import { createGunzip, createGzip } from "node:zlib";
import { DecompressStream } from "zstd-napi";
import type { LayerCompression } from "../types.js";

export function decompressStream(
  source: AsyncIterable<Uint8Array>,
  compression: LayerCompression,
): AsyncIterable<Uint8Array> {
  if (compression === "none") return source;
  return through(source, compression === "gzip" ? createGunzip() : new DecompressStream());
}

export function gzipStream(source: AsyncIterable<Uint8Array>, level: number): AsyncIterable<Uint8Array> {
  return through(source, createGzip({ level }));
}

function through(source: AsyncIterable<Uint8Array>, transform: Transform): AsyncIterable<Uint8Array> {
  const input = Readable.from(source, { objectMode: false });
  // pipe() does not forward errors: a failed digest check upstream must fail the output too.
  input.on("error", (error) => transform.destroy(error));
  return input.pipe(transform);
}
