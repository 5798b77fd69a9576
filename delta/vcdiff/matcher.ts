/**
 * Finding matches for the encoder: a sampled rolling-hash index over the source, a page cache
 * that reads the source by random access, and the per-window matcher that turns a target
 * window into an instruction list (source copies, copies within the window, runs, literals).
 */

import { varintLength } from "./format.js";
import {
  type InstructionList,
  KIND_ADD,
  KIND_COPY_SOURCE,
  KIND_COPY_TARGET,
  KIND_RUN,
} from "./instructions.js";
import { BufferSource, type SourceReader } from "./source.js";

/** Bytes hashed per source sample: shorter finds shorter matches, longer wastes fewer lookups on noise. */
export const SOURCE_HASH_LENGTH = 12;
/** Densest sampling of the source: every this many bytes gets an index entry (small sources). */
export const MIN_SOURCE_STRIDE = 2;
/**
 * The source index never has more slots than this (8 bytes each: 64 MiB), however large the
 * source: bigger sources are sampled with a wider stride instead.
 */
export const MAX_INDEX_SLOTS = 1 << 23;
/** Source pages read and cached by the encoder when the source is not in memory: small, because candidate matches scatter. */
export const SOURCE_PAGE_SIZE = 1 << 16;
/** Source pages kept in memory at once (32 MiB with 64 KiB pages). */
export const SOURCE_CACHE_PAGES = 512;
/** The source is read in pieces this large while the index is built. */
const INDEX_READ_SIZE = 4 << 20;
/** A match against a paged source is extended at most this far per step, so one step needs few pages. */
export const MAX_PAGED_EXTENSION = 16 * SOURCE_PAGE_SIZE;
/**
 * Largest span of the source one window's COPYs may use: a decoder that buffers a window's
 * source segment (as xdelta3 does with its 64 MiB -B default) then holds at most this much.
 */
export const MAX_SEGMENT_SPAN = 64 * 1024 * 1024;
/** A source match that does not fit the window's segment span ends the window only if it is at least this long. */
const CUT_MIN_MATCH = 256;

/** Shortest COPY worth encoding (the code table's smallest COPY size). */
const MIN_MATCH = 4;
/** Shortest RUN considered: shorter runs are left to copies and literals. */
const MIN_RUN = 6;
/**
 * Matches within the window reach back at most this far (ring of chain links, 4 bytes each:
 * 32 MiB): the default window, so content repeated anywhere in it is found, as xdelta3 finds it
 * (a quarter MiB missed repeats 800 KB apart and sent 60% more than xdelta3 on an edited binary).
 */
const SELF_SPAN = 1 << 23;
const SELF_MASK = SELF_SPAN - 1;
/** Heads of the window's hash chains (4 MiB): fewer bits made chains over SELF_SPAN long and the encoder twice as slow. */
const SELF_HASH_BITS = 20;
/** Candidates tried per position in the window's own hash chains: 64 instead of 8 cost about a third more time for 0.1–1% smaller deltas. */
const SELF_CHAIN_DEPTH = 64;
/** A match this long is taken without trying further candidates. */
const GOOD_ENOUGH = 64;
/** Matches shorter than this are compared with the match one byte later before being taken. */
const LAZY_BELOW = 64;
/** Matches shorter than this have each covered position added to the window's hash chains. */
const INSERT_BELOW = 256;
/**
 * Where the last source copy's diagonal breaks, it is looked for again this many bytes ahead:
 * a tar header whose mtime and checksum changed resumes its old alignment a few bytes later, and
 * a few literals plus a copy at a near address beat a long match found elsewhere that then has
 * to find its way back.
 */
const DIAGONAL_RESUME_SPAN = 8;
/** A resumed diagonal counts only if it matches at least this long. */
const DIAGONAL_RESUME_MIN = 16;
/** ... and reaches this many times as far as the candidate it replaces (measured: 1× lost bytes on executables). */
const DIAGONAL_RESUME_REACH = 2;
/**
 * A source match may grow backwards over instructions already chosen, this far at most, when it
 * then replaces at least one of them whole: after a file left out of a tar, the new alignment is
 * often found only in the next file's content, behind a trail of short copies that it explains.
 */
const MAX_ROLLBACK = 1 << 16;

