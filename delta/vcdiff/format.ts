/**
 * VCDIFF (RFC 3284) wire format: magic, indicator bits, the default code table, integers,
 * the address caches, limits and the typed error.
 * Nothing here reads or writes streams; the decoder and the encoder build on it.
 */

export const MAGIC = Uint8Array.of(0xd6, 0xc3, 0xc4, 0x00);

// Hdr_Indicator bits.
export const VCD_DECOMPRESS = 0x01;
export const VCD_CODETABLE = 0x02;
/** xdelta3 extension: an application header (varint length + bytes) follows. */
export const VCD_APPHEADER = 0x04;

// Win_Indicator bits.
export const VCD_SOURCE = 0x01;
export const VCD_TARGET = 0x02;
/** xdelta3 extension: 4 big-endian bytes of Adler-32 of the target window follow the section lengths. */
export const VCD_ADLER32 = 0x04;

// Delta_Indicator bits (secondary compression of each section).
export const VCD_DATACOMP = 0x01;
export const VCD_INSTCOMP = 0x02;
export const VCD_ADDRCOMP = 0x04;

// Instruction types.
export const NOOP = 0;
export const ADD = 1;
export const RUN = 2;
export const COPY = 3;

/** Address cache sizes of the default code table. */
export const NEAR_SLOTS = 4;
export const SAME_SLOTS = 3;
export const MODE_SELF = 0;
export const MODE_HERE = 1;
export const FIRST_NEAR_MODE = 2;
export const FIRST_SAME_MODE = FIRST_NEAR_MODE + NEAR_SLOTS;
export const MODE_COUNT = FIRST_SAME_MODE + SAME_SLOTS;

/** Secondary compressor ids written by xdelta3, for error messages. */
export const SECONDARY_COMPRESSORS: Readonly<Record<number, string>> = {
  1: "DJW",
  2: "LZMA",
  16: "FGK",
};

// Limits that guard the decoder against hostile input.
/** A target window larger than this is refused: the decoder holds one window in memory. */
export const MAX_WINDOW_SIZE = 64 * 1024 * 1024;
/** A section larger than this is refused: sections are buffered whole. */
export const MAX_SECTION_SIZE = 2 * MAX_WINDOW_SIZE + 1024;
/** A source segment larger than this is refused: the decoder reads it by random access, but caps the span. */
export const MAX_SOURCE_SEGMENT = 2 ** 40;
/** Integers above this lose precision in a JavaScript number. */
export const MAX_INTEGER = Number.MAX_SAFE_INTEGER;
/** An application header larger than this is refused. */
export const MAX_APP_HEADER = 64 * 1024;

/**
 * Default target window size for the encoder. A decoder holds one window, and fresh memory costs a
 * page fault per 4 KiB. On the Debian libc pair (13 MB) a decode with fresh buffers took 58–65 ms
 * at 2 MiB against 95–108 at 8 MiB (52–56 at 1 MiB), for a 0.0004% larger delta (529,623 bytes
 * against 529,621); the node binary's grew 0.22% and the node tar's shrank 0.06%. At 1 MiB an
 * edited 1.3 MB binary lost its repeats across the window boundary (7,457 bytes against xdelta3's
 * 5,043). See docs/vcdiff.md.
 */
export const DEFAULT_WINDOW_SIZE = 2 * 1024 * 1024;
/** xdelta3's default window (-W), the size its deltas' windows usually have. */
export const XDELTA3_WINDOW_SIZE = 8 * 1024 * 1024;

export type VcdiffErrorCode =
  | "BAD_MAGIC"
  | "TRUNCATED"
  | "UNSUPPORTED"
  | "LIMIT"
  | "CORRUPT"
  | "CHECKSUM"
  | "SOURCE";

/** Every malformed, truncated or unsupported input ends in this error, with the byte offset in the delta. */
export class VcdiffError extends Error {
  readonly code: VcdiffErrorCode;
  readonly offset: number;
  constructor(code: VcdiffErrorCode, message: string, offset: number) {
    super(`VCDIFF ${code.toLowerCase()} at byte ${offset}: ${message}`);
    this.name = "VcdiffError";
    this.code = code;
    this.offset = offset;
  }
}

/** One entry of a code table: up to two instructions. */
export interface CodeTable {
  readonly type1: Uint8Array;
  readonly size1: Uint8Array;
  readonly mode1: Uint8Array;
  readonly type2: Uint8Array;
  readonly size2: Uint8Array;
  readonly mode2: Uint8Array;
}

function buildDefaultCodeTable(): CodeTable {
  const t: CodeTable = {
    type1: new Uint8Array(256),
    size1: new Uint8Array(256),
    mode1: new Uint8Array(256),
    type2: new Uint8Array(256),
    size2: new Uint8Array(256),
    mode2: new Uint8Array(256),
  };
  let i = 0;
  t.type1[i++] = RUN; // size 0
  for (let size = 0; size <= 17; size++) {
    t.type1[i] = ADD;
    t.size1[i++] = size;
  }
  for (let mode = 0; mode < MODE_COUNT; mode++) {
    t.type1[i] = COPY;
    t.mode1[i++] = mode; // size 0
    for (let size = 4; size <= 18; size++) {
      t.type1[i] = COPY;
      t.size1[i] = size;
      t.mode1[i++] = mode;
    }
  }
  for (let mode = 0; mode < MODE_COUNT; mode++) {
    const maxCopy = mode < 6 ? 6 : 4;
    for (let add = 1; add <= 4; add++) {
      for (let copy = 4; copy <= maxCopy; copy++) {
        t.type1[i] = ADD;
        t.size1[i] = add;
        t.type2[i] = COPY;
        t.size2[i] = copy;
        t.mode2[i++] = mode;
      }
    }
  }
  for (let mode = 0; mode < MODE_COUNT; mode++) {
    t.type1[i] = COPY;
    t.size1[i] = 4;
    t.mode1[i] = mode;
    t.type2[i] = ADD;
    t.size2[i++] = 1;
  }
  if (i !== 256) throw new Error(`default code table has ${i} entries, expected 256`);
  return t;
}

