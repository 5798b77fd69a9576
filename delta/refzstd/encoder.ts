/**
 * Encoding a layer tar as a `ref-zstd` payload. The caller knows the files (see diff.ts): which
 * target ranges exist verbatim in the source (copies) and which have an old version there
 * (references: a header against the old header, a changed file against the old file). The
 * encoder plans segments over the target (copies, and literal runs with their references in
 * target order), then compresses each segment's literal bytes against its reference.
 */
import { Compressor } from "zstd-napi";
import { isX86Elf } from "../filters/payload.js";
import { hasUstarMagic } from "../tar/format.js";
import type { SourceReader } from "../vcdiff/source.js";
import { approximatePieces, type RefinedPiece, splitExactRuns } from "./approx.js";
import {
  DIFF_PIECE,
  type Extent,
  FRAME_WINDOW_LOG,
  GZIP_PIECE,
  MAX_EXTENTS,
  MAX_PIECES,
  MAX_REFERENCE,
  MAX_SEGMENT_LITERAL,
  MAX_SOURCE_SIZE,
  REFZSTD_MAGIC,
  REFZSTD_VERSION,
  REFZSTD_VERSION_GZIP,
  REFZSTD_VERSION_SPLIT,
  REFZSTD_VERSION_X86,
  VarintWriter,
  zigzag,
} from "./format.js";
import {
  GZIP_FIXED_HEADER,
  GZIP_MAGIC,
  GZIP_TRAILER,
  gunzipText,
  MAX_GZIP_TEXT,
  RecipeGroups,
  startsWithGzipMagic,
} from "./regzip.js";
import { headerRanges } from "./tarsplit.js";
import {
  emptyX86Words,
  encodeX86Diff,
  writeX86Words,
  X86_ABSOLUTE,
  X86_RELATIVE,
  x86WordCount,
} from "./x86diff.js";

/**
 * zstd level of the literal frames. Until the fifth session layers with over 32 MiB of literal
 * data (base layers, big binaries) went at 19 for half the CPU time; at 22 the base-image update
 * of the benchmark (scenario 4) is 1.55% smaller (1,801,889 → 1,773,999 bytes: the Node.js
 * layer's three frames 4.7%, 1.6% and 0.9% smaller) and its diff takes about 25% longer. Bytes
 * over the link come first.
 */
export const DEFAULT_REFZSTD_LEVEL = 22;
/**
 * Header bytes of new entries (with no old version) a segment needs before its headers go apart
 * (payload version 4): 128 headers. Below that, the gain is a few bytes.
 */
const SPLIT_MIN_HEADER_BYTES = 64 * 1024;
/** Tar pads data to 512-byte blocks: a copy is extended over the padding when the source's matches. */
const TAR_BLOCK = 512;

/** target[targetOffset, +length) equals source[sourceOffset, +length). */
export interface CopyHint {
  readonly targetOffset: number;
  readonly length: number;
  readonly sourceOffset: number;
}

/** target[targetOffset, +targetLength) is a new version of source[sourceOffset, +sourceLength). */
export interface ReferenceHint {
  readonly targetOffset: number;
  readonly targetLength: number;
  readonly sourceOffset: number;
  readonly sourceLength: number;
  /**
   * When both ranges are tar entries (header blocks, then the file's content to the range's end):
   * the header lengths. A changed gzip file is then sent as its text (see regzip.ts).
   */
  readonly targetHeaderLength?: number;
  readonly sourceHeaderLength?: number;
}

export interface RefZstdEncodeOptions {
  readonly copies?: readonly CopyHint[];
  readonly references?: readonly ReferenceHint[];
  /** Diff pieces for changed executables (approximate matching); default true. */
  readonly approximate?: boolean;
  /** Changed gzip files that GNU gzip rebuilds exactly are sent as text (payload version 2); default true. */
  readonly regzip?: boolean;
  /** Where gzip's input files go while recipes are checked; default the system's temporary folder. */
  readonly scratchDir?: string;
  /** zstd level of the literal frames; default DEFAULT_REFZSTD_LEVEL. */
  readonly level?: number;
  /** Literal bytes per segment, at most MAX_SEGMENT_LITERAL (smaller in tests). */
  readonly segmentLiteral?: number;
  /** Reference bytes per segment, at most MAX_REFERENCE (smaller in tests). */
  readonly reference?: number;
  /**
   * Source ranges, most related first (the source layers the old versions came from), added to
   * the reference of each segment of a small layer while it has room (before the segment's own
   * references in the dictionary): new files with no old version of their own still find their
   * neighbours' code there (same packages, same licences).
   */
  readonly fill?: readonly Extent[];
  /**
   * Compresses one segment's literal bytes against its dictionary with these parameters; default
   * in this thread. A worker pool (delta/bundle/compress-pool.ts) passes its own, so segments
   * compress in parallel: each frame depends only on its input, dictionary and parameters.
   */
  readonly compressFrame?: CompressFrame;
  /** Segments gathered and handed to `compressFrame` before the oldest one's frame is awaited; default 0 (one at a time). */
  readonly framesAhead?: number;
  /** Approximate matching of one changed binary (`matchBinary` by default); a pool runs it in a worker. */
  readonly matchBinary?: MatchBinary;
  /**
   * Send the literal bytes of tar headers apart from the rest in each segment without gzip pieces
   * (payload version 4, tarsplit.ts); default true.
   */
  readonly splitHeaders?: boolean;
}

/** Pieces that rebuild `newBytes` from `oldBytes` (offsets within `oldBytes`); both buffers belong to the callee afterwards. */
export type MatchBinary = (oldBytes: Uint8Array, newBytes: Uint8Array) => Promise<RefinedPiece[]>;

/** Approximate matching of a changed binary, then its long exact runs as copies: in this thread. */
export async function matchBinary(oldBytes: Uint8Array, newBytes: Uint8Array): Promise<RefinedPiece[]> {
  return splitExactRuns(oldBytes, newBytes, approximatePieces(oldBytes, newBytes), APPROX_MIN_COPY);
}

