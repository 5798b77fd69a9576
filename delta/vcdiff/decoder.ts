/**
 * Streaming VCDIFF (RFC 3284) decoder with xdelta3's extensions (application header, Adler-32).
 *
 * The delta arrives as a stream and is buffered one window at a time; the source is read by
 * random access; the target is produced one window at a time. A window is decoded in parts of
 * about 1 MiB of target: a part's instructions are validated and decoded into a table that
 * records the source bytes they copy, those are read (long COPYs straight into the target,
 * short ones merged into few reads), then the table writes the part. Memory is one target
 * window (two with reuseBuffers when VCD_TARGET windows follow each other), a copy of its
 * sections, and one part's source bytes and tables, for any window size.
 *
 * The two inner loops, decoding instructions into the table and writing the part from it, are
 * WebAssembly (window.wat): V8 compiles a module before its first call, where the same loops in
 * TypeScript ran interpreted through a fresh process's first window.
 */
import { adler32 } from "./adler32.js";
import {
  Cursor,
  DEFAULT_CODE_TABLE,
  MAGIC,
  MAX_APP_HEADER,
  MAX_INTEGER,
  MAX_SECTION_SIZE,
  MAX_SOURCE_SEGMENT,
  MAX_WINDOW_SIZE,
  SECONDARY_COMPRESSORS,
  VCD_ADDRCOMP,
  VCD_ADLER32,
  VCD_APPHEADER,
  VCD_CODETABLE,
  VCD_DATACOMP,
  VCD_DECOMPRESS,
  VCD_INSTCOMP,
  VCD_SOURCE,
  VCD_TARGET,
  VcdiffError,
  XDELTA3_WINDOW_SIZE,
} from "./format.js";
import { BufferSource, type SourceReader } from "./source.js";
import { compileWasm, instantiateWasm, wasmGlobal, wasmMemory } from "./wasm.js";
import { WASM_BASE64 as WINDOW_WASM } from "./window-wasm.js";

export interface VcdiffHeader {
  appHeader?: Uint8Array;
}

export interface DecodeOptions {
  /** Absent: deltas with VCD_SOURCE windows are refused with a clear error. */
  source?: SourceReader;
  /** Default true: VCD_ADLER32 windows are verified. */
  verifyChecksum?: boolean;
  /** Default MAX_WINDOW_SIZE: larger target windows are refused before anything is allocated. */
  maxWindowSize?: number;
  /** How much earlier output VCD_TARGET windows may copy from; default TARGET_HISTORY. */
  targetHistory?: number;
  /**
   * Default false. When true, a yielded chunk is valid only until the decoder starts the next
   * window (it may be overwritten then, and after the decode ends another decode may take the
   * buffers over), so the decoder reuses its target buffer instead of copying each window into a
   * fresh one (much faster and leaner: fresh memory costs a page fault per 4 KiB, and dropped
   * windows wait for the GC). Set it when each chunk is consumed (written, hashed) before the
   * next is requested, as a plain `for await` loop does; not with `Readable.from`, which reads
   * ahead. VCD_TARGET windows can then reach only the previous window.
   */
  reuseBuffers?: boolean;
  onHeader?(header: VcdiffHeader): void;
}

/** VCD_TARGET windows may copy from this much earlier output; keeping more would pin memory for a rare feature. */
export const TARGET_HISTORY = XDELTA3_WINDOW_SIZE;
/** At most this many earlier windows are kept for VCD_TARGET, so tiny hostile windows cannot pile up. */
const MAX_HISTORY_WINDOWS = 4096;
/**
 * A part ends after this many decoded instructions even before STAGE_PART bytes of target:
 * the tables of one part's instructions and source ranges are sized by it (about 2 MB).
 */
export const MAX_PART_INSTRUCTIONS = 1 << 15;
/** Source reads in flight at once: parallel reads hide the latency of each (thread pool, network). */
const READ_CONCURRENCY = 16;
/**
 * Target bytes decoded per round of staged source reads: the staging area holds the short COPYs'
 * source ranges of one part, not of the whole window, so it stays a few MiB for any window size.
 */
const STAGE_PART = 1024 * 1024;
/**
 * Parts' worth of unneeded source bytes that may be read between a part's needed ranges to save
 * read calls (twice: while collecting and while merging), so the staging area stays at most
 * 1 + 2·SOURCE_GAP_PARTS parts.
 */
const SOURCE_GAP_PARTS = 1;
/** Source ranges closer than this are read in one call: fewer reads cost less than the bytes skipped. */
const SOURCE_READ_GAP = 64 * 1024;
/** Bytes of window header between the delta length and the sections, at most (four varints, a byte, a checksum). */
const MAX_WINDOW_HEADER = 4 * 10 + 1 + 4;
/** Spare room when the input buffer grows, so small chunks that follow fit without another copy. */
const INPUT_SLACK = 64 * 1024;
/**
 * Source COPYs at least this long are read straight into the target window; shorter ones are
 * staged with their neighbours (fewer reads) and copied from there.
 */
