/**
 * Scratch files for diff and apply: one private folder per run, removed whole at the end,
 * and helpers to write a stream to a file and to follow a file being written.
 */
import { createReadStream } from "node:fs";
import { mkdtemp, open, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";

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
  const handle = await open(path, "wx", 0o600);
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

/** Streams a file (or a byte range of it), in 1 MiB pieces. */
export function readFileStream(path: string, start = 0, length?: number): AsyncIterable<Uint8Array> {
  if (length === 0) return (async function* () {})();
  return createReadStream(path, {
    start,
    ...(length !== undefined ? { end: start + length - 1 } : {}),
    highWaterMark: 1024 * 1024,
  });
}