const HASH_PRIME = 0x01000193;
const MIX = 0x9e3779b1 | 0;

/** HASH_PRIME^(SOURCE_HASH_LENGTH-1), to roll the oldest byte out. */
const ROLL_OUT = (() => {
  let p = 1;
  for (let i = 0; i < SOURCE_HASH_LENGTH - 1; i++) p = Math.imul(p, HASH_PRIME);
  return p;
})();

function hashOf(bytes: Uint8Array, at: number): number {
  let h = 0;
  for (let i = 0; i < SOURCE_HASH_LENGTH; i++) h = (Math.imul(h, HASH_PRIME) + bytes[at + i]) | 0;
  return h;
}

/** A range of source offsets, [start, end). */
export interface SourceRange {
  start: number;
  end: number;
}

/** Sorts and merges ranges (overlapping or adjacent), dropping empty ones. */
export function mergeRanges(ranges: readonly SourceRange[]): SourceRange[] {
  const sorted = ranges.filter((r) => r.end > r.start).sort((a, b) => a.start - b.start);
  const out: SourceRange[] = [];
  for (const r of sorted) {
    const last = out[out.length - 1];
    if (last !== undefined && r.start <= last.end) last.end = Math.max(last.end, r.end);
    else out.push({ ...r });
  }
  return out;
}

/**
 * Hash table from the hash of SOURCE_HASH_LENGTH bytes to a source offset, for the offsets
 * `stride` apart from the start of each indexed range. The stride grows with the indexed size so the table stays
 * within MAX_INDEX_SLOTS; a match is found when it covers a sampled offset, so matches
 * shorter than about stride + SOURCE_HASH_LENGTH can be missed in very large sources.
 */
export class SourceIndex {
  readonly stride: number;
  readonly shift: number;
  /**
   * Two words per slot, side by side so a lookup touches one cache line: the sample's ordinal
   * + 1 (0 = empty; ordinals count samples across all ranges, so they fit 32 bits however far
   * into the source a range lies), then the full hash, which rejects collisions without
   * reading the source.
   */
  readonly table: Uint32Array;
  /** Per indexed range: its start offset and the ordinal of its first sample. */
  private readonly rangeStarts: number[] = [];
  private readonly rangeOrdinals: number[] = [];

  private constructor(indexedBytes: number) {
    this.stride = Math.max(MIN_SOURCE_STRIDE, Math.ceil(indexedBytes / MAX_INDEX_SLOTS));
    const entries = Math.ceil(indexedBytes / this.stride);
    let bits = 12;
    while (1 << bits < MAX_INDEX_SLOTS && 1 << bits < entries * 2) bits++;
    this.shift = 32 - bits;
    this.table = new Uint32Array(2 << bits);
  }

  /** Indexes the given ranges of the source (reading it once, in order). */
  static async build(source: SourceReader, ranges: SourceRange[]): Promise<SourceIndex> {
    const total = ranges.reduce((sum, r) => sum + (r.end - r.start), 0);
    const index = new SourceIndex(total);
    let ordinal = 0;
    for (const range of ranges) {
      index.rangeStarts.push(range.start);
      index.rangeOrdinals.push(ordinal);
      ordinal += Math.ceil((range.end - range.start) / index.stride);
    }
    const whole = source instanceof BufferSource ? source.bytes : undefined;
    const chunkSize = INDEX_READ_SIZE;
    const chunk = whole ? undefined : new Uint8Array(chunkSize + SOURCE_HASH_LENGTH);
    for (const [r, range] of ranges.entries()) {
      const first = index.rangeOrdinals[r];
      for (let at = range.start; at + SOURCE_HASH_LENGTH <= range.end; at += chunkSize) {
        const length = Math.min(chunkSize + SOURCE_HASH_LENGTH - 1, range.end - at);
        if (whole) {
          index.insertRange(whole, at, at, length, range.start, first);
        } else {
          await source.read(at, chunk!, 0, length);
          index.insertRange(chunk!, 0, at, length, range.start, first);
        }
      }
    }
    return index;
  }

