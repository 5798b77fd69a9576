/**
 * The encoder's instruction list for one window and its encoding into a VCDIFF window
 * (header, data, instructions and addresses sections) with the default code table.
 * Matching decides what to copy; this module decides how to spell it in the fewest bytes.
 */
import {
  ADD,
  AddressCache,
  COPY,
  DEFAULT_CODE_TABLE,
  NOOP,
  RUN,
  VCD_ADLER32,
  VCD_SOURCE,
  varintLength,
  writeVarint,
} from "./format.js";

/** Instruction kinds in the list; COPY_SOURCE and COPY_TARGET become one VCDIFF COPY. */
export const KIND_ADD = 0;
export const KIND_RUN = 1;
export const KIND_COPY_SOURCE = 2;
export const KIND_COPY_TARGET = 3;

/**
 * Growable struct-of-arrays list of one window's instructions. ADD and RUN take their bytes
 * from the target window at `at`; COPY_SOURCE holds an absolute source offset (the window's
 * segment is chosen once the list is complete); COPY_TARGET holds a window-relative offset.
 */
export class InstructionList {
  count = 0;
  kind = new Uint8Array(1024);
  length = new Int32Array(1024);
  /** ADD/RUN: target position; COPY_SOURCE: absolute source offset; COPY_TARGET: target position copied from. */
  from = new Float64Array(1024);
  segmentStart = Number.POSITIVE_INFINITY;
  segmentEnd = 0;

  reset(): void {
    this.count = 0;
    this.segmentStart = Number.POSITIVE_INFINITY;
    this.segmentEnd = 0;
  }

  push(kind: number, length: number, from: number): void {
    if (this.count === this.kind.length) this.grow();
    const i = this.count++;
    this.kind[i] = kind;
    this.length[i] = length;
    this.from[i] = from;
    if (kind === KIND_COPY_SOURCE) {
      if (from < this.segmentStart) this.segmentStart = from;
      if (from + length > this.segmentEnd) this.segmentEnd = from + length;
    }
  }

  private grow(): void {
    const n = this.kind.length * 2;
    const kind = new Uint8Array(n);
    kind.set(this.kind);
    const length = new Int32Array(n);
    length.set(this.length);
    const from = new Float64Array(n);
    from.set(this.from);
    this.kind = kind;
    this.length = length;
    this.from = from;
  }
}

// Reverse lookups of the default code table, built once.
/** Opcode of a single instruction: index type*9*256 + mode*256 + size (size 0 = size follows), or -1. */
const SINGLE = new Int16Array(4 * 9 * 256).fill(-1);
/** Opcode of ADD(size a, 1..4) then COPY(size c, 4..6, mode m): index ((a*7 + c)*9 + m), or -1. */
const ADD_COPY = new Int16Array(5 * 7 * 9).fill(-1);
/** Opcode of COPY(size 4, mode m) then ADD(size 1): index m, or -1. */
const COPY_ADD = new Int16Array(9).fill(-1);

for (let op = 0; op < 256; op++) {
  const t = DEFAULT_CODE_TABLE;
  if (t.type2[op] === NOOP) {
    SINGLE[t.type1[op] * 9 * 256 + t.mode1[op] * 256 + t.size1[op]] = op;
  } else if (t.type1[op] === ADD && t.type2[op] === COPY) {
    ADD_COPY[(t.size1[op] * 7 + t.size2[op]) * 9 + t.mode2[op]] = op;
  } else if (t.type1[op] === COPY && t.type2[op] === ADD && t.size1[op] === 4 && t.size2[op] === 1) {
    COPY_ADD[t.mode1[op]] = op;
  }
}

/** A growable byte buffer with varint writes. */
class ByteSink {
  buf: Uint8Array;
  pos = 0;
  constructor(capacity: number) {
    this.buf = new Uint8Array(Math.max(16, capacity));
  }
  ensure(extra: number): void {
    if (this.pos + extra <= this.buf.length) return;
    const next = new Uint8Array(Math.max(this.buf.length * 2, this.pos + extra));
    next.set(this.buf.subarray(0, this.pos));
    this.buf = next;
  }
  byte(b: number): void {
    this.ensure(1);
    this.buf[this.pos++] = b;
  }
  varint(n: number): void {
    this.ensure(10);
    this.pos = writeVarint(this.buf, this.pos, n);
  }
  bytes(src: Uint8Array): void {
    this.ensure(src.length);
    this.buf.set(src, this.pos);
    this.pos += src.length;
  }
}

/** Encodes instruction lists into windows; reuses its buffers across windows. */
export class WindowWriter {
  private readonly cache = new AddressCache();
  private readonly data = new ByteSink(1 << 16);
  private readonly inst = new ByteSink(1 << 16);
  private readonly addr = new ByteSink(1 << 16);
  // The instruction held back in case the next one pairs with it: type, size, mode (or NOOP).
  private heldType = NOOP;
  private heldSize = 0;
  private heldMode = 0;

