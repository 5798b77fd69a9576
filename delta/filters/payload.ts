/**
 * The `zstd-x86` payload: a layer tar whose x86 executables went through the x86 branch filter
 * (filters/x86.ts) before zstd. Only the encoder can tell code from data, so the payload names
 * the filtered ranges:
 *
 *   payload := varint rangeCount, range × rangeCount, zstd frame of the filtered tar
 *   range   := varint (offset − end of the previous range), varint length
 *
 * Varints are unsigned LEB128. Ranges are in order, do not overlap, and lie inside the tar; each
 * is filtered on its own, with positions counted from the range's first byte (a file's content).
 */
import { open } from "node:fs/promises";
import { MAX_VARINT_BYTES, VarintReader, VarintWriter } from "../varint.js";
import { mergeRanges, type SourceRange } from "../vcdiff/matcher.js";
import { X86Stream } from "./x86.js";

/** Ranges a payload may name: the table is held in memory (two numbers each). */
export const MAX_FILTER_RANGES = 1 << 18;
/** The table's largest encoded size, so a reader knows how much to read before parsing it. */
export const MAX_FILTER_TABLE_SIZE = MAX_VARINT_BYTES * (1 + 2 * MAX_FILTER_RANGES);
/** Files smaller than this are not worth a range (a range costs a few bytes, small code gains little). */
export const MIN_FILTERED_FILE = 4096;

export interface FilterRange {
  readonly offset: number;
  readonly length: number;
}

export class FilterTableError extends Error {
  override readonly name = "FilterTableError";
  readonly offset: number;
  constructor(message: string, offset: number) {
    super(`zstd-x86 filter table at byte ${offset}: ${message}`);
    this.offset = offset;
  }
}

/** True when `head` (a file's first bytes) starts an x86 or x86-64 ELF file. */
export function isX86Elf(head: Uint8Array): boolean {
  if (head.length < 20) return false;
  if (head[0] !== 0x7f || head[1] !== 0x45 || head[2] !== 0x4c || head[3] !== 0x46) return false;
  // e_machine, little-endian (EI_DATA 1): 0x03 i386, 0x3E x86-64.
  return head[5] === 1 && head[19] === 0 && (head[18] === 0x03 || head[18] === 0x3e);
}

/**
 * A table of ranges in order, apart and not empty, each with `extra(range)` more varints:
 *
 *   table := varint count, (varint (offset − end of the previous range), varint length, extra…) × count
 *
 * The x86 filter table has no extra fields; the gzip table (gzip.ts) has three.
 */
/** Bytes of a file's start read to find its ELF program headers (they follow the 64-byte ELF header). */
export const ELF_HEAD = 4096;

/**
 * The ranges of an x86 ELF file (`head`: its first bytes, `size`: its length) that hold code: its
 * executable loadable segments (PT_LOAD with PF_X), in order, merged and within the file. Code is
 * what the filter is for; run over data (the Node.js executable's 46 MB of read-only data: ICU,
 * the snapshot, its JavaScript sources) it only stirs bytes that happen to be E8 or E9, and on that
 * executable filtering only its code segments saved 96.8 KB of Brotli (quality 9, 16 MiB window:
 * 27,655,732 bytes against 27,752,512). The whole file when the program headers lie beyond `head`
 * or are malformed; none when the file has no executable segment.
 */