  /** The source offset of the sample stored as `value` in the table. */
  offsetOf(value: number): number {
    const ordinal = value - 1;
    const ordinals = this.rangeOrdinals;
    let lo = 0;
    let hi = ordinals.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >>> 1;
      if (ordinals[mid] <= ordinal) lo = mid;
      else hi = mid - 1;
    }
    return this.rangeStarts[lo] + (ordinal - ordinals[lo]) * this.stride;
  }

  /**
   * Inserts the samples whose hashed bytes lie in bytes[from, from + length); bytes[from] is
   * source offset `offset`, inside the range that starts at `rangeStart` with ordinal `first`.
   */
  private insertRange(
    bytes: Uint8Array,
    from: number,
    offset: number,
    length: number,
    rangeStart: number,
    first: number,
  ): void {
    const L = SOURCE_HASH_LENGTH;
    if (length < L) return;
    const stride = this.stride;
    const table = this.table;
    const shift = this.shift;
    const delta = from - offset;
    let next = rangeStart + Math.ceil((offset - rangeStart) / stride) * stride; // next sampled offset
    let value = first + (next - rangeStart) / stride + 1;
    const last = offset + length - L; // last offset whose L bytes are all here
    if (stride >= L) {
      for (; next <= last; next += stride) {
        const h = hashOf(bytes, next + delta);
        const slot = (Math.imul(h, MIX) >>> shift) << 1;
        table[slot] = value++;
        table[slot + 1] = h;
      }
      return;
    }
    let i = offset;
    let h = hashOf(bytes, i + delta);
    for (;;) {
      if (i === next) {
        const slot = (Math.imul(h, MIX) >>> shift) << 1;
        table[slot] = value++;
        table[slot + 1] = h;
        next += stride;
      }
      if (i >= last) break;
      const j = i + delta;
      h = (Math.imul((h - Math.imul(bytes[j], ROLL_OUT)) | 0, HASH_PRIME) + bytes[j + L]) | 0;
      i++;
    }
  }
}

/**
 * The source as pages: the whole buffer for a BufferSource, otherwise SOURCE_PAGE_SIZE pages
 * read on demand and evicted least-recently-used. `page` answers synchronously or says which
 * page to load, so the matcher's loops stay synchronous.
 */
export class SourcePages {
  readonly size: number;
  readonly pageSize: number;
  private readonly whole: Uint8Array | undefined;
  private readonly pages = new Map<number, { bytes: Uint8Array; used: number }>();
  private clock = 0;
  private lastNumber = -1;
  private lastBytes: Uint8Array | undefined;

  constructor(private readonly source: SourceReader) {
    this.size = source.size;
    this.whole = source instanceof BufferSource ? source.bytes : undefined;
    this.pageSize = this.whole ? Number.MAX_SAFE_INTEGER : SOURCE_PAGE_SIZE;
  }

  get paged(): boolean {
    return this.whole === undefined;
  }

  /** The bytes of page `number`, or undefined when it must be loaded first. */
  page(number: number): Uint8Array | undefined {
    if (this.whole) return this.whole;
    if (number === this.lastNumber) return this.lastBytes;
    const entry = this.pages.get(number);
    if (!entry) return undefined;
    entry.used = ++this.clock;
    this.lastNumber = number;
    this.lastBytes = entry.bytes;
    return entry.bytes;
  }

  async load(number: number): Promise<void> {
    if (this.pages.has(number)) return;
    if (this.pages.size >= SOURCE_CACHE_PAGES) {
      let oldest = -1;
      let oldestUsed = Number.POSITIVE_INFINITY;
      for (const [n, e] of this.pages) {
        if (e.used < oldestUsed) {
          oldestUsed = e.used;
          oldest = n;
        }
      }
      this.pages.delete(oldest);
      if (oldest === this.lastNumber) {
        this.lastNumber = -1;
        this.lastBytes = undefined;
      }
    }
    const start = number * SOURCE_PAGE_SIZE;
    const bytes = new Uint8Array(Math.min(SOURCE_PAGE_SIZE, this.size - start));
    await this.source.read(start, bytes, 0, bytes.length);
    this.pages.set(number, { bytes, used: ++this.clock });
  }
}

/** A copy hint, absolute offsets: target[target, +length) equals source[source, +length). */
export interface CopyRange {
  target: number;
  length: number;
  source: number;
}

/** Returned by WindowMatcher.run when the window is finished. */
export const DONE = -1;

/**
 * Turns one target window into an instruction list. `run` is synchronous and resumable: when
 * it needs a source page that is not loaded it returns the page number; the caller loads it
 * and calls `run` again, which picks up where it stopped (nothing is committed half-way).
 */
