/**
 * x86 diff pieces (ref-zstd version 3): a diff piece of an x86 executable whose branch and
 * RIP-relative operands change as whole 32-bit words. When code moves, every call into a
 * function that moved by another distance changes its operand by the same amount; as byte
 * differences those changes scatter with carries (a 0x40 shift is 40 00 00 00 or 40 01 00 00),
 * as words they repeat, and kept apart from the difference bytes, in one stream per kind of
 * operand, they compress well.
 *
 * The rule, applied by both sides to the piece's source (old) bytes, so it needs no table. A
 * byte not inside an operand, with at least four more bytes of the piece after it, starts an
 * operand after it when
 * - it is E8 (CALL rel32) or E9 (JMP rel32), or
 * - the byte before it, itself not inside an operand nor such a starting byte, is 0F and this
 *   one 80–8F (Jcc rel32), or that byte is an opcode of RIP_OPCODES and this one a ModRM byte
 *   with mod 00 and r/m 101 (a RIP-relative disp32), or
 * - it is such a ModRM byte two bytes after such a 0F whose next byte started nothing (a
 *   two-byte opcode: MOVUPS, MOVZX, IMUL… with a RIP-relative operand, also kind RIP), or
 * - in a piece of mode X86_ABSOLUTE (a position-dependent executable, ELF type EXEC, whose
 *   immediates are addresses), it is B8–BF (MOV r32, imm32).
 * In mode X86_RELATIVE (shared libraries and PIE executables) B8–BF start nothing.
 * The operand's four output bytes are its four source bytes plus the next word of its kind's
 * stream (32-bit little-endian, mod 2^32), and their difference bytes are 0. Every other output
 * byte is the source byte plus its difference byte (mod 256). The rule looks only at source
 * bytes already passed, so the decoder applies it as it goes, one chunk of output at a time.
 */

import type { RefinedPiece } from "./approx.js";

/** The modes of an x86 diff piece: relative operands only, or also MOV r32, imm32. */
export const X86_RELATIVE = 1;
export const X86_ABSOLUTE = 2;
/** The kinds of operand, each with its own word stream: CALL, JMP, Jcc, RIP-relative, MOV imm32. */
export const X86_KINDS = 5;
const CALL = 0;
const JMP = 1;
const JCC = 2;
const RIP = 3;
const IMM = 4;
/** An operand's bytes, and the bytes that must follow the byte that starts one. */
const FIELD = 4;

/**
 * One-byte opcodes that take a ModRM operand and are common with a RIP-relative address in x86-64
 * code: MOV, LEA, CMP, ADD, SUB, XOR, OR, AND, TEST, MOVSXD, the immediate groups, INC/DEC/CALL/JMP
 * (FF), TEST/NOT (F6). A false match only sends an operand's change as a word.
 */
const RIP_OPCODES = [
  0x03, 0x0b, 0x23, 0x2b, 0x33, 0x38, 0x39, 0x3a, 0x3b, 0x63, 0x80, 0x81, 0x83, 0x85, 0x88, 0x89, 0x8b, 0x8d,
  0xc6, 0xc7, 0xf6, 0xff,
];

/** Per byte value: what a byte starts when it is not inside an operand (0: nothing). */
const STARTS = new Uint8Array(256);
const START_CALL = 1;
const START_JMP = 2;
const START_0F = 3;
const START_RIP = 4;
const START_IMM = 6;
/** Not a STARTS value: the byte after a free 0F that started nothing (the second byte of a two-byte opcode). */
const AFTER_0F = 5;
STARTS[0xe8] = START_CALL;
STARTS[0xe9] = START_JMP;
STARTS[0x0f] = START_0F;
for (const op of RIP_OPCODES) STARTS[op] = START_RIP;
for (let op = 0xb8; op <= 0xbf; op++) STARTS[op] = START_IMM;

/**
 * Where the rule stands between bytes of a piece (and, in the decoder, between chunks): inside an
 * operand, or after a byte that may start a two-byte form.
 */
export class X86DiffState {
  /** Bytes of the current operand still to produce (0 outside one). */
  field = 0;
  word = 0;
  carry = 0;
  /** STARTS of the previous byte when it may begin a two-byte form (0F, a RIP opcode), AFTER_0F after a 0F's next byte, else 0. */
  previous = 0;
  /** Per kind: the next word's byte offset in the words buffer, and where that kind's words end. */
  readonly wordAt = new Float64Array(X86_KINDS);
  readonly wordEnd = new Float64Array(X86_KINDS);

  /** Whether B8–BF start an operand (mode X86_ABSOLUTE). */
  absolute = false;

  /** Starts a piece of `mode`: outside any operand. */
  startPiece(mode: number): void {
    this.field = 0;
    this.previous = 0;
    this.absolute = mode === X86_ABSOLUTE;
  }

  /** Starts a segment whose words of kind k are words[starts[k], starts[k + 1]). */
  startWords(starts: readonly number[]): void {
    for (let k = 0; k < X86_KINDS; k++) {
      this.wordAt[k] = starts[k]!;
      this.wordEnd[k] = starts[k + 1]!;
    }
    this.startPiece(X86_RELATIVE);
  }
}