const DIRECT_READ = 64 * 1024;
/**
 * The staging area: one part's needed source bytes (a part ends once it stages STAGE_PART, so at
 * most that plus an opcode's two short COPYs) and the gaps read between them (SOURCE_GAP_PARTS parts, twice).
 */
const STAGING_SIZE = (1 + 2 * SOURCE_GAP_PARTS) * STAGE_PART + 2 * DIRECT_READ;
/**
 * A verified window is yielded in pieces of at most this: on the build machine, writing a file in
 * 1 MiB pieces cost a fifth of the kernel time of 8 MiB pieces, and a hash digests a piece in cache.
 */
export const OUTPUT_PIECE = 1024 * 1024;
/**
 * A finished decode's buffers are kept this long for the next one (a bundle's next layer, the
 * edge module's next bundle): touching fresh memory costs a page fault per 4 KiB, which on the
 * build machine cost more than decoding the bytes. Then they are dropped, so an idle device does
 * not hold a window's worth of memory.
 */
const SPARE_IDLE_MS = 10_000;

const WIN_INDICATOR_BITS = VCD_SOURCE | VCD_TARGET | VCD_ADLER32;

/** A buffer that is not zero-filled: its pages are touched only when written. */
function plainBytes(length: number): Uint8Array {
  const b = Buffer.allocUnsafe(length);
  return new Uint8Array(b.buffer, b.byteOffset, length);
}

const HDR_INDICATOR_BITS = VCD_DECOMPRESS | VCD_CODETABLE | VCD_APPHEADER;

/** The delta stream, buffered so that a whole window can be read from one contiguous array. */
class DeltaInput {
  buf: Uint8Array = new Uint8Array(0);
  start = 0;
  end = 0;
  /** Whether buf is ours to write into (chunks from the stream are adopted without copying, read-only). */
  private owned = false;
  /** Offset in the delta of buf[start]. */
  offset = 0;
  private ended = false;
  /** Live bytes the current ensure() waits for: the buffer grows to this at once. */
  private wanted = 0;
  private readonly it: AsyncIterator<Uint8Array>;

  constructor(delta: AsyncIterable<Uint8Array>) {
    this.it = delta[Symbol.asyncIterator]();
  }

  get available(): number {
    return this.end - this.start;
  }

  /** Offset in the delta of buf[0]: add an index into buf to get a delta offset. */
  get base(): number {
    return this.offset - this.start;
  }

  /** Pulls one more non-empty chunk; false at the end of the delta. */
  async more(): Promise<boolean> {
    // Live bytes of an adopted chunk are copied out first: the producer may reuse its buffer for
    // the next chunk (fileChunks does).
    if (!this.owned && this.available > 0) this.regrow(this.available);
    while (!this.ended) {
      const r = await this.it.next();
      if (r.done) {
        this.ended = true;
        return false;
      }
      const chunk = r.value;
      if (chunk.length > 0) {
        this.append(chunk);
        return true;
      }
    }
    return false;
  }

  /** Buffers at least n bytes; false if the delta ends first. */
  async ensure(n: number): Promise<boolean> {
    if (this.available >= n) return true;
    this.wanted = n;
    this.reserve(n);
    while (this.available < n) {
      if (!(await this.more())) return false;
    }
    return true;
  }

  consume(n: number): void {
    this.start += n;
    this.offset += n;
  }

  async close(): Promise<void> {
    if (!this.ended) {
      this.ended = true;
      await this.it.return?.();
    }
  }

  /** Makes room for n live bytes in an owned buffer, so the chunks that follow are appended without regrowing. */
  private reserve(n: number): void {
    if (this.owned && this.buf.length - this.start >= n) return;
    if (this.available === 0) return; // the next chunk is adopted as it is
    this.regrow(n);
  }

  private regrow(needed: number): void {
    // Double toward what the current window needs rather than grow chunk by chunk (that copies
    // quadratically), but never beyond twice the bytes that actually arrived.
    const capacity = Math.max(needed, Math.min(this.wanted, 2 * this.buf.length));
    const live = this.available;
    if (this.owned && this.buf.length >= capacity) {
      this.buf.copyWithin(0, this.start, this.end);
    } else {
      const next = plainBytes(capacity + INPUT_SLACK);
      next.set(this.buf.subarray(this.start, this.end));
      this.buf = next;
    }
    this.start = 0;
    this.end = live;
    this.owned = true;
  }

  private append(chunk: Uint8Array): void {
    const live = this.available;
    if (live === 0) {
      this.buf = chunk;
      this.start = 0;
      this.end = chunk.length;
      this.owned = false;
      return;
    }
    if (!this.owned || this.buf.length - this.end < chunk.length) this.regrow(live + chunk.length);
    this.buf.set(chunk, this.end);
    this.end += chunk.length;
  }

