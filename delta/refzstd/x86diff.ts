/**
 * x86 diff pieces (ref-zstd version 3): a diff piece of an x86 executable whose CALL and JMP
 * operands change as whole 32-bit words. When code moves, every call into a function that moved
 * by a different distance changes its operand by the same amount; as byte differences those
 * changes scatter with carries (a 0x40 shift is 40 00 00 00 or 40 01 00 00), as words they
 * repeat, and kept apart from the difference bytes they compress well. On the Node.js executable
 * 20.19.5 → 20.19.6 (97.6 MB of difference bytes, 16 MiB zstd -22 frames) the difference
 * bytes and 797,755 words took 919 KB where the difference bytes alone took 1,012 KB.
 *
 * The rule, applied by both sides to the piece's source (old) bytes, so it needs no table: a
 * source byte E8 or E9 with at least four more bytes of the piece after it starts a field; the
 * next four output bytes are the four source bytes plus the next word (32-bit little-endian, mod
 * 2^32), and their difference bytes are 0. Every other output byte is the source byte plus its
 * difference byte (mod 256). Source bytes decide, never output bytes, so the decoder can apply
 * the rule as it goes, one chunk of output at a time: a field may span two chunks.
 */

const CALL = 0xe8;
const JMP = 0xe9;
/** An opcode byte and its four operand bytes. */
const SPAN = 5;

/**
 * Splits a diff piece of an x86 executable: writes its difference bytes to `diff[diffAt, +length)`
 * and appends its field words to `words`.
 */
export function encodeX86Diff(
  oldBytes: Uint8Array,
  oldAt: number,
  newBytes: Uint8Array,
  newAt: number,
  length: number,
  diff: Uint8Array,
  diffAt: number,
  words: number[],
): void {
  let i = 0;
  while (i < length) {
    const o = oldBytes[oldAt + i]!;
    diff[diffAt + i] = newBytes[newAt + i]! - o;
    if ((o === CALL || o === JMP) && length - i >= SPAN) {
      const was = readWord(oldBytes, oldAt + i + 1);
      const now = readWord(newBytes, newAt + i + 1);
      words.push((now - was) >>> 0);
      diff.fill(0, diffAt + i + 1, diffAt + i + SPAN);
      i += SPAN;
    } else {
      i++;
    }
  }
}

function readWord(bytes: Uint8Array, at: number): number {
  return (bytes[at]! | (bytes[at + 1]! << 8) | (bytes[at + 2]! << 16) | (bytes[at + 3]! << 24)) >>> 0;
}

/** Where an x86 diff piece stands between two chunks of its output. */
export class X86DiffState {
  /** Bytes of the current field still to produce (0 outside a field). */
  field = 0;
  word = 0;
  carry = 0;
  /** The next word's byte offset in the words buffer, and where the words end. */
  wordAt = 0;
  wordEnd = 0;

  /** Starts a segment whose words are `words[from, to)`. */
  startWords(from: number, to: number): void {
    this.field = 0;
    this.wordAt = from;
    this.wordEnd = to;
  }
}

/** Why a chunk could not be applied; undefined when it was. */
export type X86DiffFault = "words" | "field";

/**
 * Applies `n` bytes of an x86 diff piece in place: `out[at, +n)` holds source bytes and gets the
 * output bytes. `pieceLeft` is how many bytes of the piece remain from `at` on (these `n`
 * included); `state` carries a field across chunks. Returns "words" when the piece needs a word
 * past the segment's words, "field" when a field's difference byte is not 0.
 */
export function applyX86Diff(
  out: Uint8Array,
  at: number,
  n: number,
  diff: Uint8Array,
  diffAt: number,
  pieceLeft: number,
  words: Uint8Array,
  state: X86DiffState,
): X86DiffFault | undefined {
  let field = state.field;
  let word = state.word;
  let carry = state.carry;
  for (let j = 0; j < n; j++) {
    const o = out[at + j]!;
    const d = diff[diffAt + j]!;
    if (field > 0) {
      if (d !== 0) {
        state.field = field;
        return "field";
      }
      const sum = o + ((word >>> (8 * (4 - field))) & 0xff) + carry;
      out[at + j] = sum;
      carry = sum >>> 8;
      field--;
      continue;
    }
    out[at + j] = o + d;
    if ((o === CALL || o === JMP) && pieceLeft - j >= SPAN) {
      if (state.wordAt + 4 > state.wordEnd) {
        state.field = 0;
        return "words";
      }
      word = readWord(words, state.wordAt);
      state.wordAt += 4;
      field = 4;
      carry = 0;
    }
  }
  state.field = field;
  state.word = word;
  state.carry = carry;
  return undefined;
}
