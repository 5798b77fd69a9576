/**
 * The VCDIFF source, read by random access: a buffer, a file, or several of them concatenated
 * into one virtual source (the image engine adds a registry-backed one). The decoder and the
 * encoder read the source only through this interface.
 */
import { readSync } from "node:fs";
import { type FileHandle, open } from "node:fs/promises";
import { VcdiffError } from "./format.js";

export interface SourceReader {
  /** Total length in bytes. */
  readonly size: number;
  /** Reads exactly `length` bytes at `position` into `into[offset..]`; rejects if the source is shorter. */
  read(position: number, into: Uint8Array, offset: number, length: number): Promise<void>;
  /**
   * Optional synchronous read with the same contract, for local sources only (memory, files):
   * the decoder then reads only through it, because each async read costs tens of microseconds
   * of event-loop and thread-pool overhead. A remote source leaves it out and gets parallel reads.
   */
  readSync?(position: number, into: Uint8Array, offset: number, length: number): void;
  /**
   * For a source still arriving (a held layer copied from a registry while the bundle decodes):
   * a promise that resolves once [position, position + length) can be read, or undefined when it
   * can be read now. A reader calls it before reading; `readSync` of a range not yet there throws.
   */
  whenReadable?(position: number, length: number): Promise<void> | undefined;
  /** Releases file handles or connections; safe to call twice. */
  close?(): Promise<void>;
}

/** A source held in memory. */
export class BufferSource implements SourceReader {
  constructor(readonly bytes: Uint8Array) {}

  get size(): number {
    return this.bytes.length;
  }

  async read(position: number, into: Uint8Array, offset: number, length: number): Promise<void> {
    this.readSync(position, into, offset, length);
  }

  readSync(position: number, into: Uint8Array, offset: number, length: number): void {
    if (position < 0 || position + length > this.bytes.length) {
      throw new VcdiffError(
        "SOURCE",
        `read of ${length} bytes at ${position} is past the end of a ${this.bytes.length}-byte source`,
        -1,
      );
    }
    into.set(this.bytes.subarray(position, position + length), offset);
  }
}

/** A source file read by position through one file handle; positions beyond 4 GiB are fine. */
export class FileSource implements SourceReader {
  private closed = false;

  /** `size` is what the reads are checked against (ArrivingFileSource: the size the file is to have). */
  protected constructor(
    readonly path: string,
    private readonly handle: FileHandle,
    readonly size: number,
  ) {}

  static async open(path: string): Promise<FileSource> {
    const handle = await open(path, "r");
    try {
      const stats = await handle.stat();
      if (!stats.isFile()) throw new Error(`${path} is not a regular file`);
      return new FileSource(path, handle, stats.size);
    } catch (err) {
      await handle.close();
      throw err;
    }
  }

  async read(position: number, into: Uint8Array, offset: number, length: number): Promise<void> {
    this.checkRange(position, length);
    let done = 0;
    while (done < length) {
      const { bytesRead } = await this.handle.read(into, offset + done, length - done, position + done);
      if (bytesRead === 0) throw this.shrunk(position, done, length);
      done += bytesRead;
    }
  }

  readSync(position: number, into: Uint8Array, offset: number, length: number): void {
    this.checkRange(position, length);
    let done = 0;
    while (done < length) {
      const n = readSync(this.handle.fd, into, offset + done, length - done, position + done);
      if (n === 0) throw this.shrunk(position, done, length);
      done += n;
    }
  }

  protected checkRange(position: number, length: number): void {
    if (position < 0 || position + length > this.size) {
      throw new VcdiffError(
        "SOURCE",
        `read of ${length} bytes at ${position} is past the end of ${this.path} (${this.size} bytes)`,
        -1,
      );
    }
  }

  private shrunk(position: number, done: number, length: number): VcdiffError {
    return new VcdiffError(
      "SOURCE",
      `${this.path} ended at ${position + done} while reading ${length} bytes at ${position}; did it shrink?`,
      -1,
    );
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.handle.close();
  }
}