  /**
   * Runs a synchronous parser over the buffered bytes, pulling more input and retrying while it
   * runs out of bytes. The parser must have no side effects. Consumes what it read.
   */
  async parse<T>(parser: (c: Cursor) => T): Promise<T> {
    for (;;) {
      const c = new Cursor(this.buf, this.start, this.end, this.base);
      try {
        const value = parser(c);
        this.consume(c.pos - this.start);
        return value;
      } catch (err) {
        if (err instanceof VcdiffError && err.code === "TRUNCATED" && (await this.more())) continue;
        throw err;
      }
    }
  }
}

/** A window's header fields and where its sections start in the delta buffer. */
interface WindowHeader {
  /** Offset of the Win_Indicator in the delta, for error messages. */
  offset: number;
  indicator: number;
  segmentLength: number;
  segmentPosition: number;
  targetLength: number;
  dataLength: number;
  instLength: number;
  addrLength: number;
  /** Adler-32 of the target window, or -1 when the window has none. */
  checksum: number;
}

function parseFileHeader(c: Cursor): VcdiffHeader {
  for (let i = 0; i < MAGIC.length; i++) {
    const at = c.base + c.pos;
    const b = c.byte("the VCDIFF magic D6 C3 C4 00");
    if (b !== MAGIC[i]) {
      throw new VcdiffError(
        "BAD_MAGIC",
        `expected the VCDIFF magic D6 C3 C4 00, found byte 0x${hex(b)} at position ${i}; this is not a VCDIFF delta (or it is compressed: decompress it first)`,
        at,
      );
    }
  }
  const at = c.base + c.pos;
  const indicator = c.byte("the header indicator");
  if ((indicator & ~HDR_INDICATOR_BITS) !== 0) {
    throw new VcdiffError("CORRUPT", `header indicator 0x${hex(indicator)} has undefined bits set`, at);
  }
  if (indicator & VCD_DECOMPRESS) {
    const id = c.byte("the secondary compressor id");
    const name = SECONDARY_COMPRESSORS[id] ?? "unknown";
    throw new VcdiffError(
      "UNSUPPORTED",
      `the delta uses secondary compression (VCD_DECOMPRESS) with compressor id ${id} (${name}); re-encode it without secondary compression (xdelta3 -S none)`,
      at,
    );
  }
  if (indicator & VCD_CODETABLE) {
    throw new VcdiffError(
      "UNSUPPORTED",
      "the delta uses a custom code table (VCD_CODETABLE), which this decoder does not support; re-encode it with the default code table (xdelta3 and deltaship use it)",
      at,
    );
  }
  const header: VcdiffHeader = {};
  if (indicator & VCD_APPHEADER) {
    const lenAt = c.base + c.pos;
    const length = c.varint("the application header length");
    if (length > MAX_APP_HEADER) {
      throw new VcdiffError(
        "LIMIT",
        `application header of ${length} bytes is larger than the limit of ${MAX_APP_HEADER}`,
        lenAt,
      );
    }
    header.appHeader = c.bytes(length, "application header").slice();
  }
  return header;
}

function hex(b: number): string {
  return b.toString(16).padStart(2, "0");
}

/** Keeps the most recent target windows for VCD_TARGET windows, within a byte budget. */
class TargetHistory implements SourceReader {
  private readonly windows: Uint8Array[] = [];
  private readonly starts: number[] = [];
  private held = 0;
  /** Target bytes produced so far. */
  size = 0;

  constructor(
    private readonly budget: number,
    private readonly maxWindows = MAX_HISTORY_WINDOWS,
  ) {}

  add(window: Uint8Array): void {
    if (window.length === 0) return;
    this.windows.push(window);
    this.starts.push(this.size);
    this.size += window.length;
    this.held += window.length;
    while (
      this.windows.length > 1 &&
      (this.held - this.windows[0].length >= this.budget || this.windows.length > this.maxWindows)
    ) {
      this.held -= this.windows[0].length;
      this.windows.shift();
      this.starts.shift();
    }
  }

  async read(position: number, into: Uint8Array, offset: number, length: number): Promise<void> {
    this.readSync(position, into, offset, length);
  }

  readSync(position: number, into: Uint8Array, offset: number, length: number): void {
    const oldest = this.size - this.held;
    if (position < oldest) {
      throw new VcdiffError(
        "LIMIT",
        `a VCD_TARGET window copies from target offset ${position}, but only the last ${this.held} bytes of output (from ${oldest}) are kept; raise targetHistory`,
        -1,
      );
    }
    let i = this.windows.length - 1;
    while (this.starts[i] > position) i--;
    let done = 0;
    while (done < length) {
      const w = this.windows[i];
      const from = position + done - this.starts[i];
      const n = Math.min(length - done, w.length - from);
      into.set(w.subarray(from, from + n), offset + done);
      done += n;
      i++;
    }
  }
}

