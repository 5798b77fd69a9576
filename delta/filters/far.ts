/**
 * Far copies in plain payloads (`zstd-far`, `brotli-far`): a layer's own repeats that lie farther
 * back than its compressor's window. Brotli sees 16 MiB back; a Debian layer repeats Perl modules
 * between /usr/lib and /usr/share, and the Node.js executable (99 MB) repeats parts of itself,
 * farther apart than that. The payload names each repeat as a copy of
 * earlier output, and the compressed stream holds the layer without those bytes:
 *
 *   payload   := varint n, n bytes: one Brotli stream of (far table, x86 table, gzip table),
 *                then the layer's zstd frame or Brotli stream without the copied bytes
 *   far table := varint count, (varint (offset − end of the previous copy), varint length,
 *                varint zigzag(distance − the previous copy's distance)) × count
 *
 * The x86 and gzip tables are those of `zstd-gz` (filters/payload.ts, filters/gzip.ts), naming
 * ranges of the layer without the copied bytes. The three tables are compressed together: on the
 * first image they are 191 KB as varints and 146 KB so.
 *
 * A copy's output bytes are the `length` bytes that start `distance` bytes before its offset in
 * the layer; distance ≥ length, so they were all written before. The device keeps only the bytes
 * that later copies read, in a scratch file, so its memory does not grow with the distance.
 */
import { closeSync, openSync, readSync, rmSync, writeSync } from "node:fs";
import { open } from "node:fs/promises";
import { brotliCompressSync, brotliDecompressSync, constants as zlib } from "node:zlib";
import { GEAR } from "../index/chunker.js";
import { unzigzag, zigzag } from "../refzstd/format.js";
import { MAX_VARINT_BYTES, VarintReader, VarintWriter } from "../varint.js";
import { encodeGzipTable, type GzipPiece, MAX_GZIP_TABLE_SIZE, parseGzipTable } from "./gzip.js";
import {
  encodeFilterTable,
  encodeRangeTable,
  type FilterRange,
  MAX_FILTER_TABLE_SIZE,
  parseFilterTable,
  parseRangeTable,
  splitAtRanges,
} from "./payload.js";

export interface FarCopy {
  /** Where the copy's bytes go in the layer, and how many. */
  readonly offset: number;
  readonly length: number;
  /** How far back its bytes come from: they are the layer's bytes at offset − distance. */
  readonly distance: number;
}

/** Copies a payload may name: the table is held in memory. */
export const MAX_FAR_COPIES = 1 << 18;
export const MAX_FAR_TABLE_SIZE = MAX_VARINT_BYTES * (1 + 3 * MAX_FAR_COPIES);
/**
 * Shortest copy: a copy costs about 6 table bytes, and a repeat of 48 bytes or more costs the
 * compressor more than that (scenario 1's Debian layer: 48 bytes sent 1,050 KB less under
 * `zstd -19` than without copies, 64 bytes 986 KB, 256 bytes 747 KB).
 */
export const MIN_FAR_COPY = 48;

export class FarTableError extends Error {
  override readonly name = "FarTableError";
  readonly offset: number;
  constructor(message: string, offset: number) {
    super(`far copy table at byte ${offset}: ${message}`);
    this.offset = offset;
  }
}

/** The output does not fit the far copy table: the stream under it is damaged. */
export class FarCopyError extends Error {
  override readonly name = "FarCopyError";
}

export function encodeFarTable(copies: readonly FarCopy[]): Uint8Array {
  let previous = 0;
  return encodeRangeTable(copies, "far copies", MAX_FAR_COPIES, (copy) => {
    if (copy.distance < copy.length) throw new RangeError("a far copy must read bytes written before it");
    const delta = copy.distance - previous;
    previous = copy.distance;
    return [zigzag(delta)];
  });
}

/**
 * Parses the table at the start of `bytes` (which may hold more). Every copy must lie inside the
 * layer's `outputSize` bytes and read bytes before it; `copied` is their total length.
 */