export const DEFAULT_CODE_TABLE: CodeTable = buildDefaultCodeTable();

/** Bytes needed to write n as a VCDIFF integer (base 128, big-endian, high bit = more). */
export function varintLength(n: number): number {
  let len = 1;
  while (n >= 128) {
    n = Math.floor(n / 128);
    len++;
  }
  return len;
}

/** Writes n at out[pos..] and returns the position after it. out must have room (see varintLength). */
export function writeVarint(out: Uint8Array, pos: number, n: number): number {
  const len = varintLength(n);
  let p = pos + len - 1;
  out[p] = n % 128;
  n = Math.floor(n / 128);
  while (p > pos) {
    p--;
    out[p] = (n % 128) | 0x80;
    n = Math.floor(n / 128);
  }
  return pos + len;
}

/**
 * Reads a VCDIFF integer from buf at pos. Returns the value; the new position is left in cursor.pos.
 * `base` is the offset of buf[0] in the whole delta, for error messages.
 */
export class Cursor {
  pos: number;
  constructor(
    readonly buf: Uint8Array,
    pos = 0,
    readonly end = buf.length,
    readonly base = 0,
  ) {
    this.pos = pos;
  }

  get remaining(): number {
    return this.end - this.pos;
  }

  byte(what: string): number {
    if (this.pos >= this.end) {
      throw new VcdiffError("TRUNCATED", `expected ${what}, found end of data`, this.base + this.pos);
    }
    return this.buf[this.pos++];
  }

  varint(what: string): number {
    const start = this.pos;
    let n = 0;
    for (;;) {
      if (this.pos >= this.end) {
        throw new VcdiffError("TRUNCATED", `expected ${what}, found end of data`, this.base + start);
      }
      const b = this.buf[this.pos++];
      n = n * 128 + (b & 0x7f);
      if (n > MAX_INTEGER) {
        throw new VcdiffError("LIMIT", `${what} does not fit in 53 bits`, this.base + start);
      }
      if (b < 0x80) return n;
    }
  }

  bytes(length: number, what: string): Uint8Array {
    if (length > this.remaining) {
      throw new VcdiffError(
        "TRUNCATED",
        `expected ${length} bytes of ${what}, found ${this.remaining}`,
        this.base + this.pos,
      );
    }
    const out = this.buf.subarray(this.pos, this.pos + length);
    this.pos += length;
    return out;
  }
}

/**
 * The near and same address caches (RFC 3284 section 5.1). Reset at the start of every window.
 */
export class AddressCache {
  readonly near = new Float64Array(NEAR_SLOTS);
  readonly same = new Float64Array(SAME_SLOTS * 256);
  nextSlot = 0;

  reset(): void {
    this.near.fill(0);
    this.same.fill(0);
    this.nextSlot = 0;
  }

  update(addr: number): void {
    this.near[this.nextSlot] = addr;
    this.nextSlot = (this.nextSlot + 1) % NEAR_SLOTS;
    this.same[addr % (SAME_SLOTS * 256)] = addr;
  }

  /** Decodes one address of the given mode; `here` is the current position in source segment ‖ target. */
  decode(mode: number, here: number, addrs: Cursor): number {
    const at = addrs.base + addrs.pos;
    let addr: number;
    if (mode === MODE_SELF) {
      addr = addrs.varint("COPY address");
    } else if (mode === MODE_HERE) {
      addr = here - addrs.varint("COPY address");
    } else if (mode < FIRST_SAME_MODE) {
      addr = this.near[mode - FIRST_NEAR_MODE] + addrs.varint("COPY address");
    } else if (mode < MODE_COUNT) {
      addr = this.same[(mode - FIRST_SAME_MODE) * 256 + addrs.byte("COPY address")];
    } else {
      throw new VcdiffError("CORRUPT", `address mode ${mode} is not defined`, at);
    }
    if (addr < 0 || addr >= here) {
      throw new VcdiffError("CORRUPT", `COPY address ${addr} is outside 0..${here - 1}`, at);
    }
    this.update(addr);
    return addr;
  }

  /**
   * Chooses the cheapest mode for addr and updates the cache. Returns the mode; the value to
   * write (a varint, or for same modes a single byte) is left in `encoded` and `encodedIsByte`.
   */
  encodedValue = 0;
  encodedIsByte = false;
  encode(addr: number, here: number): number {
    let bestMode = MODE_SELF;
    let bestValue = addr;
    let bestLen = varintLength(addr);
    const hereDist = here - addr;
    const hereLen = varintLength(hereDist);
    if (hereLen < bestLen) {
      bestMode = MODE_HERE;
      bestValue = hereDist;
      bestLen = hereLen;
    }
    for (let i = 0; i < NEAR_SLOTS; i++) {
      const d = addr - this.near[i];
      if (d >= 0) {
        const len = varintLength(d);
        if (len < bestLen) {
          bestMode = FIRST_NEAR_MODE + i;
          bestValue = d;
          bestLen = len;
        }
      }
    }
    let isByte = false;
    const slot = addr % (SAME_SLOTS * 256);
    if (this.same[slot] === addr && bestLen > 1) {
      bestMode = FIRST_SAME_MODE + Math.floor(slot / 256);
      bestValue = slot % 256;
      isByte = true;
    }
    this.encodedValue = bestValue;
    this.encodedIsByte = isByte;
    this.update(addr);
    return bestMode;
  }
}