export class WindowMatcher {
  // The window: target[0, n) is target offset base + 0.
  private target: Uint8Array = new Uint8Array(0);
  private n = 0;
  private base = 0;
  /** Where the window ends: n, or earlier when a copy needed a source segment beyond MAX_SEGMENT_SPAN. */
  end = 0;

  private pos = 0;
  private addStart = 0;
  /** Source offset minus target offset of the last source copy: where its continuation would be. */
  private diagonal = Number.NaN;
  private lastSourceEnd = 0;
  /** Instructions before this window position are final: copy hints, and the window start. */
  private rollbackFloor = 0;
  private hashPos = -1;
  private hashValue = 0;

  private readonly head = new Int32Array(1 << SELF_HASH_BITS);
  private readonly prev = new Int32Array(SELF_SPAN);

  private copyIndex = 0;
  private searchIndex = 0;
  /** Window position up to which `searchOn` holds. */
  private searchUntil = 0;
  private searchOn = false;

  // The best candidate found by `best`.
  private bestKind = 0;
  private bestLength = 0;
  private bestFrom = 0;
  private bestBack = 0;
  private bestGain = 0;
  /** Page needed by the last failed comparison. */
  private need = -1;
  /** Length of the match `diagonalResume` found. */
  private resumeLength = 0;

  constructor(
    private readonly list: InstructionList,
    private readonly pages: SourcePages | undefined,
    private readonly index: SourceIndex | undefined,
    private readonly searchAll: boolean,
    /** Sorted, merged target ranges (absolute) in which the source is searched. */
    private readonly searches: SourceRange[],
    /** Sorted, non-overlapping copy hints. */
    private readonly copies: CopyRange[],
  ) {}

  /** Starts a window over target[0, n), which is target offset `base`. */
  begin(target: Uint8Array, n: number, base: number): void {
    this.target = target;
    this.n = n;
    this.base = base;
    this.end = n;
    this.pos = 0;
    this.addStart = 0;
    this.rollbackFloor = 0;
    this.hashPos = -1;
    this.head.fill(0);
    this.list.reset();
    this.searchUntil = 0;
    while (this.copyIndex < this.copies.length) {
      const c = this.copies[this.copyIndex];
      if (c.target + c.length > base) break;
      this.copyIndex++;
    }
  }

  run(): number {
    const t = this.target;
    const n = this.n;
    const list = this.list;
    for (;;) {
      const p = this.pos;
      if (p >= n) {
        this.flushLiterals(n);
        this.end = n;
        return DONE;
      }
      // A copy hint covering p is emitted as is; matches stop where the next one starts.
      let limit = n;
      if (this.copyIndex < this.copies.length) {
        const c = this.copies[this.copyIndex];
        const start = c.target - this.base;
        if (start <= p) {
          const length = Math.min(c.target + c.length - this.base, n) - p;
          const from = c.source + (p - start);
          if (!this.fitsSegment(from, length)) return this.cut(p);
          this.flushLiterals(p);
          list.push(KIND_COPY_SOURCE, length, from);
          this.diagonal = from - (this.base + p);
          this.lastSourceEnd = from + length;
          this.pos = this.addStart = this.rollbackFloor = p + length;
          if (c.target + c.length <= this.base + this.pos) this.copyIndex++;
          continue;
        }
        if (start < n) limit = start;
      }
      if (p >= this.searchUntil) this.updateSearch(p);
      if (p + MIN_MATCH > limit) {
        this.pos = limit;
        continue;
      }
      if (!this.best(p, limit)) return this.need;
      if (this.bestGain <= 0) {
        this.pos = p + 1;
        continue;
      }
      // Lazy matching: a better match one byte later wins over a short one here.
      if (this.bestBack === 0 && this.bestLength < LAZY_BELOW && p + 1 + MIN_MATCH <= limit) {
        const kind = this.bestKind;
        const length = this.bestLength;
        const from = this.bestFrom;
        const gain = this.bestGain;
        if (p + 1 >= this.searchUntil) this.updateSearch(p + 1);
        if (!this.best(p + 1, limit)) return this.need;
        if (this.bestGain > gain + 1 || (this.bestBack > 0 && this.bestGain > gain)) {
          this.pos = p + 1;
          continue;
        }
        this.bestKind = kind;
        this.bestLength = length;
        this.bestFrom = from;
        this.bestBack = 0;
      }
      let start = p - this.bestBack;
      let length = this.bestLength + this.bestBack;
      let from = this.bestFrom - this.bestBack;
      if (this.bestKind === KIND_COPY_SOURCE && start === this.addStart && start > this.rollbackFloor) {
        const extra = this.matchBackward(
          start,
          from,
          Math.min(start - this.rollbackFloor, from, MAX_ROLLBACK),
        );
        if (extra < 0) return this.need;
        if (
          extra > 0 &&
          extra >= list.length[list.count - 1] &&
          this.fitsSegment(from - extra, length + extra)
        ) {
          this.rollBack(start, start - extra);
          start -= extra;
          length += extra;
          from -= extra;
        }
      }
      if (this.bestKind === KIND_COPY_SOURCE) {
        if (!this.fitsSegment(from, length)) {
          if (length >= CUT_MIN_MATCH && list.segmentStart !== Number.POSITIVE_INFINITY)
            return this.cut(start);
          this.pos = p + 1;
          continue;
        }
        this.diagonal = from - (this.base + start);
        this.lastSourceEnd = from + length;
      }
      this.flushLiterals(start);
      list.push(this.bestKind, length, from);
      const after = start + length;
      if (length < INSERT_BELOW) {
        for (let q = p + 1; q < after && q + MIN_MATCH <= n; q++) this.insert(t, q);
      }
      this.pos = this.addStart = after;
    }
  }