export function parseFarTable(
  bytes: Uint8Array,
  outputSize: number,
): { copies: FarCopy[]; copied: number; tableLength: number } {
  let previous = 0;
  let copied = 0;
  const { entries, tableLength } = parseRangeTable<FarCopy>(bytes, {
    table: "far copy table",
    entry: "copy",
    entries: "copies",
    max: MAX_FAR_COPIES,
    fields: ["distance"],
    error: (message, offset) => new FarTableError(message, offset),
    make: (i, offset, length, [delta], at) => {
      const distance = previous + unzigzag(delta!);
      previous = distance;
      if (length === 0 || offset + length > outputSize) {
        throw new FarTableError(
          `copy ${i} (${length} bytes at ${offset}) is empty or ends past the layer's ${outputSize} bytes`,
          at,
        );
      }
      if (distance < length || distance > offset) {
        throw new FarTableError(
          `copy ${i} (${length} bytes at ${offset}) reads from ${distance} bytes back, not bytes written before it`,
          at,
        );
      }
      copied += length;
      return { offset, length, distance };
    },
  });
  return { copies: entries, copied, tableLength };
}

/** The three tables of a `-far` payload. */
export interface FarTables {
  readonly copies: FarCopy[];
  /** Bytes the copies make: the layer without them is this much shorter. */
  readonly copied: number;
  readonly x86: FilterRange[];
  readonly pieces: GzipPiece[];
}

/** The tables' largest size unpacked, and packed (Brotli adds a little to what it cannot shrink). */
export const MAX_FAR_TABLES_SIZE = MAX_FAR_TABLE_SIZE + MAX_FILTER_TABLE_SIZE + MAX_GZIP_TABLE_SIZE;
const MAX_PACKED_TABLES_SIZE = MAX_FAR_TABLES_SIZE + 64 * 1024;

/** The start of a `-far` payload: the packed length, then the three tables in one Brotli stream. */
export function packFarTables(
  copies: readonly FarCopy[],
  x86: readonly FilterRange[],
  pieces: readonly GzipPiece[],
): Uint8Array {
  const tables = Buffer.concat([encodeFarTable(copies), encodeFilterTable(x86), encodeGzipTable(pieces)]);
  const packed = brotliCompressSync(tables, {
    params: {
      [zlib.BROTLI_PARAM_QUALITY]: zlib.BROTLI_MAX_QUALITY,
      [zlib.BROTLI_PARAM_SIZE_HINT]: tables.length,
    },
  });
  const length = new VarintWriter();
  length.write(packed.length);
  return Buffer.concat([length.result, packed]);
}

/**
 * Unpacks and parses the tables from `packed` (the Brotli stream, without its length) for a layer
 * of `outputSize` bytes. Errors name offsets in the unpacked tables.
 */
export function unpackFarTables(packed: Uint8Array, outputSize: number): FarTables {
  let tables: Buffer;
  try {
    tables = brotliDecompressSync(packed, { maxOutputLength: MAX_FAR_TABLES_SIZE });
  } catch (err) {
    throw new FarTableError(`the tables' Brotli stream does not decode (${(err as Error).message})`, 0);
  }
  const far = parseFarTable(tables, outputSize);
  const size = outputSize - far.copied;
  const x86 = parseFilterTable(tables.subarray(far.tableLength), size);
  const gzip = parseGzipTable(tables.subarray(far.tableLength + x86.tableLength), size);
  const used = far.tableLength + x86.tableLength + gzip.tableLength;
  if (used !== tables.length)
    throw new FarTableError(`${tables.length - used} bytes follow the gzip table`, used);
  return { copies: far.copies, copied: far.copied, x86: x86.ranges, pieces: gzip.pieces };
}

/**
 * Reads the tables at `start` of a `-far` payload of `length` bytes in `path`; `tablesLength` is
 * where the layer's stream starts in the payload. Throws FarTableError (or the x86 and gzip
 * tables' own errors) when they are malformed.
 */