/** zstd parameters of a literal frame (zstd-napi's names), plain data so a worker can receive them. */
export interface FrameParameters {
  readonly compressionLevel: number;
  readonly windowLog: number;
  readonly hashLog?: number;
  readonly chainLog?: number;
  readonly checksumFlag: boolean;
  readonly contentSizeFlag: boolean;
}

/**
 * Compresses `literal` against `dictionary` (raw content) as one zstd frame. Both buffers belong
 * to the callee afterwards (a pool transfers them to a worker).
 */
export type CompressFrame = (
  literal: Uint8Array,
  dictionary: Uint8Array,
  parameters: FrameParameters,
) => Promise<Uint8Array>;

/** Parameters of the literal frames at `level`. */
export function frameParameters(level: number): FrameParameters {
  return {
    compressionLevel: level,
    windowLog: FRAME_WINDOW_LOG,
    // Ultra levels' own tables (hashLog 25, chainLog 27) cost over 1 GiB per context for little gain here.
    ...(level >= 20 ? { hashLog: 25, chainLog: 26 } : {}),
    checksumFlag: false,
    contentSizeFlag: true,
  };
}

/** A CompressFrame that compresses in this thread, with one context per parameter set. */
export function compressInThread(): CompressFrame {
  const contexts = new Map<string, Compressor>();
  return async (literal, dictionary, parameters) => {
    const key = JSON.stringify(parameters);
    let compressor = contexts.get(key);
    if (compressor === undefined) {
      compressor = new Compressor();
      compressor.setParameters(parameters);
      contexts.set(key, compressor);
    }
    compressor.loadDictionary(dictionary);
    return compressor.compress(literal);
  };
}

/** A planned segment: its pieces (literal pieces keep their target offset to gather them) and extents. */
interface SegmentPlan {
  readonly lengths: number[];
  /** Source offset of a copy, -1 for literal bytes. */
  readonly sources: number[];
  /** Target offset of each piece. */
  readonly targets: number[];
  /** Indexes of diff pieces: their source offset is in `sources`, their difference bytes are literal. */
  readonly diffs: Set<number>;
  /** Diff pieces of x86 executables (indexes, a subset of `diffs`) and their x86 mode: their operands go as words (x86diff.ts). */
  readonly x86: Map<number, number>;
  /** Gzip pieces by index: the file at `targets` (`lengths` bytes) is sent as its header, text and trailer. */
  readonly gzips: Map<number, GzipPlan>;
  readonly extents: Extent[];
  literal: number;
  output: number;
  referenceSize: number;
}

function emptySegment(): SegmentPlan {
  return {
    lengths: [],
    sources: [],
    targets: [],
    diffs: new Set(),
    x86: new Map(),
    gzips: new Map(),
    extents: [],
    literal: 0,
    output: 0,
    referenceSize: 0,
  };
}

interface Reference {
  readonly targetOffset: number;
  readonly targetEnd: number;
  readonly sourceOffset: number;
  readonly sourceLength: number;
  /** Target bytes in the range that are not copied. */
  literal: number;
  /** Literal bytes of the range already planned (for references split across segments). */
  done: number;
  /** Pieces from approximate matching (old offsets in the source) that replace the reference. */
  approx?: RefinedPiece[];
  /** The x86 mode when the file is an x86 executable (its diff pieces are x86 diff pieces), else 0. */
  x86?: number;
  /** Tar header lengths of both entries, when the hint gave them. */
  readonly targetHeaderLength?: number;
  readonly sourceHeaderLength?: number;
  /** The old entry's length without tar padding. */
  readonly sourceEntryLength: number;
  /** Set when the entry's file is a gzip file GNU gzip rebuilds: it is sent as its text. */
  gzip?: GzipPlan;
}

/** How a changed gzip file is sent: its header, text and trailer as literal bytes, against its old text. */
interface GzipPlan {
  readonly level: number;
  readonly headerLength: number;
  readonly textLength: number;
  /** The old gzip file in the source, and the length of its text. */
  readonly oldOffset: number;
  readonly oldLength: number;
  readonly oldTextLength: number;
}

/** Builds segments piece by piece; a new segment inherits the extent of the reference being emitted. */
class Planner {
  readonly segments: SegmentPlan[] = [];
  current = emptySegment();
  /** The extent that literal bytes being emitted are compressed against. */
  active: Extent | undefined;

  constructor(
    readonly segmentLiteral: number,
    readonly referenceLimit: number,
  ) {}

  flush(): void {
    if (this.current.output > 0) {
      this.segments.push(this.current);
      this.current = emptySegment();
    }
    if (this.active !== undefined && this.current.extents.length === 0) this.addExtent(this.active);
  }

  private roomForPiece(): void {
    if (this.current.lengths.length >= MAX_PIECES) this.flush();
  }

  addExtent(extent: Extent): void {
    const seg = this.current;
    if (seg.extents.length >= MAX_EXTENTS) throw new Error("a segment was planned past MAX_EXTENTS");
    const last = seg.extents[seg.extents.length - 1];
    if (
      last !== undefined &&
      last.inflatedLength === undefined &&
      extent.inflatedLength === undefined &&
      last.sourceOffset + last.length === extent.sourceOffset
    ) {
      seg.extents[seg.extents.length - 1] = {
        sourceOffset: last.sourceOffset,
        length: last.length + extent.length,
      };
    } else {
      seg.extents.push(extent);
    }
    seg.referenceSize += extent.inflatedLength ?? extent.length;
  }

  /** The gzip file target[targetOffset, +length) as its header, text and trailer (literal bytes). */
  gzip(targetOffset: number, length: number, gzip: GzipPlan): void {
    this.roomForPiece();
    const seg = this.current;
    seg.gzips.set(seg.lengths.length, gzip);
    seg.lengths.push(length);
    seg.sources.push(-1);
    seg.targets.push(targetOffset);
    seg.literal += gzip.headerLength + gzip.textLength + GZIP_TRAILER;
    seg.output += length;
  }

