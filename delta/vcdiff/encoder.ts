/**
 * VCDIFF (RFC 3284) encoder: source + target → a standard delta with the default code table
 * that `xdelta3 -d -s SOURCE` decodes byte-exact. The target is streamed window by window;
 * the source is read by random access through a SourceReader and indexed with a bounded,
 * sampled hash table (see matcher.ts). Callers that already know matches (the image engine's
 * file-level matches) pass them as copy hints and search hints.
 */
import { adler32 } from "./adler32.js";
import {
  DEFAULT_WINDOW_SIZE,
  MAGIC,
  MAX_APP_HEADER,
  MAX_WINDOW_SIZE,
  VCD_APPHEADER,
  varintLength,
  writeVarint,
} from "./format.js";
import { InstructionList, WindowWriter } from "./instructions.js";
import {
  type CopyRange,
  DONE,
  mergeRanges,
  SourceIndex,
  SourcePages,
  type SourceRange,
  WindowMatcher,
} from "./matcher.js";
import { BufferSource, type SourceReader } from "./source.js";

/** target[targetOffset, +length) equals source[sourceOffset, +length): emit it as COPYs, no search. */
export interface CopyHint {
  targetOffset: number;
  length: number;
  sourceOffset: number;
}

/** Search matches for target[targetOffset, +targetLength) in source[sourceOffset, +sourceLength) (a changed file vs its old version). */
export interface SearchHint {
  targetOffset: number;
  targetLength: number;
  sourceOffset: number;
  sourceLength: number;
}

export interface EncodeOptions {
  /** Target window size, default DEFAULT_WINDOW_SIZE (2 MiB), at most MAX_WINDOW_SIZE. */
  windowSize?: number;
  /** Write xdelta3's VCD_ADLER32 checksum per window; default true. */
  checksum?: boolean;
  /** Optional VCD_APPHEADER. */
  appHeader?: Uint8Array;
  /** Known matches, sorted by targetOffset, non-overlapping. Trusted: they are not compared with the source. */
  copies?: CopyHint[];
  /** Ranges to search, sorted by targetOffset. */
  searches?: SearchHint[];
  /** Index the whole source and search it for the whole target (default: true when no hints are given). */
  searchWholeSource?: boolean;
}

/** Smallest window accepted: smaller ones only add header overhead. */
const MIN_WINDOW_SIZE = 1024;

/** Encodes target against source; yields the delta in pieces (the header, then one piece per window). */
export async function* encode(
  target: AsyncIterable<Uint8Array> | Uint8Array,
  source: SourceReader | undefined,
  options: EncodeOptions = {},
): AsyncGenerator<Uint8Array> {
  const windowSize = options.windowSize ?? DEFAULT_WINDOW_SIZE;
  if (!Number.isInteger(windowSize) || windowSize < MIN_WINDOW_SIZE || windowSize > MAX_WINDOW_SIZE) {
    throw new RangeError(
      `windowSize must be an integer from ${MIN_WINDOW_SIZE} to ${MAX_WINDOW_SIZE} bytes, found ${windowSize}`,
    );
  }
  const checksum = options.checksum ?? true;
  const copies = checkCopies(options.copies ?? [], source);
  const searches = options.searches ?? [];
  checkSearches(searches, source);
  const searchAll = options.searchWholeSource ?? (copies.length === 0 && searches.length === 0);

  yield fileHeader(options.appHeader);

  let index: SourceIndex | undefined;
  let pages: SourcePages | undefined;
  if (source !== undefined && source.size > 0) {
    pages = new SourcePages(source);
    const ranges: SourceRange[] = searchAll
      ? [{ start: 0, end: source.size }]
      : mergeRanges(searches.map((s) => ({ start: s.sourceOffset, end: s.sourceOffset + s.sourceLength })));
    if (ranges.length > 0) index = await SourceIndex.build(source, ranges);
  }
  const searchTargets = mergeRanges(
    searches.map((s) => ({ start: s.targetOffset, end: s.targetOffset + s.targetLength })),
  );
  const list = new InstructionList();
  const matcher = new WindowMatcher(list, pages, index, searchAll, searchTargets, copies);
  const writer = new WindowWriter();

  const buffer = new Uint8Array(windowSize);
  let filled = 0;
  let base = 0; // target offset of buffer[0]

  async function* encodeWindow(): AsyncGenerator<Uint8Array> {
    matcher.begin(buffer, filled, base);
    for (let need = matcher.run(); need !== DONE; need = matcher.run()) await pages!.load(need);
    const end = matcher.end;
    const sum = checksum ? adler32(buffer.subarray(0, end)) : -1;
    yield writer.write(list, buffer, end, sum);
    buffer.copyWithin(0, end, filled);
    filled -= end;
    base += end;
  }

  const chunks = target instanceof Uint8Array ? [target] : target;
  for await (const chunk of chunks) {
    let at = 0;
    while (at < chunk.length) {
      const take = Math.min(chunk.length - at, windowSize - filled);
      buffer.set(chunk.subarray(at, at + take), filled);
      filled += take;
      at += take;
      if (filled === windowSize) yield* encodeWindow();
    }
  }
  while (filled > 0) yield* encodeWindow();
  // xdelta3 refuses a delta without windows ("nothing to output"), so an empty target gets an empty window.
  if (base === 0) {
    list.reset();
    yield writer.write(list, buffer, 0, checksum ? adler32(buffer.subarray(0, 0)) : -1);
  }

  const last = copies[copies.length - 1];
  if (last !== undefined && last.target + last.length > base) {
    throw new RangeError(
      `copy hint for target bytes ${last.target}..${last.target + last.length} reaches past the end of the ${base}-byte target; pass hints within the target`,
    );
  }
}