export async function readFarTables(
  path: string,
  start: number,
  length: number,
  outputSize: number,
): Promise<FarTables & { tablesLength: number }> {
  const handle = await open(path, "r");
  try {
    const head = new Uint8Array(Math.min(MAX_VARINT_BYTES, length));
    const { bytesRead } = await handle.read(head, 0, head.length, start);
    const reader = new VarintReader(
      head.subarray(0, bytesRead),
      0,
      "far copy tables",
      (_, message, offset) => new FarTableError(message, offset),
    );
    const packedLength = reader.read("the packed tables' length");
    if (packedLength > MAX_PACKED_TABLES_SIZE || reader.position + packedLength > length) {
      throw new FarTableError(
        `the packed tables' ${packedLength} bytes run past the ${length}-byte payload or the ${MAX_PACKED_TABLES_SIZE}-byte limit`,
        0,
      );
    }
    const packed = new Uint8Array(packedLength);
    const got = await handle.read(packed, 0, packedLength, start + reader.position);
    if (got.bytesRead !== packedLength)
      throw new FarTableError("the payload ends inside its packed tables", 0);
    return { ...unpackFarTables(packed, outputSize), tablesLength: reader.position + packedLength };
  } finally {
    await handle.close();
  }
}

/** Bytes hashed per anchor: a repeat is found from 32 equal bytes, then extended both ways. */
const SEED = 32;
/** Slots of the anchor table (2^24 of 8 bytes: 128 MiB). */
const TABLE_BITS = 24;
/** Block the layer is read in, and the unit of a comparison's reads. */
const SCAN_BLOCK = 4 * 1024 * 1024;
const COMPARE_BLOCK = 64 * 1024;
const FIRST_COMPARE = 256;

/**
 * The far copies of the layer tar at `path` (`size` bytes): repeats of at least `minLength`
 * bytes whose earlier occurrence is at least `minDistance` bytes back, in order and apart. A copy
 * never cuts into one of the `whole` ranges (gzip files that may go as their text): it covers
 * one whole or stays out of it.
 *
 * Content-defined anchors (about one position in 8, chosen by a rolling hash of the 32 bytes
 * before) go into a table of the latest position per hash; a position whose latest match lies
 * far enough back is checked and extended by reading both places. Memory: the table (128 MiB)
 * and a few read buffers, whatever the layer's size.
 */