/** The exports of window.wat (see there): the decoder's inner loops. */
interface WindowCore {
  window(
    dataAt: number,
    instAt: number,
    addrAt: number,
    addrEnd: number,
    segmentLength: number,
    targetLength: number,
  ): void;
  scan(): number;
  execute(targetAt: number, to: number, ranges: number, stagedAt: number): void;
  ip: { value: number };
  dp: { value: number };
  ap: { value: number };
  tp: { value: number };
  rangeCount: { value: number };
  directCount: { value: number };
  errAt: { value: number };
  errA: { value: number };
  errB: { value: number };
  errC: { value: number };
}

/** Where window.wat keeps its tables and where the caller's region starts (byte indices). */
interface WindowLayout {
  codeTable: number;
  rangeStart: number;
  rangeEnd: number;
  rangeAt: number;
  directFrom: number;
  directTo: number;
  directLength: number;
  deltaAt: number;
}

/** window.wat compiled, and its layout; compiled on first use and shared by every decoder. */
let windowModule: { module: object; layout: WindowLayout } | undefined;

function compiledWindowModule(): { module: object; layout: WindowLayout } {
  if (windowModule !== undefined) return windowModule;
  const module = compileWasm(WINDOW_WASM);
  const exports = instantiateWasm(module, wasmMemory(1));
  const value = (name: string): number => wasmGlobal(exports, name);
  // The module's limits must be the ones this file sizes its buffers by.
  const shared: [string, number][] = [
    ["MAX_PART_INSTRUCTIONS", MAX_PART_INSTRUCTIONS],
    ["STAGE_PART", STAGE_PART],
    ["DIRECT_READ", DIRECT_READ],
    ["SOURCE_READ_GAP", SOURCE_READ_GAP],
    ["SOURCE_GAP_BUDGET", SOURCE_GAP_PARTS * STAGE_PART],
  ];
  for (const [name, expected] of shared) {
    if (value(name) !== expected) {
      throw new Error(
        `internal error: window.wat has ${name} ${value(name)}, decoder.ts ${expected}; run npm run build:wasm`,
      );
    }
  }
  const layout: WindowLayout = {
    codeTable: value("CODE_TABLE"),
    rangeStart: value("RANGE_START"),
    rangeEnd: value("RANGE_END"),
    rangeAt: value("RANGE_AT"),
    directFrom: value("DIRECT_FROM"),
    directTo: value("DIRECT_TO"),
    directLength: value("DIRECT_LENGTH"),
    deltaAt: value("DELTA_AT"),
  };
  windowModule = { module, layout };
  return windowModule;
}

/** The least room for a window's sections: a default 8 MiB window of ADDs fits without a new memory. */
const MIN_DELTA_ROOM = 2 * XDELTA3_WINDOW_SIZE;

/**
 * Per-stream decoding state reused from window to window: an instance of window.wat and its
 * memory, which holds the address caches, one part's decoded instructions and source ranges, the
 * window's sections and the target slots.
 *
 * A window is decoded one part at a time. A part is the instructions that start within
 * STAGE_PART bytes of target (or MAX_PART_INSTRUCTIONS of them): `scan` validates and decodes
 * them into a table and records the source bytes they copy, those are read (long COPYs straight
 * into the target, short ones merged into few reads of a staging area), and `execute` writes the
 * part's target bytes from the table. So memory holds one target window, its sections and one
 * part's source bytes and instructions, whatever the window's size.
 *
 * The memory is never grown: a window that needs more room gets a new memory and instance. Growing
 * would detach every view of the old one, and with reuseBuffers the window yielded last is such a
 * view, kept for VCD_TARGET windows.
 */
class WindowDecoder {
  private core: WindowCore | undefined;
  /** The whole memory, and views of the tables TypeScript reads. */
  private bytes: Uint8Array = new Uint8Array(0);
  private rangeStart: Float64Array = new Float64Array(0);
  private rangeEnd: Float64Array = new Float64Array(0);
  private rangeAt: Float64Array = new Float64Array(0);
  private directFrom: Float64Array = new Float64Array(0);
  private directTo: Float64Array = new Float64Array(0);
  private directLength: Float64Array = new Float64Array(0);
  private rangeCount = 0;
  private directCount = 0;
  /** Room for a window's sections, from the layout's deltaAt. */
  private deltaRoom = 0;
  /**
   * After the sections: one target slot (two with reuseBuffers: a VCD_TARGET window goes to the
   * slot the previous window is not in, so that window stays intact to copy from; any other window
   * reuses the previous window's slot, so the second slot is never touched unless needed), then
   * the staging area.
   */
  private workAt = 0;
  private slotSize = 0;
  private slot = 0;
  private stagedAt = 0;
  private readonly slots: number;
  /** Delta offset of memory index 0 in the current window: error offsets are this plus an index. */
  private deltaBase = 0;

  constructor(private readonly reuseBuffers: boolean) {
    this.slots = reuseBuffers ? 2 : 1;
  }