/** Encodes a target held in memory against an optional source held in memory. */
export async function encodeBuffer(
  target: Uint8Array,
  source?: Uint8Array,
  options?: EncodeOptions,
): Promise<Uint8Array> {
  const parts: Uint8Array[] = [];
  for await (const part of encode(target, source ? new BufferSource(source) : undefined, options))
    parts.push(part);
  return concat(parts);
}

function fileHeader(appHeader: Uint8Array | undefined): Uint8Array {
  if (appHeader === undefined) return Uint8Array.of(...MAGIC, 0);
  if (appHeader.length > MAX_APP_HEADER) {
    throw new RangeError(
      `appHeader is ${appHeader.length} bytes, decoders refuse more than ${MAX_APP_HEADER}; keep it small`,
    );
  }
  const out = new Uint8Array(MAGIC.length + 1 + varintLength(appHeader.length) + appHeader.length);
  out.set(MAGIC, 0);
  out[MAGIC.length] = VCD_APPHEADER;
  const p = writeVarint(out, MAGIC.length + 1, appHeader.length);
  out.set(appHeader, p);
  return out;
}

function checkCopies(hints: CopyHint[], source: SourceReader | undefined): CopyRange[] {
  const out: CopyRange[] = [];
  let previousEnd = 0;
  for (const [i, h] of hints.entries()) {
    if (![h.targetOffset, h.length, h.sourceOffset].every((v) => Number.isSafeInteger(v) && v >= 0)) {
      throw new RangeError(`copy hint ${i} has a negative or non-integer field: ${JSON.stringify(h)}`);
    }
    if (h.targetOffset < previousEnd) {
      throw new RangeError(
        `copy hint ${i} starts at target offset ${h.targetOffset}, before the previous hint ends (${previousEnd}); sort hints by targetOffset and remove overlaps`,
      );
    }
    if (source === undefined || h.sourceOffset + h.length > source.size) {
      throw new RangeError(
        `copy hint ${i} reads source bytes ${h.sourceOffset}..${h.sourceOffset + h.length}, but the source has ${source?.size ?? 0} bytes`,
      );
    }
    previousEnd = h.targetOffset + h.length;
    if (h.length > 0) out.push({ target: h.targetOffset, length: h.length, source: h.sourceOffset });
  }
  return out;
}

function checkSearches(hints: SearchHint[], source: SourceReader | undefined): void {
  let previousStart = 0;
  for (const [i, h] of hints.entries()) {
    const fields = [h.targetOffset, h.targetLength, h.sourceOffset, h.sourceLength];
    if (!fields.every((v) => Number.isSafeInteger(v) && v >= 0)) {
      throw new RangeError(`search hint ${i} has a negative or non-integer field: ${JSON.stringify(h)}`);
    }
    if (h.targetOffset < previousStart) {
      throw new RangeError(`search hint ${i} is out of order: sort search hints by targetOffset`);
    }
    if (source === undefined || h.sourceOffset + h.sourceLength > source.size) {
      throw new RangeError(
        `search hint ${i} covers source bytes ${h.sourceOffset}..${h.sourceOffset + h.sourceLength}, but the source has ${source?.size ?? 0} bytes`,
      );
    }
    previousStart = h.targetOffset;
  }
}

function concat(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}