export function findFarCopies(
  path: string,
  size: number,
  options: { minDistance: number; minLength?: number; whole?: readonly FilterRange[] },
): FarCopy[] {
  const minLength = Math.max(SEED, options.minLength ?? MIN_FAR_COPY);
  const whole = options.whole ?? [];
  const copies: FarCopy[] = [];
  if (size < options.minDistance + minLength) return copies;
  // A slot holds position × 256 + check bits (exact in a double for positions below 2^45), so an
  // anchor costs one random memory access, not two; 0 is an empty slot.
  const slots = new Float64Array(1 << TABLE_BITS);
  const fd = openSync(path, "r");
  try {
    const block = Buffer.allocUnsafe(SCAN_BLOCK);
    const here = Buffer.allocUnsafe(COMPARE_BLOCK);
    const there = Buffer.allocUnsafe(COMPARE_BLOCK);
    const read = (into: Buffer, at: number, length: number) => {
      let done = 0;
      while (done < length) {
        const n = readSync(fd, into, done, length - done, at + done);
        if (n === 0)
          throw new Error(`${path} ended at ${at + done} of its ${size} bytes while it was scanned`);
        done += n;
      }
    };
    // Comparisons read small pieces first, growing to COMPARE_BLOCK: most matches end within a
    // few hundred bytes, and reading 64 KiB both sides for each made the scan three times slower.
    /** Equal bytes backwards from a and c (exclusive), at most `limit`. */
    const equalBefore = (a: number, c: number, limit: number): number => {
      let n = 0;
      for (let piece = FIRST_COMPARE; n < limit; piece = Math.min(COMPARE_BLOCK, piece * 4)) {
        const step = Math.min(piece, limit - n);
        read(here, a - n - step, step);
        read(there, c - n - step, step);
        for (let k = step - 1; k >= 0; k--) if (here[k] !== there[k]) return n + (step - 1 - k);
        n += step;
      }
      return n;
    };
    /** Equal bytes forwards from a and c, at most `limit`. */
    const equalFrom = (a: number, c: number, limit: number): number => {
      let n = 0;
      for (let piece = FIRST_COMPARE; n < limit; piece = Math.min(COMPARE_BLOCK, piece * 4)) {
        const step = Math.min(piece, limit - n);
        read(here, a + n, step);
        read(there, c + n, step);
        for (let k = 0; k < step; k++) if (here[k] !== there[k]) return n + k;
        n += step;
      }
      return n;
    };
    let nextWhole = 0;
    /** The copy [a, e) trimmed so no `whole` range is cut: [start, end), maybe empty. */
    const trim = (a: number, e: number): [number, number] => {
      while (nextWhole < whole.length && whole[nextWhole]!.offset + whole[nextWhole]!.length <= a)
        nextWhole++;
      let start = a;
      let end = e;
      for (let w = nextWhole; w < whole.length && whole[w]!.offset < end; w++) {
        const r = whole[w]!;
        const rEnd = r.offset + r.length;
        if (r.offset < start && rEnd > start) start = rEnd;
        else if (r.offset >= start && rEnd > end) end = r.offset;
      }
      return [start, Math.max(start, end)];
    };

    let hash = 0;
    let searchFrom = 0;
    for (let base = 0; base < size; base += SCAN_BLOCK) {
      const length = Math.min(SCAN_BLOCK, size - base);
      read(block, base, length);
      for (let k = 0; k < length; k++) {
        hash = ((hash << 1) + GEAR[block[k]!]!) | 0;
        const i = base + k;
        // An anchor where the hash's top three bits are 0, once SEED bytes are in it.
        if (hash >>> 29 !== 0 || i < SEED - 1) continue;
        const start = i - (SEED - 1);
        const mixed = Math.imul(hash, 0x9e3779b1);
        const slot = mixed >>> (32 - TABLE_BITS);
        const check = mixed & 0xff;
        const held = slots[slot]!;
        const candidate = Math.floor(held / 256);
        const known = held !== 0 && held - candidate * 256 === check;
        slots[slot] = start * 256 + check;
        if (!known || start < searchFrom || start - candidate < options.minDistance) continue;
        if (start + SEED > size || equalFrom(start, candidate, SEED) < SEED) continue;
        const back = equalBefore(start, candidate, Math.min(candidate, start - searchFrom, COMPARE_BLOCK));
        const forward = SEED + equalFrom(start + SEED, candidate + SEED, size - start - SEED);
        const distance = start - candidate;
        const [a, e] = trim(start - back, Math.min(start + forward, start - back + distance));
        if (e - a < minLength) continue;
        copies.push({ offset: a, length: e - a, distance });
        searchFrom = e;
        if (copies.length === MAX_FAR_COPIES) return copies;
      }
    }
  } finally {
    closeSync(fd);
  }
  return copies;
}

/** The encoder's side: the layer's stream without the copied bytes. */
export async function* dropCopies(
  chunks: AsyncIterable<Uint8Array>,
  copies: readonly FarCopy[],
): AsyncGenerator<Uint8Array> {
  for await (const part of splitAtRanges(chunks, copies)) if (part.range < 0) yield part.bytes;
}

/**
 * Ranges of the layer (in order, apart) as ranges of the stream without the copied bytes: the
 * parts outside copies, moved back by the bytes copied before them. With `keepWhole`, a range
 * that a copy touches is left out instead of cut (a gzip file must stay whole).
 */
export function withoutCopies<T extends FilterRange>(
  ranges: readonly T[],
  copies: readonly FarCopy[],
  keepWhole: boolean,
): T[] {
  if (copies.length === 0) return [...ranges];
  // before[i]: bytes copied by the copies ahead of copy i.
  const before = [0];
  for (const copy of copies) before.push(before.at(-1)! + copy.length);
  /** Where layer position `at` (outside copies) lies in the stream without them. */
  const inStream = (at: number) => {
    let lo = 0;
    let hi = copies.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (copies[mid]!.offset < at) lo = mid + 1;
      else hi = mid;
    }
    // Copies 0 … lo−1 start before `at`; the last of them may reach past it.
    const last = copies[lo - 1];
    return at - (last === undefined ? 0 : before[lo - 1]! + Math.min(last.length, at - last.offset));
  };
  const out: T[] = [];
  let c = 0;
  for (const range of ranges) {
    const end = range.offset + range.length;
    while (c < copies.length && copies[c]!.offset + copies[c]!.length <= range.offset) c++;
    let at = range.offset;
    let touched = false;
    const parts: { offset: number; length: number }[] = [];
    for (let d = c; d < copies.length && copies[d]!.offset < end; d++) {
      const copy = copies[d]!;
      touched = true;
      if (copy.offset > at) parts.push({ offset: inStream(at), length: copy.offset - at });
      at = Math.max(at, copy.offset + copy.length);
    }
    if (at < end) parts.push({ offset: inStream(at), length: end - at });
    if (keepWhole && touched) continue;
    for (const part of parts) out.push({ ...range, ...part });
  }
  return out;
}

