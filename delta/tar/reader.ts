/**
 * A streaming tar reader that keeps every byte: each entry comes with its raw header bytes and
 * absolute offsets, its data as a stream of chunks, and the padding after its data; the tail
 * (end-of-archive blocks and whatever follows) is kept too, so header + data + padding of every
 * entry plus the tail is the input, byte for byte.
 *
 *   const reader = new TarReader(stream);
 *   for await (const item of reader) {
 *     for await (const chunk of item.data) hash.update(chunk); // or leave it: it is skipped
 *     item.padding; // available once the data is read or skipped
 *   }
 *   reader.tail; // after the loop
 */
import { concatBytes, MAX_TAIL_BYTES, TarError } from "./format.js";
import { type BlockSource, readHeaderGroup, type TarEntry } from "./header.js";

export type { TarEntry } from "./header.js";

const EMPTY = new Uint8Array(0);

/** Pulls bytes from an async iterable of chunks, tracking the absolute offset. */
class ChunkQueue implements BlockSource {
  private readonly iterator: AsyncIterator<Uint8Array>;
  private chunk: Uint8Array = EMPTY;
  private position = 0;
  private ended = false;
  offset = 0;

  constructor(input: AsyncIterable<Uint8Array>) {
    this.iterator = input[Symbol.asyncIterator]();
  }

  /** Makes sure unread bytes are buffered; false at the end of input. */
  private async fill(): Promise<boolean> {
    while (this.position >= this.chunk.length) {
      if (this.ended) return false;
      const next = await this.iterator.next();
      if (next.done) {
        this.ended = true;
        this.chunk = EMPTY;
        this.position = 0;
        return false;
      }
      this.chunk = next.value;
      this.position = 0;
    }
    return true;
  }

  /** Exactly `length` bytes, copied (callers keep them); null if the input has ended; throws if it ends midway. */
  async readExact(length: number): Promise<Uint8Array | null> {
    const start = this.offset;
    if (!(await this.fill())) return null;
    // Small reads come from Node's buffer pool: header blocks are the per-entry hot path.
    const pooled = Buffer.allocUnsafe(length);
    // A plain Uint8Array view, so callers' .slice() copies as they expect (Buffer's would not).
    const out = new Uint8Array(pooled.buffer, pooled.byteOffset, length);
    let have = 0;
    while (have < length) {
      if (!(await this.fill())) {
        throw new TarError("TRUNCATED", `input ended ${have} bytes into a ${length}-byte read`, start);
      }
      const n = Math.min(length - have, this.chunk.length - this.position);
      out.set(this.chunk.subarray(this.position, this.position + n), have);
      this.position += n;
      this.offset += n;
      have += n;
    }
    return out;
  }

  /** Up to `max` bytes without copying; empty only at the end of input. */
  async readSome(max: number): Promise<Uint8Array> {
    if (!(await this.fill())) return EMPTY;
    const n = Math.min(max, this.chunk.length - this.position);
    const out = this.chunk.subarray(this.position, this.position + n);
    this.position += n;
    this.offset += n;
    return out;
  }

  async close(): Promise<void> {
    if (!this.ended) {
      this.ended = true;
      await this.iterator.return?.();
    }
  }
}

/** One entry while it is current: its data must be read (or is skipped) before the next one. */
export class TarItem {
  private remaining: number;
  private paddingBytes: Uint8Array | undefined;
  private reading = false;
  private retired = false;

  constructor(
    readonly entry: TarEntry,
    private readonly queue: ChunkQueue,
  ) {
    this.remaining = entry.size;
  }

  /** The entry's data in chunks (views into the input's chunks); readable once, while the entry is current. */
  get data(): AsyncIterable<Uint8Array> {
    return { [Symbol.asyncIterator]: () => this.chunks() };
  }

  /** The bytes between the end of the data and endOffset (zero in well-formed tars), once the data is consumed. */
  get padding(): Uint8Array {
    if (this.paddingBytes === undefined) {
      throw new TarError(
        "MISUSE",
        `padding of "${this.entry.path}" asked for before its data was read or skipped`,
        this.entry.dataOffset,
      );
    }
    return this.paddingBytes;
  }