  literal(targetOffset: number, length: number): void {
    this.roomForPiece();
    const seg = this.current;
    const i = seg.lengths.length - 1;
    if (
      i >= 0 &&
      seg.sources[i] === -1 &&
      !seg.gzips.has(i) &&
      seg.targets[i]! + seg.lengths[i]! === targetOffset
    ) {
      seg.lengths[i]! += length;
    } else {
      seg.lengths.push(length);
      seg.sources.push(-1);
      seg.targets.push(targetOffset);
    }
    seg.literal += length;
    seg.output += length;
  }

  copy(targetOffset: number, length: number, sourceOffset: number): void {
    this.roomForPiece();
    const seg = this.current;
    const i = seg.lengths.length - 1;
    if (
      i >= 0 &&
      seg.sources[i]! >= 0 &&
      !seg.diffs.has(i) &&
      seg.targets[i]! + seg.lengths[i]! === targetOffset &&
      seg.sources[i]! + seg.lengths[i]! === sourceOffset
    ) {
      seg.lengths[i]! += length;
    } else {
      seg.lengths.push(length);
      seg.sources.push(sourceOffset);
      seg.targets.push(targetOffset);
    }
    seg.output += length;
  }

  /** Target bytes = source bytes at `sourceOffset` + as many difference bytes from the literal frame. */
  diff(targetOffset: number, length: number, sourceOffset: number, x86: number): void {
    this.roomForPiece();
    const seg = this.current;
    const i = seg.lengths.length - 1;
    if (
      i >= 0 &&
      seg.diffs.has(i) &&
      (seg.x86.get(i) ?? 0) === x86 &&
      seg.targets[i]! + seg.lengths[i]! === targetOffset &&
      seg.sources[i]! + seg.lengths[i]! === sourceOffset
    ) {
      seg.lengths[i]! += length;
    } else {
      seg.diffs.add(seg.lengths.length);
      if (x86 > 0) seg.x86.set(seg.lengths.length, x86);
      seg.lengths.push(length);
      seg.sources.push(sourceOffset);
      seg.targets.push(targetOffset);
    }
    seg.literal += length;
    seg.output += length;
  }
}

/**
 * Cuts target ranges into runs inside and outside the header ranges of tarsplit.ts
 * ([start, end) pairs in order); ranges must be asked for in target order.
 */
class HeaderCursor {
  private next = 0;
  constructor(private readonly ranges: readonly number[]) {}

  runs(start: number, end: number, visit: (from: number, to: number, header: boolean) => void): void {
    const r = this.ranges;
    while (this.next < r.length && r[this.next + 1]! <= start) this.next += 2;
    let j = this.next;
    let p = start;
    while (p < end) {
      if (j < r.length && r[j]! <= p) {
        const to = Math.min(end, r[j + 1]!);
        visit(p, to, true);
        p = to;
        if (to === r[j + 1]) j += 2;
      } else {
        const to = Math.min(end, j < r.length ? r[j]! : end);
        visit(p, to, false);
        p = to;
      }
    }
  }
}

function readInto(reader: SourceReader, position: number, into: Uint8Array, offset: number, length: number) {
  if (reader.readSync !== undefined) {
    reader.readSync(position, into, offset, length);
    return undefined;
  }
  return reader.read(position, into, offset, length);
}

/** Sorted, in-bounds, non-overlapping copies, each extended over following bytes the source repeats (tar padding). */
async function prepareCopies(
  target: SourceReader,
  source: SourceReader | undefined,
  hints: readonly CopyHint[],
  segmentLiteral: number,
): Promise<CopyHint[]> {
  if (hints.length === 0) return [];
  if (source === undefined) throw new Error("copy hints need a source");
  const sorted = [...hints].sort((a, b) => a.targetOffset - b.targetOffset);
  const kept: CopyHint[] = [];
  let end = 0;
  for (const c of sorted) {
    if (c.length <= 0 || c.targetOffset < end) continue;
    if (
      c.targetOffset + c.length > target.size ||
      c.sourceOffset < 0 ||
      c.sourceOffset + c.length > source.size
    ) {
      throw new Error(
        `copy hint of ${c.length} bytes from ${c.sourceOffset} to ${c.targetOffset} is outside the target (${target.size}) or source (${source.size})`,
      );
    }
    kept.push(c);
    end = c.targetOffset + c.length;
  }
  const a = new Uint8Array(TAR_BLOCK);
  const b = new Uint8Array(TAR_BLOCK);
  for (let i = 0; i < kept.length; i++) {
    const c = kept[i]!;
    const targetEnd = c.targetOffset + c.length;
    // Only up to the next block boundary: beyond it starts the next header, which must stay literal to align with its old version.
    const limit = Math.min(
      Math.ceil(targetEnd / TAR_BLOCK) * TAR_BLOCK - targetEnd,
      (i + 1 < kept.length ? kept[i + 1]!.targetOffset : target.size) - targetEnd,
      source.size - (c.sourceOffset + c.length),
    );
    if (limit <= 0) continue;
    await readInto(target, targetEnd, a, 0, limit);
    await readInto(source, c.sourceOffset + c.length, b, 0, limit);
    let n = 0;
    while (n < limit && a[n] === b[n]) n++;
    if (n > 0) kept[i] = { targetOffset: c.targetOffset, length: c.length + n, sourceOffset: c.sourceOffset };
  }
  // Backwards over the entry's own header when the source has the same header block before its
  // copy: an unchanged file's header then travels in its copy instead of as literal bytes that
  // zstd must compress. Only in a layer whose other bytes fit one segment (application layers):
  // in larger ones the headers' literal bytes move where segments end, and on the benchmark's
  // 2 GB layer the payload grew 7.7% (1,236.3 → 1,331.6 KB) while the base-image update's
  // shrank 0.9%; see docs/bundle.md.
  let covered = 0;
  for (const c of kept) covered += c.length;
  if (target.size - covered > segmentLiteral) return kept;
  let previousEnd = 0;
  for (let i = 0; i < kept.length; i++) {
    const c = kept[i]!;
    if (
      c.targetOffset % TAR_BLOCK === 0 &&
      c.targetOffset - TAR_BLOCK >= previousEnd &&
      c.sourceOffset >= TAR_BLOCK
    ) {
      await readInto(target, c.targetOffset - TAR_BLOCK, a, 0, TAR_BLOCK);
      await readInto(source, c.sourceOffset - TAR_BLOCK, b, 0, TAR_BLOCK);
      if (hasUstarMagic(a) && Buffer.compare(a, b) === 0) {
        kept[i] = {
          targetOffset: c.targetOffset - TAR_BLOCK,
          length: c.length + TAR_BLOCK,
          sourceOffset: c.sourceOffset - TAR_BLOCK,
        };
      }
    }
    previousEnd = kept[i]!.targetOffset + kept[i]!.length;
  }
  return kept;
}