export function executableRanges(head: Uint8Array, size: number): FilterRange[] {
  const whole = [{ offset: 0, length: size }];
  if (head.length < 52) return whole;
  const view = new DataView(head.buffer, head.byteOffset, head.byteLength);
  const wide = head[4] === 2; // EI_CLASS: 1 ELF32, 2 ELF64
  const phoff = wide ? Number(view.getBigUint64(0x20, true)) : view.getUint32(0x1c, true);
  const phentsize = view.getUint16(wide ? 0x36 : 0x2a, true);
  const phnum = view.getUint16(wide ? 0x38 : 0x2c, true);
  if (phentsize < (wide ? 56 : 32) || phoff + phentsize * phnum > head.length) return whole;
  const segments: SourceRange[] = [];
  for (let i = 0; i < phnum; i++) {
    const at = phoff + i * phentsize;
    const PT_LOAD = 1;
    const PF_X = 1;
    const flags = view.getUint32(wide ? at + 4 : at + 24, true);
    if (view.getUint32(at, true) !== PT_LOAD || (flags & PF_X) === 0) continue;
    const offset = wide ? Number(view.getBigUint64(at + 8, true)) : view.getUint32(at + 4, true);
    const filesz = wide ? Number(view.getBigUint64(at + 32, true)) : view.getUint32(at + 16, true);
    segments.push({ start: offset, end: Math.min(size, offset + filesz) });
  }
  return mergeRanges(segments).map((r) => ({ offset: r.start, length: r.end - r.start }));
}

export function encodeRangeTable<T extends FilterRange>(
  ranges: readonly T[],
  what: string,
  max: number,
  extra: (range: T) => readonly number[] = () => [],
): Uint8Array {
  if (ranges.length > max) throw new RangeError(`${ranges.length} ${what}, at most ${max}`);
  const out = new VarintWriter();
  out.write(ranges.length);
  let end = 0;
  for (const r of ranges) {
    if (r.offset < end || r.length <= 0)
      throw new RangeError(`${what} must be in order, apart and not empty`);
    out.write(r.offset - end);
    out.write(r.length);
    for (const value of extra(r)) out.write(value);
    end = r.offset + r.length;
  }
  return out.result.slice();
}

/** How parseRangeTable reads one kind of table. */
export interface RangeTableShape<T> {
  /** The table's name in messages ("filter table"), an entry's ("range"), and what a count counts ("ranges"). */
  readonly table: string;
  readonly entry: string;
  readonly entries: string;
  readonly max: number;
  /** Names of the extra varints of each entry, in order. */
  readonly fields: readonly string[];
  readonly error: (message: string, offset: number) => Error;
  /** The entry at `offset` with `length` and the extra fields; throws (with `error`, at `at`) if it is out of bounds. */
  readonly make: (i: number, offset: number, length: number, fields: readonly number[], at: number) => T;
}

/** Parses a range table at the start of `bytes` (which may hold more than the table). */
export function parseRangeTable<T extends FilterRange>(
  bytes: Uint8Array,
  shape: RangeTableShape<T>,
): { entries: T[]; tableLength: number } {
  const reader = new VarintReader(bytes, 0, shape.table, (_, message, offset) =>
    shape.error(message, offset),
  );
  const count = reader.read(`the ${shape.entry} count`);
  if (count > shape.max) throw shape.error(`${count} ${shape.entries}, at most ${shape.max} are accepted`, 0);
  const entries: T[] = [];
  let end = 0;
  for (let i = 0; i < count; i++) {
    const at = reader.position;
    const offset = end + reader.read(`${shape.entry} ${i}'s offset`);
    const length = reader.read(`${shape.entry} ${i}'s ${shape.fields.length > 0 ? "output " : ""}length`);
    const fields = shape.fields.map((field) => reader.read(`${shape.entry} ${i}'s ${field}`));
    entries.push(shape.make(i, offset, length, fields, at));
    end = offset + length;
  }
  return { entries, tableLength: reader.position };
}

export function encodeFilterTable(ranges: readonly FilterRange[]): Uint8Array {
  return encodeRangeTable(ranges, "filter ranges", MAX_FILTER_RANGES);
}

/**
 * Parses the table at the start of `bytes` (which may hold more than the table). `outputSize` is
 * the tar's size: every range must lie inside it.
 */
export function parseFilterTable(
  bytes: Uint8Array,
  outputSize: number,
): { ranges: FilterRange[]; tableLength: number } {
  const { entries, tableLength } = parseRangeTable<FilterRange>(bytes, {
    table: "filter table",
    entry: "range",
    entries: "ranges",
    max: MAX_FILTER_RANGES,
    fields: [],
    error: (message, offset) => new FilterTableError(message, offset),
    make: (i, offset, length, _, at) => {
      if (length === 0 || offset + length > outputSize) {
        throw new FilterTableError(
          `range ${i} (${length} bytes at ${offset}) is empty or ends past the layer's ${outputSize} bytes`,
          at,
        );
      }
      return { offset, length };
    },
  });
  return { ranges: entries, tableLength };
}