  /** Drops the instructions after window position `to` (the last one ends at `end`), shortening one that straddles it. */
  private rollBack(end: number, to: number): void {
    const list = this.list;
    while (list.count > 0 && end > to) {
      const i = list.count - 1;
      const begin = end - list.length[i];
      if (begin >= to) {
        list.count--;
      } else {
        list.length[i] = to - begin;
      }
      end = begin;
    }
    this.addStart = to;
  }

  private cut(at: number): number {
    this.flushLiterals(at);
    this.end = at;
    return DONE;
  }

  private flushLiterals(to: number): void {
    if (to > this.addStart) this.list.push(KIND_ADD, to - this.addStart, this.addStart);
    this.addStart = to;
  }

  private fitsSegment(from: number, length: number): boolean {
    const list = this.list;
    const start = Math.min(list.segmentStart, from);
    const end = Math.max(list.segmentEnd, from + length);
    return end - start <= MAX_SEGMENT_SPAN;
  }

  private updateSearch(p: number): void {
    if (this.searchAll) {
      this.searchOn = this.index !== undefined;
      this.searchUntil = this.n;
      return;
    }
    const abs = this.base + p;
    const ranges = this.searches;
    while (this.searchIndex < ranges.length && ranges[this.searchIndex].end <= abs) this.searchIndex++;
    if (this.searchIndex >= ranges.length) {
      this.searchOn = false;
      this.searchUntil = this.n;
    } else if (ranges[this.searchIndex].start <= abs) {
      this.searchOn = this.index !== undefined;
      this.searchUntil = ranges[this.searchIndex].end - this.base;
    } else {
      this.searchOn = false;
      this.searchUntil = ranges[this.searchIndex].start - this.base;
    }
  }

  private insert(t: Uint8Array, q: number): void {
    const h =
      Math.imul(t[q] | (t[q + 1] << 8) | (t[q + 2] << 16) | (t[q + 3] << 24), MIX) >>> (32 - SELF_HASH_BITS);
    const head = this.head[h];
    if (head === q + 1) return;
    this.prev[q & SELF_MASK] = head;
    this.head[h] = q + 1;
  }