/** Sorted, clipped, non-overlapping references, each widened to the old entry's padded end; with their literal byte counts. */
function prepareReferences(
  target: SourceReader,
  source: SourceReader | undefined,
  hints: readonly ReferenceHint[],
  copies: readonly CopyHint[],
): Reference[] {
  if (hints.length === 0) return [];
  if (source === undefined) throw new Error("reference hints need a source");
  const sorted = [...hints].sort((a, b) => a.targetOffset - b.targetOffset);
  const kept: Reference[] = [];
  let end = 0;
  for (const h of sorted) {
    if (h.targetLength <= 0 || h.sourceLength <= 0 || h.targetOffset < end) continue;
    if (
      h.targetOffset + h.targetLength > target.size ||
      h.sourceOffset < 0 ||
      h.sourceOffset + h.sourceLength > source.size
    ) {
      throw new Error(
        `reference hint ${h.targetOffset}+${h.targetLength} ← ${h.sourceOffset}+${h.sourceLength} is outside the target (${target.size}) or source (${source.size})`,
      );
    }
    const padded = Math.min(Math.ceil(h.sourceLength / TAR_BLOCK) * TAR_BLOCK, source.size - h.sourceOffset);
    kept.push({
      targetOffset: h.targetOffset,
      targetEnd: h.targetOffset + h.targetLength,
      sourceOffset: h.sourceOffset,
      sourceLength: padded,
      sourceEntryLength: h.sourceLength,
      literal: 0,
      done: 0,
      ...(h.targetHeaderLength !== undefined && h.sourceHeaderLength !== undefined
        ? { targetHeaderLength: h.targetHeaderLength, sourceHeaderLength: h.sourceHeaderLength }
        : {}),
    });
    end = h.targetOffset + h.targetLength;
  }
  // Literal bytes of each range: its length minus the copies that overlap it.
  let ci = 0;
  for (const r of kept) {
    let copied = 0;
    while (ci < copies.length && copies[ci]!.targetOffset + copies[ci]!.length <= r.targetOffset) ci++;
    for (let j = ci; j < copies.length && copies[j]!.targetOffset < r.targetEnd; j++) {
      const c = copies[j]!;
      copied += Math.min(r.targetEnd, c.targetOffset + c.length) - Math.max(r.targetOffset, c.targetOffset);
    }
    r.literal = r.targetEnd - r.targetOffset - copied;
  }
  return kept;
}

/** The part of a big reference that literal bytes [from, to) of its range are compressed against. */
function sliceFor(r: Reference, from: number, to: number, limit: number): Extent {
  const length = Math.min(r.sourceLength, limit);
  const center = r.sourceOffset + ((from + to) / 2) * (r.sourceLength / r.literal);
  const start = Math.min(
    Math.max(Math.round(center - length / 2), r.sourceOffset),
    r.sourceOffset + r.sourceLength - length,
  );
  return { sourceOffset: start, length };
}

/** Smaller changed files stay with the reference dictionary: approximate matching pays off on executables. */
const APPROX_MIN_SIZE = 64 * 1024;
/** Both versions are held in cloud memory, plus a seed table of up to 256 MiB: about 800 MiB at this size. */
const APPROX_MAX_SIZE = 256 * 1024 * 1024;
/** Exact runs at least this long become copies: fewer literal bytes, almost no larger tables (measured on libc). */
const APPROX_MIN_COPY = 4096;
/** ELF files start with this, after the tar header blocks of their entry. */
const ELF_MAGIC = 0x7f454c46;
/** Where the ELF magic may sit: after a header and up to a PAX or GNU long-name header pair and its data. */
const ELF_SEARCH = 8 * 1024;

/** ELF type of a position-dependent executable, whose immediates are addresses. */
const ET_EXEC = 2;

/** Where a range's ELF header starts: the first tar block boundary within ELF_SEARCH with ELF magic, or -1. */
function elfHeaderAt(bytes: Uint8Array): number {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  for (let p = 0; p + 4 <= Math.min(bytes.length, ELF_SEARCH); p += TAR_BLOCK) {
    if (view.getUint32(p) === ELF_MAGIC) return p;
  }
  return -1;
}

/**
 * The x86 mode of a range that holds an i386 or x86-64 ELF file: X86_ABSOLUTE for a
 * position-dependent executable, else X86_RELATIVE; 0 for anything else.
 */
export function x86Mode(bytes: Uint8Array): number {
  const p = elfHeaderAt(bytes);
  if (p < 0 || !isX86Elf(bytes.subarray(p))) return 0;
  // e_type, little-endian as isX86Elf requires.
  return (bytes[p + 16]! | (bytes[p + 17]! << 8)) === ET_EXEC ? X86_ABSOLUTE : X86_RELATIVE;
}