  async decode(
    input: DeltaInput,
    w: WindowHeader,
    source: SourceReader | undefined,
    history: TargetHistory,
  ): Promise<Uint8Array> {
    const sections = w.dataLength + w.instLength + w.addrLength;
    const core = this.prepare(sections, w.targetLength, (w.indicator & VCD_TARGET) !== 0);
    const bytes = this.bytes;
    const dataAt = compiledWindowModule().layout.deltaAt;
    bytes.set(input.buf.subarray(input.start, input.start + sections), dataAt);
    this.deltaBase = input.offset - dataAt;
    const instAt = dataAt + w.dataLength;
    const addrAt = instAt + w.instLength;
    const addrEnd = addrAt + w.addrLength;
    core.window(dataAt, instAt, addrAt, addrEnd, w.segmentLength, w.targetLength);
    const targetAt = this.workAt + this.slot * this.slotSize;
    const from = (w.indicator & VCD_SOURCE ? source : history)!;
    do {
      const partAt = core.tp.value;
      const status = core.scan();
      if (status !== 0) throw this.scanError(status, w);
      const staged = this.mergeRanges(core.rangeCount.value);
      this.directCount = core.directCount.value;
      if (staged > STAGING_SIZE) {
        throw new Error(
          `internal error: a part stages ${staged} bytes, more than the ${STAGING_SIZE} planned`,
        );
      }
      if (this.rangeCount + this.directCount > 0) await this.readSource(w, from, bytes, targetAt);
      core.execute(targetAt, partAt, this.rangeCount, this.stagedAt);
    } while (core.ip.value < addrAt);
    this.checkEnd(core, w, instAt, addrAt, addrEnd);
    const target = bytes.subarray(targetAt, targetAt + w.targetLength);
    // A copy, not Buffer#slice (a view).
    return this.reuseBuffers ? target : new Uint8Array(target);
  }

  /**
   * The instance for a window with `sections` bytes of sections and targetLength bytes of target;
   * picks the window's target slot. The target is not zero-filled: decoding writes every byte
   * before the window is yielded (an error discards it).
   */
  private prepare(sections: number, targetLength: number, readsPrevious: boolean): WindowCore {
    if (this.reuseBuffers && targetLength > 0 && readsPrevious) this.slot = 1 - this.slot;
    if (this.core !== undefined && sections <= this.deltaRoom && targetLength <= this.slotSize) {
      return this.core;
    }
    // Doubling, so windows that grow a little at a time do not leave a trail of dropped memories;
    // pages never touched cost no memory.
    if (sections > this.deltaRoom) this.deltaRoom = Math.max(sections, MIN_DELTA_ROOM, 2 * this.deltaRoom);
    if (targetLength > this.slotSize) {
      this.slotSize = Math.max(targetLength, XDELTA3_WINDOW_SIZE, 2 * this.slotSize);
    }
    const { module, layout } = compiledWindowModule();
    this.workAt = layout.deltaAt + this.deltaRoom;
    this.stagedAt = this.workAt + this.slots * this.slotSize;
    const memory = wasmMemory(this.stagedAt + STAGING_SIZE);
    const core = instantiateWasm(module, memory) as unknown as WindowCore;
    const buffer = memory.buffer;
    const table = (at: number): Float64Array => new Float64Array(buffer, at, MAX_PART_INSTRUCTIONS);
    this.bytes = new Uint8Array(buffer);
    this.rangeStart = table(layout.rangeStart);
    this.rangeEnd = table(layout.rangeEnd);
    this.rangeAt = table(layout.rangeAt);
    this.directFrom = table(layout.directFrom);
    this.directTo = table(layout.directTo);
    this.directLength = table(layout.directLength);
    const { type1, size1, mode1, type2, size2, mode2 } = DEFAULT_CODE_TABLE;
    // window.wat's code table: type, size and mode of each opcode's first instruction, then its second.
    const columns = [type1, size1, mode1, type2, size2, mode2];
    for (let i = 0; i < columns.length; i++) this.bytes.set(columns[i], layout.codeTable + i * 256);
    this.core = core;
    return core;
  }

  private corrupt(message: string, index: number): VcdiffError {
    return new VcdiffError("CORRUPT", message, this.deltaBase + index);
  }

  /** The error for a kind `scan` returned (window.wat's ERR_*), with the values it left. */
  private scanError(kind: number, w: WindowHeader): VcdiffError {
    const core = this.core!;
    const [a, b, c] = [core.errA.value, core.errB.value, core.errC.value];
    const messages: Record<number, string> = {
      1: "instruction section ends inside an instruction size",
      2: "instruction size does not fit in 53 bits",
      3: `instruction of ${a} bytes at target position ${b} overflows the ${w.targetLength}-byte target window`,
      4: `ADD of ${a} bytes needs more than the ${b} left in the data section`,
      5: "RUN needs a byte but the data section is used up",
      6: "address section ends inside a COPY address",
      7: "COPY address does not fit in 53 bits",
      8: `COPY address ${a} is outside the ${b} bytes available (mode ${c})`,
    };
    const message = messages[kind];
    if (message === undefined) throw new Error(`internal error: window.wat returned error kind ${kind}`);
    return this.corrupt(message, core.errAt.value);
  }