/** The ranges (in order, apart) that no copy touches. */
export function clearOfCopies<T extends FilterRange>(ranges: readonly T[], copies: readonly FarCopy[]): T[] {
  const out: T[] = [];
  let c = 0;
  for (const range of ranges) {
    while (c < copies.length && copies[c]!.offset + copies[c]!.length <= range.offset) c++;
    const copy = copies[c];
    if (copy === undefined || copy.offset >= range.offset + range.length) out.push(range);
  }
  return out;
}

/**
 * The output ranges that copies read, merged and in order, each with where its bytes go in the
 * device's keep file, and how many bytes that file holds in all.
 */
export function keptRanges(copies: readonly FarCopy[]): {
  kept: { start: number; end: number; at: number }[];
  keptBytes: number;
} {
  const sources = copies
    .map((c) => ({ start: c.offset - c.distance, end: c.offset - c.distance + c.length }))
    .sort((x, y) => x.start - y.start);
  const kept: { start: number; end: number; at: number }[] = [];
  let keptBytes = 0;
  for (const s of sources) {
    const last = kept.at(-1);
    if (last !== undefined && s.start <= last.end) {
      if (s.end > last.end) {
        keptBytes += s.end - last.end;
        last.end = s.end;
      }
    } else {
      kept.push({ start: s.start, end: s.end, at: keptBytes });
      keptBytes += s.end - s.start;
    }
  }
  return { kept, keptBytes };
}

/** Output chunk of the device's side, and the shortest run of the stream passed on without a copy. */
const OUTPUT_PIECE = 1024 * 1024;
/** Kept bytes gathered before they are written to the keep file, and read from it at a time. */
const KEEP_BUFFER = 256 * 1024;
const DIRECT_PIECE = 64 * 1024;

/**
 * The device's side: the layer from the stream without its copied bytes. The bytes later copies
 * read are kept in a file at `keepPath` as they pass (and removed at the end). Chunks passed in
 * may be reused by their producer after the next is pulled, and so may the chunks this yields.
 * Throws FarCopyError when the stream is longer or shorter than the table says.
 */