  /**
   * Returns the bytes of one window: `target[0, targetLength)` described by `list`.
   * `checksum` is the Adler-32 of the window's target bytes, or -1 to omit it.
   */
  write(list: InstructionList, target: Uint8Array, targetLength: number, checksum: number): Uint8Array {
    const hasSource = list.segmentStart !== Number.POSITIVE_INFINITY;
    const segmentStart = hasSource ? list.segmentStart : 0;
    const segmentLength = hasSource ? list.segmentEnd - list.segmentStart : 0;
    this.cache.reset();
    this.data.pos = 0;
    this.inst.pos = 0;
    this.addr.pos = 0;
    this.heldType = NOOP;
    const { kind, length, from } = list;
    let here = segmentLength;
    for (let i = 0; i < list.count; i++) {
      const k = kind[i];
      const n = length[i];
      if (k === KIND_ADD) {
        this.data.bytes(target.subarray(from[i], from[i] + n));
        if (this.heldType === COPY && this.heldSize === 4 && n === 1 && COPY_ADD[this.heldMode] >= 0) {
          this.inst.byte(COPY_ADD[this.heldMode]);
          this.heldType = NOOP;
        } else {
          this.flushHeld();
          this.hold(ADD, n, 0);
        }
      } else if (k === KIND_RUN) {
        this.data.byte(target[from[i]]);
        this.flushHeld();
        this.single(RUN, n, 0);
      } else {
        const address = k === KIND_COPY_SOURCE ? from[i] - segmentStart : segmentLength + from[i];
        const mode = this.cache.encode(address, here);
        if (this.cache.encodedIsByte) this.addr.byte(this.cache.encodedValue);
        else this.addr.varint(this.cache.encodedValue);
        const pair =
          this.heldType === ADD && this.heldSize >= 1 && this.heldSize <= 4 && n >= 4 && n <= 6
            ? ADD_COPY[(this.heldSize * 7 + n) * 9 + mode]
            : -1;
        if (pair >= 0) {
          this.inst.byte(pair);
          this.heldType = NOOP;
        } else {
          this.flushHeld();
          this.hold(COPY, n, mode);
        }
      }
      here += n;
    }
    this.flushHeld();

    const dataLength = this.data.pos;
    const instLength = this.inst.pos;
    const addrLength = this.addr.pos;
    const deltaLength =
      varintLength(targetLength) +
      1 +
      varintLength(dataLength) +
      varintLength(instLength) +
      varintLength(addrLength) +
      (checksum >= 0 ? 4 : 0) +
      dataLength +
      instLength +
      addrLength;
    const headerMax = 1 + 10 + 10 + 10;
    const out = new Uint8Array(headerMax + deltaLength);
    let p = 0;
    out[p++] = (hasSource ? VCD_SOURCE : 0) | (checksum >= 0 ? VCD_ADLER32 : 0);
    if (hasSource) {
      p = writeVarint(out, p, segmentLength);
      p = writeVarint(out, p, segmentStart);
    }
    p = writeVarint(out, p, deltaLength);
    p = writeVarint(out, p, targetLength);
    out[p++] = 0; // Delta_Indicator: no secondary compression
    p = writeVarint(out, p, dataLength);
    p = writeVarint(out, p, instLength);
    p = writeVarint(out, p, addrLength);
    if (checksum >= 0) {
      out[p++] = checksum >>> 24;
      out[p++] = (checksum >>> 16) & 0xff;
      out[p++] = (checksum >>> 8) & 0xff;
      out[p++] = checksum & 0xff;
    }
    out.set(this.data.buf.subarray(0, dataLength), p);
    p += dataLength;
    out.set(this.inst.buf.subarray(0, instLength), p);
    p += instLength;
    out.set(this.addr.buf.subarray(0, addrLength), p);
    p += addrLength;
    return out.subarray(0, p);
  }

  private hold(type: number, size: number, mode: number): void {
    this.heldType = type;
    this.heldSize = size;
    this.heldMode = mode;
  }

  private flushHeld(): void {
    if (this.heldType === NOOP) return;
    this.single(this.heldType, this.heldSize, this.heldMode);
    this.heldType = NOOP;
  }

  private single(type: number, size: number, mode: number): void {
    const base = type * 9 * 256 + mode * 256;
    const op = size < 256 ? SINGLE[base + size] : -1;
    if (op >= 0 && size !== 0) {
      this.inst.byte(op);
    } else {
      this.inst.byte(SINGLE[base]);
      this.inst.varint(size);
    }
  }
}