  /** Finds the best candidate at p (matches end by `limit`); false when a source page is needed. */
  private best(p: number, limit: number): boolean {
    const t = this.target;
    const n = this.n;
    const max = limit - p;
    let bestKind = KIND_ADD;
    let bestLength = 0;
    let bestFrom = 0;
    let bestBack = 0;
    let bestGain = 0;

    // A run of one byte value.
    const b = t[p];
    if (t[p + 1] === b && t[p + 2] === b && t[p + 3] === b) {
      let r = 4;
      while (r < max && t[p + r] === b) r++;
      if (r >= MIN_RUN) {
        bestKind = KIND_RUN;
        bestLength = r;
        bestFrom = p;
        bestGain = r - 2 - varintLength(r);
      }
    }

    const pages = this.pages;
    // The continuation of the last source copy (same shift), which survives small edits.
    const diagonalFrom = this.base + p + this.diagonal;
    if (pages !== undefined && bestLength < GOOD_ENOUGH) {
      const maxExtension = pages.paged ? MAX_PAGED_EXTENSION : Number.MAX_SAFE_INTEGER;
      if (diagonalFrom >= 0 && diagonalFrom < pages.size) {
        const len = this.matchForward(p, diagonalFrom, Math.min(max, maxExtension));
        if (len < 0) return false;
        if (len >= MIN_MATCH) {
          const gain = len - 2 - (len > 18 ? varintLength(len) : 0);
          if (gain > bestGain) {
            bestKind = KIND_COPY_SOURCE;
            bestLength = len;
            bestFrom = diagonalFrom;
            bestBack = 0;
            bestGain = gain;
          }
        }
      }
      // The sampled source index.
      if (this.searchOn && p + SOURCE_HASH_LENGTH <= n && bestLength < GOOD_ENOUGH) {
        const index = this.index!;
        let h: number;
        if (this.hashPos === p) {
          h = this.hashValue;
        } else if (this.hashPos === p - 1) {
          h = this.hashValue;
          h =
            (Math.imul((h - Math.imul(t[p - 1], ROLL_OUT)) | 0, HASH_PRIME) + t[p - 1 + SOURCE_HASH_LENGTH]) |
            0;
        } else {
          h = hashOf(t, p);
        }
        this.hashPos = p;
        this.hashValue = h;
        const slot = (Math.imul(h, MIX) >>> index.shift) << 1;
        const v = index.table[slot];
        if (v !== 0 && index.table[slot + 1] === h >>> 0) {
          const from = index.offsetOf(v);
          if (from !== diagonalFrom) {
            const len = this.matchForward(p, from, Math.min(max, maxExtension));
            if (len < 0) return false;
            if (len >= MIN_MATCH) {
              const back = this.matchBackward(p, from, Math.min(p - this.addStart, from, maxExtension));
              if (back < 0) return false;
              const total = len + back;
              const distance = Math.abs(from - this.lastSourceEnd);
              const gain =
                total - 1 - (total > 18 ? varintLength(total) : 0) - Math.min(varintLength(distance), 5);
              if (gain > bestGain) {
                bestKind = KIND_COPY_SOURCE;
                bestLength = len;
                bestFrom = from;
                bestBack = back;
                bestGain = gain;
              }
            }
          }
        }
      }
    }
    // Earlier bytes of this window, through the 4-byte hash chains.
    if (p + MIN_MATCH <= n && bestLength < GOOD_ENOUGH) {
      const h =
        Math.imul(t[p] | (t[p + 1] << 8) | (t[p + 2] << 16) | (t[p + 3] << 24), MIX) >>>
        (32 - SELF_HASH_BITS);
      let cand = this.head[h] - 1;
      if (cand === p) cand = this.prev[p & SELF_MASK] - 1;
      let depth = SELF_CHAIN_DEPTH;
      let found = 0;
      let foundFrom = 0;
      while (cand >= 0 && cand < p && p - cand <= SELF_MASK && depth-- > 0) {
        if (t[cand + found] === t[p + found] && t[cand] === b) {
          let len = 0;
          while (len < max && t[cand + len] === t[p + len]) len++;
          if (len > found) {
            found = len;
            foundFrom = cand;
            if (len >= GOOD_ENOUGH || len === max) break;
          }
        }
        const next = this.prev[cand & SELF_MASK] - 1;
        if (next >= cand) break;
        cand = next;
      }
      if (found >= MIN_MATCH) {
        const gain = found - 1 - (found > 18 ? varintLength(found) : 0) - varintLength(p - foundFrom);
        if (gain > bestGain) {
          bestKind = KIND_COPY_TARGET;
          bestLength = found;
          bestFrom = foundFrom;
          bestBack = 0;
          bestGain = gain;
        }
      }
    }
    if (p + MIN_MATCH <= n) this.insert(t, p);
    // A source copy elsewhere ends the diagonal; a long RUN or copy within the window was taken
    // without trying it. Either gives way if the diagonal, here or a few bytes on, reaches much further.
    if (
      pages !== undefined &&
      (bestKind === KIND_COPY_SOURCE || (bestKind !== KIND_ADD && bestLength >= GOOD_ENOUGH)) &&
      !(bestKind === KIND_COPY_SOURCE && bestFrom === diagonalFrom)
    ) {
      const resume = this.diagonalResume(p, limit, bestLength + 2 * bestBack);
      if (resume < 0) return false;
      if (resume === 1) {
        const len = this.resumeLength;
        bestKind = KIND_COPY_SOURCE;
        bestLength = len;
        bestFrom = diagonalFrom;
        bestBack = 0;
        bestGain = len - 2 - (len > 18 ? varintLength(len) : 0);
      } else if (resume > 1) {
        // Literals up to where it resumes.
        bestKind = KIND_ADD;
        bestLength = 0;
        bestBack = 0;
        bestGain = 0;
      }
    }

    this.bestKind = bestKind;
    this.bestLength = bestLength;
    this.bestFrom = bestFrom;
    this.bestBack = bestBack;
    this.bestGain = bestGain;
    return true;
  }