/** A range holds an executable or other binary: ELF magic at a tar block boundary, or NUL bytes in its middle. */
function looksBinary(bytes: Uint8Array): boolean {
  if (elfHeaderAt(bytes) >= 0) return true;
  const middle = Math.floor(bytes.length / 2);
  return bytes.subarray(middle, Math.min(bytes.length, middle + 4096)).includes(0);
}

/**
 * Gives each reference that covers a changed binary of APPROX_MIN_SIZE or more (and no copies)
 * pieces from approximate matching against its old version: relocated code becomes difference
 * bytes, mostly zeros, instead of literal bytes zstd must find in the reference.
 */
async function approximateReferences(
  target: SourceReader,
  source: SourceReader,
  references: readonly Reference[],
  match: MatchBinary,
  ahead: number,
): Promise<void> {
  // Up to `ahead` binaries wait for a worker while the next is read; each holds both versions in memory.
  const matching = new Set<Promise<void>>();
  for (const r of references) {
    const length = r.targetEnd - r.targetOffset;
    if (length < APPROX_MIN_SIZE || length > APPROX_MAX_SIZE || r.sourceLength > APPROX_MAX_SIZE) continue;
    if (r.literal !== length) continue;
    const newBytes = new Uint8Array(length);
    await readInto(target, r.targetOffset, newBytes, 0, length);
    // A gzip file is regzipReferences' (a deflate stream has no aligned regions to match).
    if (!looksBinary(newBytes) || isGzipEntry(r, newBytes)) continue;
    const oldBytes = new Uint8Array(r.sourceLength);
    await readInto(source, r.sourceOffset, oldBytes, 0, r.sourceLength);
    // Both versions must be x86 of the same mode: the rule reads the old bytes.
    const mode = x86Mode(newBytes);
    r.x86 = mode === x86Mode(oldBytes) ? mode : 0;
    const done: Promise<void> = match(oldBytes, newBytes).then((pieces) => {
      r.approx = pieces.map((p) =>
        p.kind === "extra" ? p : { ...p, oldOffset: p.oldOffset + r.sourceOffset },
      );
      matching.delete(done);
    });
    // Awaited below; until then a failure must not count as unhandled.
    done.catch(() => {});
    matching.add(done);
    if (matching.size > ahead) await Promise.race(matching);
  }
  await Promise.all(matching);
}

/**
 * Gives each reference whose old and new files are gzip files (and no copies) a gzip plan when
 * GNU gzip rebuilds the new file exactly from its text and the old one inflates: a changed
 * changelog is then sent as a few changed lines instead of a whole new deflate stream.
 */
async function regzipReferences(
  target: SourceReader,
  source: SourceReader,
  references: readonly Reference[],
  scratchDir: string | undefined,
): Promise<void> {
  const magic = new Uint8Array(GZIP_MAGIC.length);
  const groups = new RecipeGroups<{ r: Reference; oldAt: number; oldLength: number; oldTextLength: number }>(
    (g, recipe) => {
      g.r.gzip = {
        level: recipe.level,
        headerLength: recipe.headerLength,
        textLength: recipe.textLength,
        oldOffset: g.oldAt,
        oldLength: g.oldLength,
        oldTextLength: g.oldTextLength,
      };
    },
    scratchDir,
  );
  for (const r of references) {
    if (r.targetHeaderLength === undefined || r.sourceHeaderLength === undefined) continue;
    const length = r.targetEnd - r.targetOffset;
    const newAt = r.targetOffset + r.targetHeaderLength;
    const oldAt = r.sourceOffset + r.sourceHeaderLength;
    const newLength = r.targetEnd - newAt;
    const oldLength = r.sourceOffset + r.sourceEntryLength - oldAt;
    const fits = (n: number) => n >= GZIP_FIXED_HEADER + GZIP_TRAILER && n <= MAX_GZIP_TEXT;
    if (r.literal !== length || !fits(newLength) || !fits(oldLength)) continue;
    await readInto(target, newAt, magic, 0, magic.length);
    if (!startsWithGzipMagic(magic)) continue;
    await readInto(source, oldAt, magic, 0, magic.length);
    if (!startsWithGzipMagic(magic)) continue;
    const oldFile = new Uint8Array(oldLength);
    await readInto(source, oldAt, oldFile, 0, oldLength);
    const oldText = gunzipText(oldFile);
    if (oldText === undefined) continue;
    const file = new Uint8Array(newLength);
    await readInto(target, newAt, file, 0, newLength);
    await groups.add({ r, oldAt, oldLength, oldTextLength: oldText.length }, file);
  }
  await groups.settle();
}

/** Whether a reference's new entry (bytes from its tar header on) holds a gzip file. */
function isGzipEntry(r: Reference, bytes: Uint8Array): boolean {
  return r.targetHeaderLength !== undefined && startsWithGzipMagic(bytes.subarray(r.targetHeaderLength));
}

/**
 * Plans a changed gzip file: the old tar header and the old file's text as the reference, the
 * new tar header as literal bytes, then the gzip piece.
 */
function planGzip(
  planner: Planner,
  r: Reference,
  gzip: GzipPlan,
  segmentLiteral: number,
  referenceLimit: number,
): boolean {
  const header = r.targetHeaderLength!;
  const fileLength = r.targetEnd - r.targetOffset - header;
  const literal = header + gzip.headerLength + gzip.textLength + GZIP_TRAILER;
  const reference = r.sourceHeaderLength! + gzip.oldTextLength;
  // It needs its literal bytes and its old text within one segment (always so at the default sizes).
  if (literal > segmentLiteral || reference > referenceLimit) return false;
  planner.active = undefined;
  const seg = planner.current;
  if (
    seg.literal + literal > segmentLiteral ||
    seg.referenceSize + reference > referenceLimit ||
    seg.extents.length + 2 > MAX_EXTENTS
  ) {
    planner.flush();
  }
  planner.addExtent({ sourceOffset: r.sourceOffset, length: r.sourceHeaderLength! });
  planner.addExtent({
    sourceOffset: gzip.oldOffset,
    length: gzip.oldLength,
    inflatedLength: gzip.oldTextLength,
  });
  planner.literal(r.targetOffset, header);
  planner.gzip(r.targetOffset + header, fileLength, gzip);
  return true;
}