  private async *chunks(): AsyncGenerator<Uint8Array> {
    if (this.retired || this.reading) {
      throw new TarError(
        "MISUSE",
        `data of "${this.entry.path}" read twice or after the reader moved to the next entry`,
        this.entry.dataOffset,
      );
    }
    this.reading = true;
    try {
      while (this.remaining > 0) {
        const at = this.queue.offset;
        const chunk = await this.queue.readSome(this.remaining);
        if (chunk.length === 0) {
          throw new TarError(
            "TRUNCATED",
            `input ended ${this.remaining} bytes before the end of "${this.entry.path}"`,
            at,
          );
        }
        this.remaining -= chunk.length;
        yield chunk;
      }
      await this.readPadding();
    } finally {
      this.reading = false;
    }
  }

  private async readPadding(): Promise<void> {
    if (this.paddingBytes !== undefined) return;
    const length = this.entry.endOffset - this.entry.dataOffset - this.entry.size;
    if (length === 0) {
      this.paddingBytes = EMPTY;
      return;
    }
    const at = this.queue.offset;
    const bytes = await this.queue.readExact(length);
    if (bytes === null) {
      throw new TarError("TRUNCATED", `input ended in the padding after "${this.entry.path}"`, at);
    }
    this.paddingBytes = bytes;
  }

  /** Skips unread data and reads the padding; the item is done afterwards. */
  async finish(): Promise<void> {
    while (this.remaining > 0) {
      const at = this.queue.offset;
      const chunk = await this.queue.readSome(this.remaining);
      if (chunk.length === 0) {
        throw new TarError(
          "TRUNCATED",
          `input ended ${this.remaining} bytes before the end of "${this.entry.path}"`,
          at,
        );
      }
      this.remaining -= chunk.length;
    }
    await this.readPadding();
    this.retired = true;
  }
}

/** What follows the last entry: the end-of-archive marker and any bytes after it. */
export interface TarTail {
  /**
   * Offset of the first end-of-archive block, or of global PAX headers that no entry follows,
   * or of the end of input when there is neither.
   */
  readonly offset: number;
  /** Every remaining byte, exactly; empty when the input ended without an end-of-archive marker. */
  readonly bytes: Uint8Array;
}

export class TarReader implements AsyncIterable<TarItem> {
  private readonly queue: ChunkQueue;
  private tailValue: TarTail | undefined;
  private started = false;

  constructor(input: AsyncIterable<Uint8Array>) {
    this.queue = new ChunkQueue(input);
  }

  /** The archive's tail; available once iteration has finished. */
  get tail(): TarTail {
    if (this.tailValue === undefined) {
      throw new TarError("MISUSE", "the tail is known only after every entry was read", this.queue.offset);
    }
    return this.tailValue;
  }

  /** Total bytes of the tar; available once iteration has finished. */
  get size(): number {
    return this.tail.offset + this.tail.bytes.length;
  }

  [Symbol.asyncIterator](): AsyncGenerator<TarItem> {
    if (this.started) throw new TarError("MISUSE", "a TarReader can be iterated once", this.queue.offset);
    this.started = true;
    return this.items();
  }

  private async *items(): AsyncGenerator<TarItem> {
    try {
      for (;;) {
        const group = await readHeaderGroup(this.queue);
        if (group.kind === "eof") {
          this.tailValue = { offset: group.offset, bytes: EMPTY };
          return;
        }
        if (group.kind === "end") {
          this.tailValue = { offset: group.offset, bytes: await this.readTail(group.block) };
          return;
        }
        const item = new TarItem(group.entry, this.queue);
        yield item;
        await item.finish();
      }
    } finally {
      await this.queue.close();
    }
  }

  private async readTail(first: Uint8Array): Promise<Uint8Array> {
    const parts: Uint8Array[] = [first];
    let total = first.length;
    for (;;) {
      const chunk = await this.queue.readSome(MAX_TAIL_BYTES);
      if (chunk.length === 0) break;
      total += chunk.length;
      if (total > MAX_TAIL_BYTES) {
        throw new TarError(
          "LIMIT",
          `more than ${MAX_TAIL_BYTES} bytes after the end-of-archive marker; this is not a single tar`,
          this.queue.offset,
        );
      }
      parts.push(chunk.slice());
    }
    return concatBytes(parts);
  }
}

/** Convenience: reads the whole tar, skipping data, and returns its entries and tail (for small tars and tests). */
export async function listTar(
  input: AsyncIterable<Uint8Array>,
): Promise<{ entries: TarEntry[]; tail: TarTail }> {
  const reader = new TarReader(input);
  const entries: TarEntry[] = [];
  for await (const item of reader) entries.push(item.entry);
  return { entries, tail: reader.tail };
}