  /**
   * Where the last source copy's diagonal matches from p on: k + 1 if it matches at p + k (k up to
   * DIAGONAL_RESUME_SPAN; the match's length in resumeLength) for at least DIAGONAL_RESUME_MIN
   * bytes and reaches at least DIAGONAL_RESUME_REACH times as far as `reach`; 0 if it does not;
   * -1 if a page is missing.
   */
  private diagonalResume(p: number, limit: number, reach: number): number {
    const pages = this.pages!;
    if (Number.isNaN(this.diagonal)) return 0;
    const maxExtension = pages.paged ? MAX_PAGED_EXTENSION : Number.MAX_SAFE_INTEGER;
    for (let k = 0; k <= DIAGONAL_RESUME_SPAN && p + k + DIAGONAL_RESUME_MIN <= limit; k++) {
      const from = this.base + p + k + this.diagonal;
      if (from < 0 || from + DIAGONAL_RESUME_MIN > pages.size) return 0;
      const len = this.matchForward(p + k, from, Math.min(limit - p - k, maxExtension));
      if (len < 0) return -1;
      if (len < MIN_MATCH) continue;
      const worth = len >= DIAGONAL_RESUME_MIN && k + len >= DIAGONAL_RESUME_REACH * reach;
      if (!worth || !this.fitsSegment(from, len)) return 0;
      this.resumeLength = len;
      return k + 1;
    }
    return 0;
  }

  /** Length of the common prefix of target[p, p + max) and source[from, ...); -1 if a page is missing. */
  private matchForward(p: number, from: number, max: number): number {
    const pages = this.pages!;
    const t = this.target;
    const size = pages.size;
    if (from + max > size) max = size - from;
    const pageSize = pages.pageSize;
    let len = 0;
    while (len < max) {
      const s = from + len;
      const number = Math.floor(s / pageSize);
      const page = pages.page(number);
      if (page === undefined) {
        this.need = number;
        return -1;
      }
      let off = s - number * pageSize;
      const stop = Math.min(page.length, off + (max - len));
      let tp = p + len;
      const start = off;
      while (off < stop && page[off] === t[tp]) {
        off++;
        tp++;
      }
      len += off - start;
      if (off < stop) break;
    }
    return len;
  }

  /** Length of the common suffix of target[p - max, p) and source[..., from); -1 if a page is missing. */
  private matchBackward(p: number, from: number, max: number): number {
    const pages = this.pages!;
    const t = this.target;
    const pageSize = pages.pageSize;
    let len = 0;
    while (len < max) {
      const s = from - len - 1;
      const number = Math.floor(s / pageSize);
      const page = pages.page(number);
      if (page === undefined) {
        this.need = number;
        return -1;
      }
      let off = s - number * pageSize;
      const stop = Math.max(-1, off - (max - len));
      let tp = p - len - 1;
      const start = off;
      while (off > stop && page[off] === t[tp]) {
        off--;
        tp--;
      }
      len += start - off;
      if (off > stop) break;
    }
    return len;
  }
}
