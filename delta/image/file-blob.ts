/**
 * Positional reads of a byte range of a file: how layer blobs are read out of an OCI layout
 * folder or from inside a docker-archive tar without loading the file or streaming what precedes it.
 */
import { type FileHandle, open } from "node:fs/promises";

/** 1 MiB reads: large enough that per-call overhead is noise, small enough to bound memory. */
export const FILE_READ_CHUNK = 1024 * 1024;

/** Streams `length` bytes at `start` of `path`; throws if the file is shorter. Opens its own handle. */
export async function* readFileRange(
  path: string,
  start: number,
  length: number,
): AsyncGenerator<Uint8Array> {
  const handle = await open(path, "r");
  try {
    yield* readHandleRange(handle, path, start, length);
  } finally {
    await handle.close();
  }
}

/** Streams a range through an already open handle (the caller closes it). */
export async function* readHandleRange(
  handle: FileHandle,
  path: string,
  start: number,
  length: number,
): AsyncGenerator<Uint8Array> {
  let position = start;
  const end = start + length;
  while (position < end) {
    const want = Math.min(FILE_READ_CHUNK, end - position);
    const buffer = Buffer.allocUnsafe(want);
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