  /** After the last part: the instructions must have produced the window and used every section byte. */
  private checkEnd(
    core: WindowCore,
    w: WindowHeader,
    dataEnd: number,
    addrAt: number,
    addrEnd: number,
  ): void {
    const [tp, dp, ap] = [core.tp.value, core.dp.value, core.ap.value];
    if (tp !== w.targetLength) {
      throw this.corrupt(
        `the instructions produce ${tp} bytes but the window header says ${w.targetLength}`,
        addrAt,
      );
    }
    if (dp !== dataEnd) throw this.corrupt(`${dataEnd - dp} bytes of the data section are left unused`, dp);
    if (ap !== addrEnd)
      throw this.corrupt(`${addrEnd - ap} bytes of the address section are left unused`, ap);
  }

  /** Sorts and merges the part's `count` recorded ranges and places them one after another; returns their total length. */
  private mergeRanges(count: number): number {
    this.rangeCount = 0;
    if (count === 0) return 0;
    // The union of the ranges from their starts and ends sorted independently (native numeric
    // sorts, no comparator): a union segment closes where the count of open ranges drops to zero.
    // Outputs are written in place behind the two read positions.
    const starts = this.rangeStart;
    const ends = this.rangeEnd;
    starts.subarray(0, count).sort();
    ends.subarray(0, count).sort();
    let union = -1;
    let open = 0;
    for (let i = 0, j = 0; j < count; ) {
      if (i < count && starts[i] <= ends[j]) {
        if (open === 0) starts[++union] = starts[i];
        open++;
        i++;
      } else {
        open--;
        if (open === 0) ends[union] = ends[j];
        j++;
      }
    }
    // Merge overlapping ranges, and ranges separated by a small gap while the gaps stay within a
    // budget, so the staging area stays bounded (STAGING_SIZE).
    let gapBudget = SOURCE_GAP_PARTS * STAGE_PART;
    let m = 0;
    for (let i = 1; i <= union; i++) {
      const gap = starts[i] - ends[m];
      if (gap <= 0 || (gap <= SOURCE_READ_GAP && gap <= gapBudget)) {
        if (gap > 0) gapBudget -= gap;
        if (ends[i] > ends[m]) ends[m] = ends[i];
      } else {
        m++;
        starts[m] = starts[i];
        ends[m] = ends[i];
      }
    }
    this.rangeCount = m + 1;
    let total = 0;
    for (let i = 0; i <= m; i++) {
      this.rangeAt[i] = total;
      total += ends[i] - starts[i];
    }
    return total;
  }

  /**
   * Reads the part's merged ranges into the staging area and its long COPYs straight into the
   * target window: synchronously from a local source, else several reads at a time.
   */
  private async readSource(
    w: WindowHeader,
    source: SourceReader,
    work: Uint8Array,
    targetAt: number,
  ): Promise<void> {
    const ranges = this.rangeCount;
    const count = ranges + this.directCount;
    // Job i < ranges is a staged range, the others are long COPYs.
    const job = (i: number): [position: number, at: number, length: number] =>
      i < ranges
        ? [this.rangeStart[i], this.stagedAt + this.rangeAt[i], this.rangeEnd[i] - this.rangeStart[i]]
        : [this.directFrom[i - ranges], targetAt + this.directTo[i - ranges], this.directLength[i - ranges]];
    const readSync = source.readSync;
    // A source still arriving is read once the window's segment is there.
    if (source.whenReadable !== undefined) {
      try {
        await source.whenReadable(w.segmentPosition, w.segmentLength);
      } catch (err) {
        throw this.readError(w, 0, w.segmentLength, err);
      }
    }
    // A local source (readSync) is read synchronously: an async read costs a thread-pool round trip.
    if (readSync !== undefined) {
      for (let i = 0; i < count; i++) {
        const [position, at, length] = job(i);
        try {
          readSync.call(source, w.segmentPosition + position, work, at, length);
        } catch (err) {
          throw this.readError(w, position, length, err);
        }
      }
      return;
    }
    let next = 0;
    let failure: unknown;
    const reader = async (): Promise<void> => {
      while (next < count && failure === undefined) {
        const [position, at, length] = job(next++);
        try {
          await source.read(w.segmentPosition + position, work, at, length);
        } catch (err) {
          failure ??= this.readError(w, position, length, err);
        }
      }
    };
    await Promise.all(Array.from({ length: Math.min(READ_CONCURRENCY, count) }, reader));
    if (failure !== undefined) throw failure;
  }

  private readError(w: WindowHeader, segmentAddress: number, length: number, err: unknown): VcdiffError {
    const position = w.segmentPosition + segmentAddress;
    const what = w.indicator & VCD_SOURCE ? "source" : "earlier target output";
    const message = err instanceof Error ? err.message : String(err);
    const code = err instanceof VcdiffError && err.code === "LIMIT" ? "LIMIT" : "SOURCE";
    return new VcdiffError(
      code,
      `reading ${length} bytes at offset ${position} of the ${what} failed: ${message}`,
      w.offset,
    );
  }
}