/**
 * Runs the x86 filter over the given ranges of a byte stream (chunks are rewritten in place, so
 * they must be the caller's to change). Output chunks may split differently from input chunks.
 */
export async function* filterRanges(
  chunks: AsyncIterable<Uint8Array>,
  ranges: readonly FilterRange[],
  direction: "encode" | "decode",
): AsyncGenerator<Uint8Array> {
  let active: X86Stream | undefined;
  for await (const part of splitAtRanges(chunks, ranges)) {
    if (part.range < 0) {
      yield part.bytes;
      continue;
    }
    active ??= new X86Stream(direction, ranges[part.range]!.length);
    const done = active.push(part.bytes);
    if (done.length > 0) yield done;
    if (part.last) active = undefined;
  }
}

/** A piece of a stream split at ranges: plain bytes (`range` −1) or bytes of range `range`. */
export interface RangePart {
  readonly bytes: Uint8Array;
  readonly range: number;
  /** Whether these are the range's last bytes. */
  readonly last: boolean;
}

/**
 * Splits a byte stream at the given ranges (in order, apart): each part is a subarray of an input
 * chunk, so it is valid as long as that chunk is. Parts of a range end with one whose `last` is
 * set; a range that the stream does not reach or complete gets no such part.
 */
export async function* splitAtRanges(
  chunks: AsyncIterable<Uint8Array>,
  ranges: readonly FilterRange[],
): AsyncGenerator<RangePart> {
  let position = 0;
  let next = 0;
  for await (const whole of chunks) {
    let chunk = whole;
    while (chunk.length > 0) {
      const range = ranges[next];
      if (range === undefined || position < range.offset) {
        const plain = Math.min(chunk.length, (range?.offset ?? Number.POSITIVE_INFINITY) - position);
        yield { bytes: chunk.subarray(0, plain), range: -1, last: false };
        chunk = chunk.subarray(plain);
        position += plain;
        continue;
      }
      const end = range.offset + range.length;
      const take = Math.min(chunk.length, end - position);
      position += take;
      yield { bytes: chunk.subarray(0, take), range: next, last: position === end };
      chunk = chunk.subarray(take);
      if (position === end) next++;
    }
  }
}

/** A table's bytes read first; a larger table (thousands of files) is read again whole. */
const FIRST_READ = 64 * 1024;

/**
 * Reads and parses a table at `start` of a payload of `length` bytes in `path`: `parse` throws
 * `TableError` when the bytes it got end too soon, and then up to `maxSize` bytes are read.
 */
export async function readTable<T, E extends Error>(
  path: string,
  start: number,
  length: number,
  maxSize: number,
  parse: (bytes: Uint8Array) => T,
  TableError: new (...args: never[]) => E,
): Promise<T> {
  const handle = await open(path, "r");
  try {
    let want = Math.min(length, FIRST_READ);
    for (;;) {
      const bytes = new Uint8Array(want);
      const { bytesRead } = await handle.read(bytes, 0, want, start);
      try {
        return parse(bytes.subarray(0, bytesRead));
      } catch (err) {
        const larger = Math.min(length, maxSize);
        if (!(err instanceof TableError) || bytesRead < want || want >= larger) throw err;
        want = larger;
      }
    }
  } finally {
    await handle.close();
  }
}

/** Reads and parses the filter table at `start` of a payload of `length` bytes in `path`. */
export function readFilterTable(
  path: string,
  start: number,
  length: number,
  outputSize: number,
): Promise<{ ranges: FilterRange[]; tableLength: number }> {
  return readTable(
    path,
    start,
    length,
    MAX_FILTER_TABLE_SIZE,
    (bytes) => parseFilterTable(bytes, outputSize),
    FilterTableError,
  );
}