/** Plans a reference's approximate pieces, cutting diff and extra bytes at segment literal limits. */
function planApproximate(
  planner: Planner,
  r: Reference,
  pieces: readonly RefinedPiece[],
  segmentLiteral: number,
) {
  planner.active = undefined;
  let t = r.targetOffset;
  for (const piece of pieces) {
    if (piece.kind === "copy") {
      planner.copy(t, piece.length, piece.oldOffset);
      t += piece.length;
      continue;
    }
    let done = 0;
    while (done < piece.length) {
      const room = segmentLiteral - planner.current.literal;
      if (room <= 0) {
        planner.flush();
        continue;
      }
      const take = Math.min(piece.length - done, room);
      if (piece.kind === "diff") planner.diff(t, take, piece.oldOffset + done, r.x86 ?? 0);
      else planner.literal(t, take);
      t += take;
      done += take;
    }
  }
}

function plan(
  size: number,
  copies: readonly CopyHint[],
  references: Reference[],
  segmentLiteral: number,
  referenceLimit: number,
): SegmentPlan[] {
  const planner = new Planner(segmentLiteral, referenceLimit);
  let ci = 0;
  let ri = 0;
  let entered: Reference | undefined;
  let chunk = -1;
  let position = 0;
  while (position < size) {
    const copy = copies[ci];
    if (copy !== undefined && copy.targetOffset === position) {
      planner.copy(position, copy.length, copy.sourceOffset);
      position += copy.length;
      ci++;
      continue;
    }
    const nextCopy = copy !== undefined ? copy.targetOffset : size;
    while (ri < references.length && references[ri]!.targetEnd <= position) ri++;
    const r =
      references[ri] !== undefined && references[ri]!.targetOffset <= position ? references[ri] : undefined;
    if (r?.approx !== undefined && r.targetOffset === position) {
      planApproximate(planner, r, r.approx, segmentLiteral);
      entered = undefined;
      chunk = -1;
      position = r.targetEnd;
      continue;
    }
    if (
      r?.gzip !== undefined &&
      r.targetOffset === position &&
      planGzip(planner, r, r.gzip, segmentLiteral, referenceLimit)
    ) {
      entered = undefined;
      chunk = -1;
      position = r.targetEnd;
      continue;
    }
    const runEnd = Math.min(nextCopy, r !== undefined ? r.targetEnd : (references[ri]?.targetOffset ?? size));
    if (r !== entered) {
      entered = r;
      chunk = -1;
      planner.active = undefined;
      if (r !== undefined && r.literal <= segmentLiteral && r.sourceLength <= referenceLimit) {
        const seg = planner.current;
        if (
          seg.literal + r.literal > segmentLiteral ||
          seg.referenceSize + r.sourceLength > referenceLimit ||
          seg.extents.length >= MAX_EXTENTS
        ) {
          planner.flush();
        }
        planner.active = { sourceOffset: r.sourceOffset, length: r.sourceLength };
        planner.addExtent(planner.active);
      }
    }
    let t = position;
    let n = runEnd - position;
    while (n > 0) {
      let take: number;
      if (r !== undefined && planner.active === undefined && chunk === -1) {
        // Too big for one segment: cut into segment-sized chunks, each against a slice of the old version.
        chunk = 0;
      }
      if (r !== undefined && chunk >= 0) {
        const c = Math.floor(r.done / segmentLiteral);
        if (c !== chunk || planner.active === undefined) {
          chunk = c;
          planner.active = undefined;
          planner.flush();
          const from = c * segmentLiteral;
          planner.active = sliceFor(r, from, Math.min(from + segmentLiteral, r.literal), referenceLimit);
          planner.addExtent(planner.active);
        }
        take = Math.min(n, (chunk + 1) * segmentLiteral - r.done);
      } else {
        const room = segmentLiteral - planner.current.literal;
        if (room <= 0) {
          planner.flush();
          continue;
        }
        take = Math.min(n, room);
      }
      planner.literal(t, take);
      if (r !== undefined) r.done += take;
      t += take;
      n -= take;
    }
    position = runEnd;
  }
  planner.active = undefined;
  planner.flush();
  return planner.segments;
}

/** Puts a gzip piece's literal bytes (the file's header, text and trailer) into `literal` at `at`; returns the end. */
async function gatherGzip(
  target: SourceReader,
  offset: number,
  length: number,
  gzip: GzipPlan,
  literal: Uint8Array,
  at: number,
): Promise<number> {
  const file = new Uint8Array(length);
  await readInto(target, offset, file, 0, length);
  const text = gunzipText(file);
  if (text?.length !== gzip.textLength)
    throw new Error(`the gzip file at ${offset} of the target changed while encoding`);
  literal.set(file.subarray(0, gzip.headerLength), at);
  literal.set(text, at + gzip.headerLength);
  literal.set(file.subarray(length - GZIP_TRAILER), at + gzip.headerLength + gzip.textLength);
  return at + gzip.headerLength + gzip.textLength + GZIP_TRAILER;
}

/**
 * Encodes `target` (a layer tar) against `source` (the virtual source) as a `ref-zstd` payload,
 * yielded in parts. Hints come from the caller's knowledge of both tars; without them the payload
 * is the tar compressed in segments with no reference.
 */