function parseWindowHeader(c: Cursor, maxWindowSize: number): WindowHeader {
  const offset = c.base + c.pos;
  const indicator = c.byte("a window indicator");
  if ((indicator & ~WIN_INDICATOR_BITS) !== 0) {
    throw new VcdiffError("CORRUPT", `window indicator 0x${hex(indicator)} has undefined bits set`, offset);
  }
  if ((indicator & VCD_SOURCE) !== 0 && (indicator & VCD_TARGET) !== 0) {
    throw new VcdiffError("CORRUPT", "window indicator has both VCD_SOURCE and VCD_TARGET set", offset);
  }
  let segmentLength = 0;
  let segmentPosition = 0;
  if (indicator & (VCD_SOURCE | VCD_TARGET)) {
    const at = c.base + c.pos;
    segmentLength = c.varint("the source segment length");
    segmentPosition = c.varint("the source segment position");
    if (segmentLength > MAX_SOURCE_SEGMENT || segmentPosition + segmentLength > MAX_INTEGER) {
      throw new VcdiffError(
        "LIMIT",
        `source segment of ${segmentLength} bytes at ${segmentPosition} exceeds the limit of ${MAX_SOURCE_SEGMENT} bytes`,
        at,
      );
    }
  }
  const deltaAt = c.base + c.pos;
  const deltaLength = c.varint("the length of the delta encoding");
  const tailStart = c.pos;
  const targetAt = c.base + c.pos;
  const targetLength = c.varint("the target window length");
  if (targetLength > maxWindowSize) {
    throw new VcdiffError(
      "LIMIT",
      `target window of ${targetLength} bytes is larger than the limit of ${maxWindowSize}; raise maxWindowSize if you trust this delta`,
      targetAt,
    );
  }
  const deltaIndAt = c.base + c.pos;
  const deltaIndicator = c.byte("the delta indicator");
  if (deltaIndicator !== 0) {
    const known = VCD_DATACOMP | VCD_INSTCOMP | VCD_ADDRCOMP;
    throw new VcdiffError(
      (deltaIndicator & ~known) === 0 ? "UNSUPPORTED" : "CORRUPT",
      (deltaIndicator & ~known) === 0
        ? `delta indicator 0x${hex(deltaIndicator)} says sections are secondary-compressed, which this decoder does not support; re-encode with xdelta3 -S none`
        : `delta indicator 0x${hex(deltaIndicator)} has undefined bits set`,
      deltaIndAt,
    );
  }
  const dataAt = c.base + c.pos;
  const dataLength = c.varint("the data section length");
  if (dataLength > targetLength) {
    throw new VcdiffError(
      "CORRUPT",
      `data section of ${dataLength} bytes is larger than the ${targetLength}-byte target window it builds`,
      dataAt,
    );
  }
  const instAt = c.base + c.pos;
  const instLength = c.varint("the instruction section length");
  if (instLength > MAX_SECTION_SIZE) {
    throw new VcdiffError(
      "LIMIT",
      `instruction section of ${instLength} bytes is larger than the limit of ${MAX_SECTION_SIZE}`,
      instAt,
    );
  }
  const addrAt = c.base + c.pos;
  const addrLength = c.varint("the address section length");
  if (addrLength > MAX_SECTION_SIZE) {
    throw new VcdiffError(
      "LIMIT",
      `address section of ${addrLength} bytes is larger than the limit of ${MAX_SECTION_SIZE}`,
      addrAt,
    );
  }
  let checksum = -1;
  if (indicator & VCD_ADLER32) {
    const b = c.bytes(4, "the Adler-32 checksum");
    checksum = ((b[0] << 24) | (b[1] << 16) | (b[2] << 8) | b[3]) >>> 0;
  }
  const headerTail = c.pos - tailStart;
  if (headerTail > MAX_WINDOW_HEADER || deltaLength !== headerTail + dataLength + instLength + addrLength) {
    throw new VcdiffError(
      "CORRUPT",
      `delta encoding length is ${deltaLength}, but the window header and sections add up to ${headerTail + dataLength + instLength + addrLength}`,
      deltaAt,
    );
  }
  return {
    offset,
    indicator,
    segmentLength,
    segmentPosition,
    targetLength,
    dataLength,
    instLength,
    addrLength,
    checksum,
  };
}

/**
 * Decodes a VCDIFF delta stream, yielding the target one window at a time (in pieces of at most
 * OUTPUT_PIECE, once the whole window is decoded and its checksum verified). Every malformed,
 * truncated or unsupported input ends in a VcdiffError.
 */