export async function* insertFarCopies(
  chunks: AsyncIterable<Uint8Array>,
  copies: readonly FarCopy[],
  outputSize: number,
  keepPath: string,
): AsyncGenerator<Uint8Array> {
  const { kept } = keptRanges(copies);
  const fd = openSync(keepPath, "w+", 0o600);
  try {
    let position = 0;
    let nextKept = 0;
    // The keep file is written in order (kept ranges are sorted, output comes in order), through a
    // buffer, so thousands of short kept runs cost a few writes.
    const pending = Buffer.allocUnsafe(KEEP_BUFFER);
    let pendingLength = 0;
    let flushed = 0;
    const flushKept = () => {
      if (pendingLength === 0) return;
      writeSync(fd, pending, 0, pendingLength, flushed);
      flushed += pendingLength;
      pendingLength = 0;
    };
    const appendKept = (bytes: Uint8Array) => {
      if (pendingLength + bytes.length > pending.length) flushKept();
      if (bytes.length > pending.length) {
        writeSync(fd, bytes, 0, bytes.length, flushed);
        flushed += bytes.length;
        return;
      }
      pending.set(bytes, pendingLength);
      pendingLength += bytes.length;
    };
    // Copies in a row often read kept bytes in a row (a repeated file cut by a changed byte), so
    // reads go through a block read ahead from the keep file.
    const block = Buffer.allocUnsafe(KEEP_BUFFER);
    let blockStart = 0;
    let blockLength = 0;
    /** Copies `n` kept bytes from keep-file offset `at` into `into` at `offset`. */
    const readKept = (into: Buffer, offset: number, n: number, at: number, copy: number) => {
      if (at < blockStart || at + n > blockStart + blockLength) {
        if (at + n > flushed) flushKept();
        if (n > block.length) {
          if (readSync(fd, into, offset, n, at) !== n)
            throw new FarCopyError(`the kept bytes of far copy ${copy} could not be read back`);
          return;
        }
        blockStart = at;
        blockLength = readSync(fd, block, 0, Math.min(block.length, flushed - at), at);
        if (blockLength < n)
          throw new FarCopyError(`the kept bytes of far copy ${copy} could not be read back`);
      }
      block.copy(into, offset, at - blockStart, at - blockStart + n);
    };
    /** Keeps the parts of `bytes` (output at `at`) that later copies read. */
    const keep = (bytes: Uint8Array, at: number) => {
      const end = at + bytes.length;
      while (nextKept < kept.length && kept[nextKept]!.end <= at) nextKept++;
      for (let k = nextKept; k < kept.length && kept[k]!.start < end; k++) {
        const r = kept[k]!;
        const from = Math.max(r.start, at);
        appendKept(bytes.subarray(from - at, Math.min(r.end, end) - at));
      }
    };
    // Output goes out in pieces of OUTPUT_PIECE bytes (copies are short, and each chunk costs its
    // consumers a hash update, a progress report and a write); long runs of the stream go as they
    // are. Plain functions fill the piece, and only this generator yields: generators made per
    // copy cost more in allocation and collection than the copies themselves.
    const out = Buffer.allocUnsafe(OUTPUT_PIECE);
    let filled = 0;
    /** The kept range that holds output byte `at` (copies read only kept bytes). */
    const keptAt = (at: number) => {
      let lo = 0;
      let hi = kept.length - 1;
      while (lo < hi) {
        const mid = (lo + hi + 1) >> 1;
        if (kept[mid]!.start <= at) lo = mid;
        else hi = mid - 1;
      }
      return kept[lo]!;
    };
    let next = 0;
    /** Bytes of copy `next` already out. */
    let copyDone = 0;
    /** Puts the copies that start at `position` into the piece; true when it is full first. */
    const fillCopies = (): boolean => {
      while (next < copies.length && copies[next]!.offset + copyDone === position) {
        const copy = copies[next]!;
        const from = copy.offset - copy.distance + copyDone;
        const range = keptAt(from);
        const n = Math.min(out.length - filled, copy.length - copyDone);
        readKept(out, filled, n, range.at + (from - range.start), next);
        keep(out.subarray(filled, filled + n), position);
        position += n;
        filled += n;
        copyDone += n;
        if (copyDone === copy.length) {
          next++;
          copyDone = 0;
        }
        if (filled === out.length) return true;
      }
      return false;
    };
    for await (const chunk of chunks) {
      let rest = chunk;
      while (rest.length > 0) {
        while (fillCopies()) {
          yield out;
          filled = 0;
        }
        const limit = next < copies.length ? copies[next]!.offset : outputSize;
        const take = Math.min(rest.length, limit - position);
        if (take <= 0)
          throw new FarCopyError(
            `the stream holds more than the ${outputSize} bytes of the layer with its far copies`,
          );
        const part = rest.subarray(0, take);
        rest = rest.subarray(take);
        keep(part, position);
        position += take;
        if (take >= DIRECT_PIECE) {
          if (filled > 0) {
            yield out.subarray(0, filled);
            filled = 0;
          }
          yield part;
          continue;
        }
        for (let done = 0; done < take; ) {
          const n = Math.min(take - done, out.length - filled);
          out.set(part.subarray(done, done + n), filled);
          filled += n;
          done += n;
          if (filled === out.length) {
            yield out;
            filled = 0;
          }
        }
      }
    }
    while (fillCopies()) {
      yield out;
      filled = 0;
    }
    if (filled > 0) yield out.subarray(0, filled);
    if (position !== outputSize) {
      throw new FarCopyError(
        `the stream ends at byte ${position} of the layer's ${outputSize} with its far copies`,
      );
    }
  } finally {
    closeSync(fd);
    rmSync(keepPath, { force: true });
  }
}
