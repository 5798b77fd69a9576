/**
 * The VCDIFF source, read by random access: a buffer, a file, or several of them concatenated
 * into one virtual source (the image engine adds a registry-backed one). The decoder and the
 * encoder read the source only through this interface.
 */
import { VcdiffError } from "./format.js";

export interface SourceReader {
  /** Total length in bytes. */
  readonly size: number;
  /** Reads exactly `length` bytes at `position` into `into[offset..]`; rejects if the source is shorter. */
  read(position: number, into: Uint8Array, offset: number, length: number): Promise<void>;
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
