/**
 * Content-defined chunking with a gear rolling hash (the FastCDC family): a boundary falls
 * where the hash of the last 32 bytes has its top bits clear, so an insertion shifts only
 * the chunks around it. Chunks are named by the first 12 hex digits of their sha256.
 */
import { createHash } from "node:crypto";

export const MIN_CHUNK = 4 * 1024;
/** Average chunk size is 2^AVERAGE_BITS. */
const AVERAGE_BITS = 14;
export const MAX_CHUNK = 64 * 1024;
const BOUNDARY_MASK = ((1 << AVERAGE_BITS) - 1) << (32 - AVERAGE_BITS);

/**
 * 256 fixed pseudo-random words (xorshift32 from a constant seed), so every build cuts the same
 * chunks; the far copy search (filters/far.ts) rolls its hash with them too.
 */
export const GEAR = (() => {
  const table = new Int32Array(256);
  let x = 0x9e3779b9 | 0;
  for (let i = 0; i < 256; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    table[i] = x;
  }
  return table;
})();

export type Chunk = readonly [hash: string, length: number];

/** Streams a file's bytes and collects its chunks. */
export class Chunker {
  private hash = 0;
  private readonly buffer = new Uint8Array(MAX_CHUNK);
  private fill = 0;
  readonly chunks: Chunk[] = [];

  push(data: Uint8Array): void {
    const buffer = this.buffer;
    let h = this.hash;
    let fill = this.fill;
    for (let i = 0; i < data.length; i++) {
      const b = data[i]!;
      buffer[fill++] = b;
      h = ((h << 1) + GEAR[b]!) | 0;
      if ((fill >= MIN_CHUNK && (h & BOUNDARY_MASK) === 0) || fill === MAX_CHUNK) {
        this.emit(fill);
        fill = 0;
        h = 0;
      }
    }
    this.hash = h;
    this.fill = fill;
  }

  finish(): Chunk[] {
    if (this.fill > 0) this.emit(this.fill);
    this.fill = 0;
    return this.chunks;
  }

  private emit(length: number): void {
    const digest = createHash("sha256").update(this.buffer.subarray(0, length)).digest("hex").slice(0, 12);
    this.chunks.push([digest, length]);
  }
}