export async function* encodeRefZstd(
  target: SourceReader,
  source: SourceReader | undefined,
  options: RefZstdEncodeOptions = {},
): AsyncGenerator<Uint8Array> {
  const segmentLiteral = Math.min(options.segmentLiteral ?? MAX_SEGMENT_LITERAL, MAX_SEGMENT_LITERAL);
  const referenceLimit = Math.min(options.reference ?? MAX_REFERENCE, MAX_REFERENCE);
  if (source !== undefined && source.size > MAX_SOURCE_SIZE) {
    throw new Error(`a ${source.size}-byte source exceeds ref-zstd's ${MAX_SOURCE_SIZE}-byte limit`);
  }
  const copies = await prepareCopies(target, source, options.copies ?? [], segmentLiteral);
  const references = prepareReferences(target, source, options.references ?? [], copies);
  // gzip files run in gzip processes while changed binaries are matched in the pool's workers.
  const regzipping =
    options.regzip !== false && source !== undefined
      ? regzipReferences(target, source, references, options.scratchDir)
      : Promise.resolve();
  // Awaited below; until then a failure must not count as unhandled.
  regzipping.catch(() => {});
  if (options.approximate !== false && source !== undefined)
    await approximateReferences(
      target,
      source,
      references,
      options.matchBinary ?? matchBinary,
      Math.max(0, Math.floor(options.framesAhead ?? 0)),
    );
  await regzipping;
  const segments = plan(target.size, copies, references, segmentLiteral, referenceLimit);
  let planned = 0;
  for (const seg of segments) planned += seg.literal;
  // Only layers of one segment (application layers): on the 365 MB base-image update the fill
  // saved 0.15% of the bundle for twice the cloud time.
  if (options.fill !== undefined && source !== undefined && planned <= segmentLiteral) {
    for (const seg of segments) {
      if (seg.literal === 0) continue;
      // The fill goes first in the dictionary and the segment's own references last, nearest the
      // literal bytes: their matches are the most frequent, and zstd's offsets cost more the
      // farther back they reach. The application update of the benchmark (scenario 3): 148,340 →
      // 143,818 bytes; the new app (scenario 2): 1,201,792 → 1,200,150.
      const own = seg.extents.splice(0);
      for (const e of options.fill) {
        const room = referenceLimit - seg.referenceSize;
        if (room <= 0 || seg.extents.length + own.length >= MAX_EXTENTS) break;
        if (e.sourceOffset < 0 || e.length <= 0 || e.sourceOffset + e.length > source.size) {
          throw new Error(
            `fill range ${e.sourceOffset}+${e.length} is outside the ${source.size}-byte source`,
          );
        }
        const length = Math.min(room, e.length);
        seg.extents.push({ sourceOffset: e.sourceOffset, length });
        seg.referenceSize += length;
      }
      // One push each: a fill may hold more extents than a call takes arguments.
      for (const e of own) seg.extents.push(e);
    }
  }

  const head = new VarintWriter();
  head.write(target.size);
  head.write(segments.length);
  const preamble = new Uint8Array(REFZSTD_MAGIC.length + 1 + head.length);
  preamble.set(REFZSTD_MAGIC);
  // Version 4: per segment, the literal bytes of its plain literal pieces that lie in tar headers.
  const headerBytes = new Map<SegmentPlan, number>();
  // The walk reads every header block of the layer: only when some segment without gzip pieces
  // has enough plain literal bytes to reach SPLIT_MIN_HEADER_BYTES of headers.
  const mayHaveRoom = (seg: SegmentPlan) => {
    if (seg.gzips.size > 0) return false;
    let plain = 0;
    for (let i = 0; i < seg.lengths.length; i++) if (seg.sources[i]! < 0) plain += seg.lengths[i]!;
    return plain >= SPLIT_MIN_HEADER_BYTES;
  };
  const ranges =
    options.splitHeaders === false || !segments.some(mayHaveRoom)
      ? []
      : await headerRanges(target.size, (position, into, length) =>
          readInto(target, position, into, 0, length),
        );
  if (ranges.length > 0) {
    const cursor = new HeaderCursor(ranges);
    const referenced = new HeaderCursor(references.flatMap((r) => [r.targetOffset, r.targetEnd]));
    for (const seg of segments) {
      if (seg.gzips.size > 0) continue;
      let n = 0;
      /** Header bytes of entries with an old version: they sit best beside it, in tar order. */
      let aligned = 0;
      for (let i = 0; i < seg.lengths.length; i++) {
        if (seg.sources[i]! >= 0) continue;
        const t = seg.targets[i]!;
        cursor.runs(t, t + seg.lengths[i]!, (from, to, header) => {
          if (!header) return;
          n += to - from;
          referenced.runs(from, to, (a, b, inside) => {
            if (inside) aligned += b - a;
          });
        });
      }
      // Mostly new entries (a new app's layer): their headers go apart. Mostly changed entries
      // (an update): each header stays next to its old version's, which the reference holds in
      // the same order (scenario 3: 138,123 bytes in order, 138,666 apart; scenario 2: 1,195,723
      // in order, 1,179,832 apart).
      // A few new headers (a tar's end) are not worth it.
      if (n - aligned >= SPLIT_MIN_HEADER_BYTES && aligned * 2 < n) headerBytes.set(seg, n);
    }
  }
  const version =
    headerBytes.size > 0
      ? REFZSTD_VERSION_SPLIT
      : segments.some((seg) => seg.x86.size > 0)
        ? REFZSTD_VERSION_X86
        : segments.some(
              (seg) => seg.gzips.size > 0 || seg.extents.some((e) => e.inflatedLength !== undefined),
            )
          ? REFZSTD_VERSION_GZIP
          : REFZSTD_VERSION;
  preamble[REFZSTD_MAGIC.length] = version;
  preamble.set(head.result, REFZSTD_MAGIC.length + 1);
  yield preamble;

  const level = options.level ?? DEFAULT_REFZSTD_LEVEL;
  const parameters = frameParameters(level);
  const compressFrame = options.compressFrame ?? compressInThread();
  const ahead = Math.max(0, Math.floor(options.framesAhead ?? 0));
  const tablesCompressor = new Compressor();
  tablesCompressor.setParameters({ compressionLevel: 19, checksumFlag: false, contentSizeFlag: true });

  /** Segments whose frames are being compressed, oldest first: yielded in plan order. */
  const inFlight: {
    seg: SegmentPlan;
    literalLength: number;
    headerLength: number;
    tablesFrame: Uint8Array;
    frame: Promise<Uint8Array>;
  }[] = [];
  async function* emit(done: (typeof inFlight)[number]): AsyncGenerator<Uint8Array> {
    const { seg, tablesFrame, headerLength } = done;
    const frame = await done.frame;
    const header = new VarintWriter();
    for (const v of [
      seg.output,
      done.literalLength,
      seg.extents.length,
      seg.lengths.length,
      tablesFrame.length,
      frame.length,
      ...(version >= REFZSTD_VERSION_SPLIT ? [headerLength] : []),
    ])
      header.write(v);
    yield header.result.slice();
    yield tablesFrame;
    if (frame.length > 0) yield frame;
  }
  const gatherCursor = ranges.length > 0 ? new HeaderCursor(ranges) : undefined;
  for (const seg of segments) {
    let frame: Promise<Uint8Array> = Promise.resolve(new Uint8Array(0));
    /** The segment's x86 diff words by kind, in piece order: they follow its literal bytes in the frame. */
    const words = emptyX86Words();
    let literalLength = seg.literal;
    const headerLength = headerBytes.get(seg) ?? 0;
    if (seg.literal > 0) {
      let literal = new Uint8Array(seg.literal);
      // Version 4: header bytes of plain literal pieces first, everything else after them.
      let headerAt = 0;
      let at = headerLength;
      for (let i = 0; i < seg.lengths.length; i++) {
        const isDiff = seg.diffs.has(i);
        if (seg.sources[i]! >= 0 && !isDiff) continue;
        const length = seg.lengths[i]!;
        const gzip = seg.gzips.get(i);
        if (gzip !== undefined) {
          at = await gatherGzip(target, seg.targets[i]!, length, gzip, literal, at);
          continue;
        }
        if (headerLength > 0 && !isDiff) {
          const t = seg.targets[i]!;
          const runs: [number, number, boolean][] = [];
          gatherCursor!.runs(t, t + length, (from, to, header) => runs.push([from, to, header]));
          for (const [from, to, header] of runs) {
            await readInto(target, from, literal, header ? headerAt : at, to - from);
            if (header) headerAt += to - from;
            else at += to - from;
          }
          continue;
        }
        await readInto(target, seg.targets[i]!, literal, at, length);
        if (isDiff) {
          const old = new Uint8Array(length);
          await readInto(source!, seg.sources[i]!, old, 0, length);
          const mode = seg.x86.get(i);
          if (mode !== undefined) encodeX86Diff(mode, old, 0, literal, at, length, literal, at, words);
          else for (let k = 0; k < length; k++) literal[at + k] = literal[at + k]! - old[k]!;
        }
        at += length;
      }
      if (headerLength > 0 && (headerAt !== headerLength || at !== seg.literal)) {
        throw new Error(
          `ref-zstd encoder: a segment gathered ${headerAt} header and ${at - headerLength} other literal bytes, its plan says ${headerLength} and ${seg.literal - headerLength}`,
        );
      }
      const wordCount = x86WordCount(words);
      if (wordCount > 0) {
        const withWords = new Uint8Array(seg.literal + 4 * wordCount);
        withWords.set(literal);
        writeX86Words(words, withWords, seg.literal);
        literal = withWords;
        literalLength = withWords.length;
      }
      const dictionary = new Uint8Array(1 + seg.referenceSize);
      at = 1;
      for (const e of seg.extents) {
        if (e.inflatedLength !== undefined) {
          const old = new Uint8Array(e.length);
          await readInto(source!, e.sourceOffset, old, 0, e.length);
          const text = gunzipText(old);
          if (text?.length !== e.inflatedLength)
            throw new Error(`the old gzip file at ${e.sourceOffset} of the source changed while encoding`);
          dictionary.set(text, at);
          at += e.inflatedLength;
          continue;
        }
        await readInto(source!, e.sourceOffset, dictionary, at, e.length);
        at += e.length;
      }
      frame = compressFrame(literal, dictionary, parameters);
      // Awaited in order below; until then a failure must not count as unhandled.
      frame.catch(() => {});
    }
    const tables = new VarintWriter();
    let end = 0;
    for (const e of seg.extents) {
      tables.write(zigzag(e.sourceOffset - end));
      if (version === REFZSTD_VERSION) {
        tables.write(e.length);
      } else {
        tables.write(e.length * 2 + (e.inflatedLength !== undefined ? 1 : 0));
        if (e.inflatedLength !== undefined) tables.write(e.inflatedLength);
      }
      end = e.sourceOffset + e.length;
    }
    // Source and target tars usually share their layout: a literal header between two copied
    // files stands for the old header between them, so the expected next copy is that far on.
    let expected = 0;
    for (let i = 0; i < seg.lengths.length; i++) {
      const from = seg.sources[i]!;
      const gzip = seg.gzips.get(i);
      if (gzip !== undefined) {
        for (const v of [GZIP_PIECE, seg.lengths[i]!, gzip.headerLength, gzip.textLength, gzip.level])
          tables.write(v);
      } else if (seg.diffs.has(i)) {
        tables.write(DIFF_PIECE);
        tables.write(
          version >= REFZSTD_VERSION_X86 ? seg.lengths[i]! * 4 + (seg.x86.get(i) ?? 0) : seg.lengths[i]!,
        );
      } else {
        tables.write(seg.lengths[i]! * 2 + (from >= 0 ? 1 : 0));
      }
      if (from >= 0) {
        tables.write(zigzag(from - expected));
        expected = from;
      }
      expected += seg.lengths[i]!;
    }
    if (version >= REFZSTD_VERSION_X86) for (const list of words) tables.write(list.length);
    const tablesFrame = tablesCompressor.compress(tables.result);
    inFlight.push({ seg, literalLength, headerLength, tablesFrame, frame });
    if (inFlight.length > ahead) yield* emit(inFlight.shift()!);
  }
  while (inFlight.length > 0) yield* emit(inFlight.shift()!);
}