/** Several sources as one virtual source, one after another (the image engine's source layers). */
export class ConcatSource implements SourceReader {
  readonly size: number;
  /** starts[i] is the virtual position of parts[i]'s first byte. */
  private readonly starts: number[] = [];

  constructor(readonly parts: readonly SourceReader[]) {
    let size = 0;
    for (const part of parts) {
      this.starts.push(size);
      size += part.size;
    }
    this.size = size;
    if (parts.every((p) => p.readSync !== undefined)) {
      this.readSync = (position, into, offset, length) => {
        this.spans(position, length, (part, from, at, n) => part.readSync!(from, into, offset + at, n));
      };
    }
    if (parts.some((p) => p.whenReadable !== undefined)) {
      this.whenReadable = (position, length) => {
        const waits = this.spans(position, length, (part, from, _at, n) => part.whenReadable?.(from, n));
        const pending = waits.filter((w) => w !== undefined) as Promise<void>[];
        if (pending.length === 0) return undefined;
        return pending.length === 1 ? pending[0] : Promise.all(pending).then(() => undefined);
      };
    }
  }

  readonly readSync?: (position: number, into: Uint8Array, offset: number, length: number) => void;
  readonly whenReadable?: (position: number, length: number) => Promise<void> | undefined;

  /** Calls visit for each part the range [position, position+length) touches. */
  private spans(
    position: number,
    length: number,
    visit: (part: SourceReader, from: number, at: number, n: number) => unknown,
  ): unknown[] {
    if (position < 0 || position + length > this.size) {
      throw new VcdiffError(
        "SOURCE",
        `read of ${length} bytes at ${position} is past the end of a ${this.size}-byte source of ${this.parts.length} parts`,
        -1,
      );
    }
    // Binary search for the last part that starts at or before position.
    let lo = 0;
    let hi = this.parts.length - 1;
    while (lo < hi) {
      const mid = Math.ceil((lo + hi) / 2);
      if (this.starts[mid] <= position) lo = mid;
      else hi = mid - 1;
    }
    const results: unknown[] = [];
    let done = 0;
    for (let i = lo; done < length; i++) {
      const part = this.parts[i];
      const from = position + done - this.starts[i];
      const n = Math.min(length - done, part.size - from);
      if (n > 0) results.push(visit(part, from, done, n));
      done += Math.max(n, 0);
    }
    return results;
  }

  async read(position: number, into: Uint8Array, offset: number, length: number): Promise<void> {
    await Promise.all(
      this.spans(position, length, (part, from, at, n) => part.read(from, into, offset + at, n)),
    );
  }

  async close(): Promise<void> {
    for (const part of this.parts) await part.close?.();
  }
}

/**
 * Reads `length` bytes at `position`, synchronously when the source can (see `readSync`), after
 * waiting for them if the source is still arriving (`whenReadable`).
 */
export async function readFrom(
  source: SourceReader,
  position: number,
  into: Uint8Array,
  offset: number,
  length: number,
): Promise<void> {
  const wait = source.whenReadable?.(position, length);
  if (wait !== undefined) await wait;
  if (source.readSync !== undefined) source.readSync(position, into, offset, length);
  else await source.read(position, into, offset, length);
}

/** Default size of the chunks fileChunks yields: big sequential reads, a fixed 1 MiB of memory. */
export const FILE_CHUNK_SIZE = 1024 * 1024;

/**
 * Reads a file (a delta) as a stream of chunks through one reused buffer: each yielded chunk is a
 * view that the next one overwrites, so reading costs a fixed FILE_CHUNK_SIZE of memory instead of
 * a fresh buffer per chunk (garbage the collector frees late). Fit for `decode`, which never holds
 * a chunk after asking for the next; not for consumers that keep chunks (`Readable.from`, arrays).
 */
export async function* fileChunks(
  handle: FileHandle,
  chunkSize = FILE_CHUNK_SIZE,
): AsyncGenerator<Uint8Array> {
  const buffer = new Uint8Array(chunkSize);
  for (;;) {
    const { bytesRead } = await handle.read(buffer, 0, chunkSize, null);
    if (bytesRead === 0) return;
    yield buffer.subarray(0, bytesRead);
  }
}
