/**
 * Scratch files for diff and apply: one private folder per run, removed whole at the end,
 * and helpers to write a stream to a file and to follow a file being written.
 */
import { createReadStream } from "node:fs";
import { type FileHandle, mkdtemp, open, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { VcdiffError } from "../vcdiff/format.js";
import { FileSource } from "../vcdiff/source.js";

export class ScratchDir {
  private counter = 0;
  private constructor(readonly path: string) {}

  static async create(parent = tmpdir(), prefix = "deltaship-"): Promise<ScratchDir> {
    return new ScratchDir(await mkdtemp(join(parent, prefix)));
  }

  file(name: string): string {
    return join(this.path, `${this.counter++}-${name}`);
  }

  async remove(): Promise<void> {
    await rm(this.path, { recursive: true, force: true });
  }
}

/**
 * Writes a stream to a new file `path` and returns its size; `onChunk` sees every chunk first,
 * `onWritten` hears the size after each chunk is in the file.
 */
export async function writeToFile(
  stream: AsyncIterable<Uint8Array>,
  path: string,
  onChunk?: (chunk: Uint8Array) => void,
  onWritten?: (size: number) => void,
): Promise<number> {
  return writeToHandle(stream, await open(path, "wx", 0o600), onChunk, onWritten);
}

/** writeToFile into a file already created (and open for writing): closes `handle` at the end. */
export async function writeToHandle(
  stream: AsyncIterable<Uint8Array>,
  handle: FileHandle,
  onChunk?: (chunk: Uint8Array) => void,
  onWritten?: (size: number) => void,
): Promise<number> {
  let size = 0;
  try {
    for await (const chunk of stream) {
      onChunk?.(chunk);
      let done = 0;
      while (done < chunk.length) {
        const { bytesWritten } = await handle.write(chunk, done, chunk.length - done, size + done);
        done += bytesWritten;
      }
      size += chunk.length;
      onWritten?.(size);
    }
  } finally {
    await handle.close();
  }
  return size;
}

/** How far a file being written has got, for readers that follow it (an upload of a layer still decoding). */
export class WrittenSoFar {
  private size = 0;
  private outcome: { ended: true } | { error: unknown } | undefined;
  private waiting: { end: number; resolve: () => void; reject: (error: unknown) => void }[] = [];

  constructor(private readonly what: string) {}

  /** Whether the file holds its bytes before `end` already. */
  has(end: number): boolean {
    return end <= this.size;
  }

  /** Resolves once the file holds its bytes before `end`; rejects if it never will. */
  until(end: number): Promise<void> {
    if (end <= this.size) return Promise.resolve();
    if (this.outcome !== undefined) return Promise.reject(this.failure(end));
    return new Promise((resolve, reject) => this.waiting.push({ end, resolve, reject }));
  }

  advance(size: number): void {
    this.size = size;
    const due = this.waiting.filter((w) => w.end <= size);
    if (due.length === 0) return;
    this.waiting = this.waiting.filter((w) => w.end > size);
    for (const w of due) w.resolve();
  }

  /** No more bytes come: readers waiting beyond the end are told why. */
  end(error?: unknown): void {
    this.outcome = error === undefined ? { ended: true } : { error };
    for (const w of this.waiting) w.reject(this.failure(w.end));
    this.waiting = [];
  }

  private failure(end: number): unknown {
    if (this.outcome !== undefined && "error" in this.outcome) return this.outcome.error;
    return new Error(`${this.what} ended at ${this.size} bytes, before byte ${end}`);
  }
}

/**
 * A file this process is still writing (a held layer being copied from a registry), read by
 * position as it arrives: `whenReadable` waits for a range, `readSync` reads one that is there
 * and throws for one that is not. `size` is the size the file is to have, the caller's
 * expectation; the writer checks the real one.
 */
export class ArrivingFileSource extends FileSource {
  private constructor(
    path: string,
    handle: FileHandle,
    size: number,
    private readonly progress: WrittenSoFar,
  ) {
    super(path, handle, size);
  }

  /** Follows the file at `path`, which must exist already (created by its writer). */
  static async follow(path: string, size: number, progress: WrittenSoFar): Promise<ArrivingFileSource> {
    return new ArrivingFileSource(path, await open(path, "r"), size, progress);
  }

  whenReadable(position: number, length: number): Promise<void> | undefined {
    this.checkRange(position, length);
    return this.progress.has(position + length) ? undefined : this.progress.until(position + length);
  }

  override async read(position: number, into: Uint8Array, offset: number, length: number): Promise<void> {
    await this.whenReadable(position, length);
    this.readSync(position, into, offset, length);
  }

  override readSync(position: number, into: Uint8Array, offset: number, length: number): void {
    if (!this.progress.has(position + length)) {
      throw new VcdiffError(
        "SOURCE",
        `read of ${length} bytes at ${position} of ${this.path} before they were copied there`,
        -1,
      );
    }
    super.readSync(position, into, offset, length);
  }
}

/** Streams a file (or a byte range of it), in 1 MiB pieces. */
export function readFileStream(path: string, start = 0, length?: number): AsyncIterable<Uint8Array> {
  if (length === 0) return (async function* () {})();
  return createReadStream(path, {
    start,
    ...(length !== undefined ? { end: start + length - 1 } : {}),
    highWaterMark: 1024 * 1024,
  });
}