export async function* decode(
  delta: AsyncIterable<Uint8Array>,
  options: DecodeOptions = {},
): AsyncGenerator<Uint8Array> {
  const input = new DeltaInput(delta);
  const source = options.source;
  const verifyChecksum = options.verifyChecksum !== false;
  const maxWindowSize = options.maxWindowSize ?? MAX_WINDOW_SIZE;
  const reuseBuffers = options.reuseBuffers === true;
  // With reused buffers only the previous window is intact; older ones are being overwritten.
  const history = new TargetHistory(
    options.targetHistory ?? TARGET_HISTORY,
    reuseBuffers ? 1 : MAX_HISTORY_WINDOWS,
  );
  const windows = reuseBuffers ? takeSpareDecoder() : new WindowDecoder(false);
  try {
    const header = await input.parse(parseFileHeader);
    options.onHeader?.(header);
    let index = 0;
    while (await input.ensure(1)) {
      const w = await input.parse((c) => parseWindowHeader(c, maxWindowSize));
      checkSegment(w, index, source, history.size);
      const sections = w.dataLength + w.instLength + w.addrLength;
      if (!(await input.ensure(sections))) {
        throw new VcdiffError(
          "TRUNCATED",
          `window ${index} needs ${sections} bytes of sections, found ${input.available}`,
          input.offset + input.available,
        );
      }
      const target = await windows.decode(input, w, source, history);
      if (verifyChecksum && w.checksum !== -1) {
        const actual = adler32(target);
        if (actual !== w.checksum) {
          throw new VcdiffError(
            "CHECKSUM",
            `window ${index} decodes to Adler-32 ${actual.toString(16).padStart(8, "0")}, the delta says ${w.checksum.toString(16).padStart(8, "0")}; the source is probably not the one the delta was made from`,
            w.offset,
          );
        }
      }
      input.consume(sections);
      history.add(target);
      index++;
      for (let at = 0; at < target.length; at += OUTPUT_PIECE) {
        yield target.subarray(at, Math.min(at + OUTPUT_PIECE, target.length));
      }
    }
  } finally {
    if (reuseBuffers) keepSpareDecoder(windows);
    await input.close();
  }
}

/** One finished reuseBuffers decoder, its tables and work buffer already touched; see SPARE_IDLE_MS. */
let spareDecoder: WindowDecoder | undefined;
let spareTimer: ReturnType<typeof setTimeout> | undefined;

/** The kept decoder if there is one (a decode that runs at the same time as another gets a new one). */
function takeSpareDecoder(): WindowDecoder {
  const kept = spareDecoder;
  spareDecoder = undefined;
  return kept ?? new WindowDecoder(true);
}

/**
 * Drops the buffers a finished decode kept for the next one now rather than after SPARE_IDLE_MS
 * (for a caller that knows no decode follows soon, and for benchmarks of fresh memory).
 */
export function releaseDecoderMemory(): void {
  spareDecoder = undefined;
  if (spareTimer !== undefined) clearTimeout(spareTimer);
  spareTimer = undefined;
}

function keepSpareDecoder(decoder: WindowDecoder): void {
  spareDecoder = decoder;
  if (spareTimer !== undefined) clearTimeout(spareTimer);
  spareTimer = setTimeout(() => {
    spareDecoder = undefined;
    spareTimer = undefined;
  }, SPARE_IDLE_MS);
  // The timer only frees memory: it must not keep a process alive that is otherwise done.
  spareTimer.unref();
}

function checkSegment(
  w: WindowHeader,
  index: number,
  source: SourceReader | undefined,
  produced: number,
): void {
  const end = w.segmentPosition + w.segmentLength;
  if (w.indicator & VCD_SOURCE) {
    if (source === undefined) {
      throw new VcdiffError(
        "SOURCE",
        `window ${index} copies from a source file (VCD_SOURCE), but no source was given; pass the source the delta was made from`,
        w.offset,
      );
    }
    if (end > source.size) {
      throw new VcdiffError(
        "SOURCE",
        `window ${index} needs source bytes ${w.segmentPosition}..${end}, but the source has ${source.size} bytes; is it the source the delta was made from?`,
        w.offset,
      );
    }
  } else if (w.indicator & VCD_TARGET) {
    if (end > produced) {
      throw new VcdiffError(
        "CORRUPT",
        `window ${index} copies target bytes ${w.segmentPosition}..${end} (VCD_TARGET), but only ${produced} have been produced`,
        w.offset,
      );
    }
  }
}

async function* once(bytes: Uint8Array): AsyncGenerator<Uint8Array> {
  yield bytes;
}

/** Decodes a delta held in memory against an optional source held in memory. */
export async function decodeBuffer(
  delta: Uint8Array,
  source?: Uint8Array,
  options: Omit<DecodeOptions, "source"> = {},
): Promise<Uint8Array> {
  const parts: Uint8Array[] = [];
  let total = 0;
  const src = source === undefined ? undefined : new BufferSource(source);
  for await (const part of decode(once(delta), { ...options, source: src })) {
    parts.push(part);
    total += part.length;
  }
  if (parts.length === 1) return parts[0];
  const out = new Uint8Array(total);
  let at = 0;
  for (const part of parts) {
    out.set(part, at);
    at += part.length;
  }
  return out;
}
