/**
 * x86 branch filter: rewrites the 32-bit operands of CALL (E8) and JMP (E9) from relative to
 * absolute positions inside a file, so that the many calls to one function carry the same four
 * bytes and compress far better (about 7% less zstd output on the Node.js executable).
 *
 * The transform is a bijection on the four operand bytes and decisions depend only on the opcode
 * byte, which is never rewritten, so forward and inverse scan the same positions:
 * - an operand whose top byte is 0x00 or 0xFF (a displacement within ±16 MiB) has its low 25 bits
 *   moved by the position modulo 2^25 and is sign-extended from bit 24, so its top byte stays
 *   0x00 or 0xFF; any other operand is left as it is, and stays outside that set;
 * - after an opcode the next four bytes are skipped whether or not they changed.
 * An opcode closer than five bytes to the end of the filtered range is left alone.
 */

const CALL = 0xe8;
const JMP = 0xe9;
const LOW_BITS = 0x1ffffff;
const SIGN_BIT = 0x1000000;
/** Bytes an opcode and its operand span. */
const SPAN = 5;

export type X86Direction = "encode" | "decode";

/**
 * Filters `bytes[from, to)` in place, where `bytes[from]` is at `position` within the filtered
 * range. Returns the index of the first byte not yet decided (an opcode whose operand runs past
 * `to`), so a streaming caller can carry those bytes into the next call.
 */
export function filterX86(
  bytes: Uint8Array,
  from: number,
  to: number,
  position: number,
  direction: X86Direction,
): number {
  const sign = direction === "encode" ? 1 : -1;
  let i = from;
  const last = to - SPAN;
  while (i <= last) {
    const op = bytes[i]!;
    if (op !== CALL && op !== JMP) {
      i++;
      continue;
    }
    const top = bytes[i + 4]!;
    if (top === 0x00 || top === 0xff) {
      const value = bytes[i + 1]! | (bytes[i + 2]! << 8) | (bytes[i + 3]! << 16) | (top << 24);
      const at = (position + (i - from) + SPAN) & LOW_BITS;
      let moved = (value + sign * at) & LOW_BITS;
      if ((moved & SIGN_BIT) !== 0) moved |= ~LOW_BITS;
      bytes[i + 1] = moved & 0xff;
      bytes[i + 2] = (moved >>> 8) & 0xff;
      bytes[i + 3] = (moved >>> 16) & 0xff;
      bytes[i + 4] = (moved >>> 24) & 0xff;
    }
    i += SPAN;
  }
  // Past `last`, only an opcode can stop the scan: its operand may still arrive.
  while (i < to) {
    const op = bytes[i]!;
    if (op === CALL || op === JMP) return i;
    i++;
  }
  return to;
}

/**
 * A streaming x86 filter over one range of known length: feed it pieces in order, it returns
 * the filtered bytes it has decided on (holding back at most four bytes across pieces).
 */
export class X86Stream {
  private readonly direction: X86Direction;
  private readonly length: number;
  /** Bytes of the range consumed so far (handed out or held). */
  private consumed = 0;
  /** Position in the range of the first held byte. */
  private heldAt = 0;
  private held: Uint8Array = new Uint8Array(0);

  constructor(direction: X86Direction, length: number) {
    this.direction = direction;
    this.length = length;
  }

  get remaining(): number {
    return this.length - this.consumed;
  }

  /**
   * Filters the next piece of the range in place (the piece's bytes are rewritten) and returns
   * the bytes now decided, which may be fewer than the piece: up to four are held for the next.
   */
  push(piece: Uint8Array): Uint8Array {
    if (piece.length > this.remaining) {
      throw new RangeError(
        `x86 filter range of ${this.length} bytes was given ${piece.length - this.remaining} more`,
      );
    }
    this.consumed += piece.length;
    let work: Uint8Array;
    if (this.held.length === 0) {
      work = piece;
    } else {
      work = new Uint8Array(this.held.length + piece.length);
      work.set(this.held, 0);
      work.set(piece, this.held.length);
    }
    const position = this.heldAt;
    const decided = filterX86(work, 0, work.length, position, this.direction);
    // At the range's end an opcode without its whole operand stays as it is, in both directions.
    const settled = this.remaining === 0 ? work.length : decided;
    // A copy: the piece may be a Buffer (whose slice is a view) in a buffer its producer reuses.
    this.held = new Uint8Array(work.length - settled);
    this.held.set(work.subarray(settled));
    this.heldAt = position + settled;
    return work.subarray(0, settled);
  }
}
