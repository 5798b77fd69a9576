/**
 * Unsigned LEB128 varints (7 bits a byte, least significant first), as the `ref-zstd` and
 * `zstd-x86` payloads write them.
 */

/** A varint longer than this cannot hold a safe integer and is refused. */
export const MAX_VARINT_BYTES = 8;

/** Appends varints to a growing byte array. */
export class VarintWriter {
  private bytes = new Uint8Array(256);
  length = 0;

  write(value: number): void {
    if (this.length + MAX_VARINT_BYTES > this.bytes.length) {
      const grown = new Uint8Array(this.bytes.length * 2);
      grown.set(this.bytes.subarray(0, this.length));
      this.bytes = grown;
    }
    let v = value;
    while (v >= 0x80) {
      this.bytes[this.length++] = (v % 0x80) | 0x80;
      v = Math.floor(v / 0x80);
    }
    this.bytes[this.length++] = v;
  }

  get result(): Uint8Array {
    return this.bytes.subarray(0, this.length);
  }
}

export type VarintFailure = "TRUNCATED" | "LIMIT";

/**
 * Reads varints from a buffer that starts at `base` in its payload (for error offsets); a
 * truncated or oversized varint becomes the error `fail` makes, so each format keeps its own.
 */
export class VarintReader {
  position = 0;

  constructor(
    private readonly bytes: Uint8Array,
    private readonly base: number,
    private readonly what: string,
    private readonly fail: (code: VarintFailure, message: string, offset: number) => Error,
  ) {}

  get offset(): number {
    return this.base + this.position;
  }

  get remaining(): number {
    return this.bytes.length - this.position;
  }

  read(field: string): number {
    let value = 0;
    let scale = 1;
    for (let i = 0; i < MAX_VARINT_BYTES; i++) {
      if (this.position >= this.bytes.length) {
        throw this.fail("TRUNCATED", `the ${this.what} ends inside ${field}`, this.offset);
      }
      const b = this.bytes[this.position++]!;
      value += (b & 0x7f) * scale;
      if (b < 0x80) {
        if (value > Number.MAX_SAFE_INTEGER) break;
        return value;
      }
      scale *= 0x80;
    }
    throw this.fail(
      "LIMIT",
      `${field} is not a varint of at most ${MAX_VARINT_BYTES} bytes holding a safe integer`,
      this.offset,
    );
  }
}