/**
 * The kind of operand that starts after byte `value` (source), given the state before it and
 * how many bytes of the piece remain from it on; -1 for none. Updates `state.previous`.
 */
function operandAfter(state: X86DiffState, value: number, left: number): number {
  const previous = state.previous;
  const starts = STARTS[value]!;
  state.previous = 0;
  if (left <= FIELD) return -1;
  if (previous === START_0F && value >= 0x80 && value <= 0x8f) return JCC;
  if ((previous === START_RIP || previous === AFTER_0F) && (value & 0xc7) === 0x05) return RIP;
  if (starts === START_CALL) return CALL;
  if (starts === START_JMP) return JMP;
  if (starts === START_IMM && state.absolute) return IMM;
  if (starts === START_0F || starts === START_RIP) state.previous = starts;
  else if (previous === START_0F) state.previous = AFTER_0F;
  return -1;
}

/** One empty word list per kind of operand. */
export function emptyX86Words(): number[][] {
  return Array.from({ length: X86_KINDS }, () => []);
}

/** How many words `words` holds, all kinds together. */
export function x86WordCount(words: readonly (readonly number[])[]): number {
  return words.reduce((sum, list) => sum + list.length, 0);
}

/** Writes the words as a segment's literal frame holds them (kind after kind, 32-bit little-endian) at out[at]. */
export function writeX86Words(words: readonly (readonly number[])[], out: Uint8Array, at: number): void {
  const view = new DataView(out.buffer, out.byteOffset, out.byteLength);
  let w = at;
  for (const list of words) {
    for (const word of list) {
      view.setUint32(w, word, true);
      w += 4;
    }
  }
}

function readWord(bytes: Uint8Array, at: number): number {
  return (bytes[at]! | (bytes[at + 1]! << 8) | (bytes[at + 2]! << 16) | (bytes[at + 3]! << 24)) >>> 0;
}

/**
 * Splits a diff piece of an x86 executable in `mode`: writes its difference bytes to
 * `diff[diffAt, +length)` and appends its operand words to `words[kind]`.
 */
export function encodeX86Diff(
  mode: number,
  oldBytes: Uint8Array,
  oldAt: number,
  newBytes: Uint8Array,
  newAt: number,
  length: number,
  diff: Uint8Array,
  diffAt: number,
  words: readonly number[][],
): void {
  const state = new X86DiffState();
  state.startPiece(mode);
  let i = 0;
  while (i < length) {
    const o = oldBytes[oldAt + i]!;
    diff[diffAt + i] = newBytes[newAt + i]! - o;
    const kind = operandAfter(state, o, length - i);
    i++;
    if (kind < 0) continue;
    const was = readWord(oldBytes, oldAt + i);
    const now = readWord(newBytes, newAt + i);
    words[kind]!.push((now - was) >>> 0);
    diff.fill(0, diffAt + i, diffAt + i + FIELD);
    i += FIELD;
  }
}

/**
 * The difference bytes and operand words of every diff piece of `pieces` (approximate matching of
 * oldFile to newFile), as x86 diff pieces: what `pieceStreams` gives as byte differences.
 */
export function x86PieceStreams(
  mode: number,
  oldFile: Uint8Array,
  newFile: Uint8Array,
  pieces: readonly RefinedPiece[],
): { diff: Uint8Array; words: number[][] } {
  let length = 0;
  for (const p of pieces) if (p.kind === "diff") length += p.length;
  const diff = new Uint8Array(length);
  const words = emptyX86Words();
  let at = 0;
  let d = 0;
  for (const p of pieces) {
    if (p.kind === "diff") {
      encodeX86Diff(mode, oldFile, p.oldOffset, newFile, at, p.length, diff, d, words);
      d += p.length;
    }
    at += p.length;
  }
  return { diff, words };
}

/** Why a chunk could not be applied; undefined when it was. */
export type X86DiffFault = "words" | "field";

/**
 * Applies `n` bytes of an x86 diff piece in place: `out[at, +n)` holds source bytes and gets the
 * output bytes. `pieceLeft` is how many bytes of the piece remain from `at` on (these `n`
 * included); `state` carries the rule across chunks. Returns "words" when the piece needs a word
 * past its kind's words, "field" when an operand's difference byte is not 0.
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
      const sum = o + ((word >>> (8 * (FIELD - field))) & 0xff) + carry;
      out[at + j] = sum;
      carry = sum >>> 8;
      field--;
      continue;
    }
    out[at + j] = o + d;
    // Most bytes start nothing and follow no possible first byte: skip the rule for them.
    if (STARTS[o] === 0 && state.previous === 0) continue;
    const kind = operandAfter(state, o, pieceLeft - j);
    if (kind < 0) continue;
    const wordAt = state.wordAt[kind]!;
    if (wordAt + FIELD > state.wordEnd[kind]!) {
      state.field = 0;
      return "words";
    }
    word = readWord(words, wordAt);
    state.wordAt[kind] = wordAt + FIELD;
    field = FIELD;
    carry = 0;
  }
  state.field = field;
  state.word = word;
  state.carry = carry;
  return undefined;
}
