/**
 * Positional reads of a byte range of a file: how layer blobs are read out of an OCI layout
 * folder or from inside a docker-archive tar without loading the file or streaming what precedes it.
 */
import { readSync } from "node:fs";
import { type FileHandle, open } from "node:fs/promises";
import type { SourceReader } from "../vcdiff/source.js";
import type { BlobLocation, ImageReader } from "./types.js";

/**
 * Where an image's layer tar lies in a local file, to be read where it lies: an uncompressed layer
 * of an archive or layout. Undefined for any other (registry blobs, compressed layers).
 */
export function layerTarInPlace(image: ImageReader, index: number): BlobLocation | undefined {
  if (image.info.layers[index]!.compression !== "none" || image.locateLayerBlob === undefined)
    return undefined;
  return image.locateLayerBlob(index);
}

/** 1 MiB reads: large enough that per-call overhead is noise, small enough to bound memory. */
export const FILE_READ_CHUNK = 1024 * 1024;

/**
 * Streams `length` bytes at `start` of `path`; throws if the file is shorter. Opens its own handle.
 * With `reuse`, every piece is read into that buffer: a piece is good only until the next is pulled.
 */
export async function* readFileRange(
  path: string,
  start: number,
  length: number,
  reuse?: Uint8Array,
): AsyncGenerator<Uint8Array> {
  const handle = await open(path, "r");
  try {
    yield* readHandleRange(handle, path, start, length, reuse);
  } finally {
    await handle.close();
  }
}

/** Streams a range through an already open handle (the caller closes it); `reuse` as for readFileRange. */
export async function* readHandleRange(
  handle: FileHandle,
  path: string,
  start: number,
  length: number,
  reuse?: Uint8Array,
): AsyncGenerator<Uint8Array> {
  let position = start;
  const end = start + length;
  while (position < end) {
    const want = Math.min(reuse?.length ?? FILE_READ_CHUNK, end - position);
    const buffer = reuse !== undefined ? reuse.subarray(0, want) : Buffer.allocUnsafe(want);
    let filled = 0;
    while (filled < want) {
      const { bytesRead } = await handle.read(buffer, filled, want - filled, position + filled);
      if (bytesRead === 0) {
        throw new Error(
          `${path} ends at byte ${position + filled}, but ${end - position - filled} more bytes were expected ` +
            `(range ${start}+${length}); the file is truncated`,
        );
      }
      filled += bytesRead;
    }
    position += want;
    yield buffer;
  }
}

/** Exactly `length` bytes at `position`, or fewer at the end of the file. */
export async function readAt(handle: FileHandle, position: number, length: number): Promise<Uint8Array> {
  const buffer = Buffer.allocUnsafe(length);
  let filled = 0;
  while (filled < length) {
    const { bytesRead } = await handle.read(buffer, filled, length - filled, position + filled);
    if (bytesRead === 0) break;
    filled += bytesRead;
  }
  // A plain Uint8Array: configs read here end up in ImageInfo, where .slice() must copy.
  return new Uint8Array(buffer.buffer, buffer.byteOffset, filled);
}

/**
 * A stored blob inside a local file as a VCDIFF source: random access to an uncompressed layer
 * in an OCI layout or a docker-archive without copying it to a scratch file. It reads the bytes
 * as they are; check the blob's digest (one streaming pass) before trusting what it serves.
 */
export class FileRangeSource implements SourceReader {
  private closed = false;

  private constructor(
    readonly location: BlobLocation,
    private readonly handle: FileHandle,
  ) {}

  get size(): number {
    return this.location.size;
  }

  static async open(location: BlobLocation): Promise<FileRangeSource> {
    const handle = await open(location.path, "r");
    try {
      const { size } = await handle.stat();
      if (location.offset + location.size > size) {
        throw new Error(
          `${location.path} is ${size} bytes, too short for a blob of ${location.size} bytes at ${location.offset}`,
        );
      }
      return new FileRangeSource(location, handle);
    } catch (err) {
      await handle.close();
      throw err;
    }
  }

  async read(position: number, into: Uint8Array, offset: number, length: number): Promise<void> {
    this.checkRange(position, length);
    let done = 0;
    while (done < length) {
      const at = this.location.offset + position + done;
      const { bytesRead } = await this.handle.read(into, offset + done, length - done, at);
      if (bytesRead === 0) throw this.shrunk(at);
      done += bytesRead;
    }
  }

  private checkRange(position: number, length: number): void {
    if (position < 0 || length < 0 || position + length > this.location.size) {
      throw new RangeError(
        `read of ${length} bytes at ${position} is outside the ${this.location.size}-byte blob in ${this.location.path}`,
      );
    }
  }

  private shrunk(at: number): Error {
    return new Error(`${this.location.path} ended at byte ${at}; did it shrink?`);
  }

  /** The same read without the thread pool: the decoder uses it for windows copying from many places. */
  readSync(position: number, into: Uint8Array, offset: number, length: number): void {
    this.checkRange(position, length);
    let done = 0;
    while (done < length) {
      const at = this.location.offset + position + done;
      const n = readSync(this.handle.fd, into, offset + done, length - done, at);
      if (n === 0) throw this.shrunk(at);
      done += n;
    }
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.handle.close();
  }
}
