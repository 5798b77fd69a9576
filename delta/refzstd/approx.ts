/**
 * Approximate matching for changed executables and shared libraries. A rebuilt binary lines up
 * with its old version at a fixed offset over long regions in which only scattered bytes differ
 * (relocated addresses, shifted jump targets). Such a region is sent as byte-wise differences
 * new[i] − old[oldOffset + i] (mod 256), mostly zeros that compress to almost nothing; what no
 * alignment explains is sent as extra bytes, taken literally.
 *
 * Cloud side: `approximatePieces` finds exact-match seeds through a hash table of sampled old
 * positions, keeps one alignment while it explains the new bytes nearly as well as any seed,
 * and at each change of alignment splits the gap between the two by a score (matches count +1,
 * mismatches −1), so an alignment reaches as far as at least half of its bytes keep matching.
 * Device side: `applyPieces` needs the old file only by random access and reads the two byte
 * streams in order.
 */

/** New bytes taken literally from the extra stream. */
export interface ExtraPiece {
  readonly kind: "extra";
  readonly length: number;
}

/** New bytes = old[oldOffset + i] + difference byte i (mod 256), differences from the diff stream. */
export interface DiffPiece {
  readonly kind: "diff";
  readonly length: number;
  readonly oldOffset: number;
}

/** New bytes = old[oldOffset + i] exactly: what `splitExactRuns` makes of long runs of zero differences. */
export interface CopyPiece {
  readonly kind: "copy";
  readonly length: number;
  readonly oldOffset: number;
}

export type ApproxPiece = ExtraPiece | DiffPiece;
export type RefinedPiece = ApproxPiece | CopyPiece;

export interface ApproxOptions {
  /** Bytes hashed per seed, a multiple of 4 from 4 to 32: shorter finds more seeds, and more false ones. */
  readonly seedLength?: number;
  /** Every how many old positions one enters the table: larger saves cloud memory and time, misses short matches. */
  readonly oldStride?: number;
  /** A seed replaces the current alignment only if the alignment misses more than this many of the seed's bytes. */
  readonly switchMargin?: number;
  /** The seed table has at most 2^this slots (4 bytes each). */
  readonly maxTableBits?: number;
}

// Measured on node 20.20.1 → 20.20.2 (after zstd -19): seed 16 at stride 2 sends 1.43 MB, at stride 1 1.41 MB
// (twice the cloud time), at stride 4 or 8 1.61–1.64 MB; seeds of 8 or 12 bytes find more false alignments.
// Switch margin (pieces and literal after zstd -19 --long=28, bench/refzstd-approx.ts): 7 sends 1,391,620 B on
// node 20.20.1 → 20.20.2 and 1,104,602 on 20.19.5 → 20.19.6 where 8 sent 1,435,543 and 1,133,527; on libc,
// libm, libssl, libperl, openssl, libcrypto and libapt-pkg (Debian 12 updates) it is within 0.4% of 8. The
// response is not smooth (6: 1,383,568 and 1,120,472; 5 and 4 worse on libcrypto; 3 and below far worse).
export const DEFAULT_SEED_LENGTH = 16;
export const DEFAULT_OLD_STRIDE = 2;
export const DEFAULT_SWITCH_MARGIN = 7;
/** Old positions kept per hash bucket (the first ones seen): repeated code sequences leave the right one a chance. */
const WAY_BITS = 2;
const WAYS = 1 << WAY_BITS;
/** The seed table holds old positions + 1 as 32-bit integers. */
export const MAX_OLD_SIZE = 2 ** 31 - 2;
/** 2^26 slots = 256 MiB: a 100 MB old file at stride 2 fills three quarters of them. */
export const DEFAULT_MAX_TABLE_BITS = 26;

/** Growable parallel arrays of pieces: kind 0 extra, 1 diff (2 copy after splitting). */
class PieceList {
  kinds = new Uint8Array(1024);
  lengths = new Float64Array(1024);
  offsets = new Float64Array(1024);
  count = 0;

  push(kind: number, length: number, oldOffset: number): void {
    if (length <= 0) return;
    const last = this.count - 1;
    // Adjacent pieces of one kind that continue each other become one.
    if (last >= 0 && this.kinds[last] === kind) {
      if (kind === 0 || this.offsets[last]! + this.lengths[last]! === oldOffset) {
        this.lengths[last]! += length;
        return;
      }
    }
    if (this.count === this.kinds.length) {
      const size = this.count * 2;
      const kinds = new Uint8Array(size);
      kinds.set(this.kinds);
      const lengths = new Float64Array(size);
      lengths.set(this.lengths);
      const offsets = new Float64Array(size);
      offsets.set(this.offsets);
      this.kinds = kinds;
      this.lengths = lengths;
      this.offsets = offsets;
    }
    this.kinds[this.count] = kind;
    this.lengths[this.count] = length;
    this.offsets[this.count] = oldOffset;
    this.count++;
  }

  toPieces(): RefinedPiece[] {
    const pieces: RefinedPiece[] = new Array(this.count);
    for (let i = 0; i < this.count; i++) {
      const length = this.lengths[i]!;
      const kind = this.kinds[i];
      pieces[i] =
        kind === 0
          ? { kind: "extra", length }
          : { kind: kind === 1 ? "diff" : "copy", length, oldOffset: this.offsets[i]! };
    }
    return pieces;
  }
}

/**
 * Hash of the `words` little-endian 32-bit words at `p`; the top bits are well mixed. A DataView
 * read is one load where assembling the word from bytes took four (half the fill's hashing time).
 */
function seedHash(view: DataView, p: number, words: number): number {
  let h = 0x811c9dc5;
  for (let k = 0; k < words; k++) {
    h = Math.imul(h ^ view.getUint32(p + 4 * k, true), 0x9e3779b1);
    h ^= h >>> 15;
  }
  return Math.imul(h, 0x85ebca6b) >>> 0;
}

function viewOf(bytes: Uint8Array): DataView {
  return new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

/** Old positions are entered a chunk at a time, each chunk sorted by table region first. */
const FILL_CHUNK = 1 << 22;
/** 1024 regions: the writes of one region stay within a few hundred KiB of the table (cache), instead of jumping across 256 MiB. */
const FILL_REGION_BITS = 10;

/**
 * Bits of a table entry left for a tag when `samples` sample numbers (+1) must fit in the rest of
 * 31 bits: the low bits of the seed's hash, so most candidates whose seed differs are rejected
 * without reading the old file at a random place (a cache miss each).
 */
function tagBitsFor(samples: number): number {
  let bits = 0;
  while (bits < MAX_TAG_BITS && samples + 1 < 2 ** (31 - bits - 1)) bits++;
  return bits;
}

/** Tags of 5 bits reject 31 of 32 wrong candidates; more would rarely fit beside the sample number. */
const MAX_TAG_BITS = 5;

/** How long seed-table memory stays allocated after a match, for the next one (a diff matches binaries back to back). */
const SPARE_IDLE_MS = 10_000;

interface SeedScratch {
  readonly table: Int32Array;
  readonly counts: Uint8Array;
  readonly hashes: Int32Array;
  readonly sortedHashes: Int32Array;
  readonly sortedSamples: Int32Array;
}

let spare: { table: Int32Array; counts: Uint8Array; chunk: Int32Array } | undefined;
let spareTimer: ReturnType<typeof setTimeout> | undefined;

/**
 * The seed table's arrays, zeroed where they must be. Fresh memory costs a page fault per 4 KiB
 * when first written (about 1 s for a 256 MiB table on the benchmark machine, as much as the
 * hashing); so the arrays of one match are kept for the next one for SPARE_IDLE_MS, then
 * dropped. Matching is synchronous, so one thread never uses them twice at once.
 */
function seedScratch(slots: number, chunk: number): SeedScratch {
  let kept = spare;
  if (kept === undefined || kept.table.length < slots || kept.chunk.length < chunk * 3) {
    const keptSlots = Math.max(slots, kept?.table.length ?? 0);
    kept = {
      table: new Int32Array(keptSlots),
      counts: new Uint8Array(keptSlots >>> WAY_BITS),
      chunk: new Int32Array(Math.max(chunk * 3, kept?.chunk.length ?? 0)),
    };
  } else {
    kept.table.fill(0, 0, slots);
    kept.counts.fill(0, 0, slots >>> WAY_BITS);
  }
  spare = kept;
  if (spareTimer !== undefined) clearTimeout(spareTimer);
  spareTimer = setTimeout(releaseMatchMemory, SPARE_IDLE_MS);
  // The timer only frees memory: it must not keep a process alive that is otherwise done.
  spareTimer.unref();
  return {
    table: kept.table.subarray(0, slots),
    counts: kept.counts.subarray(0, slots >>> WAY_BITS),
    hashes: kept.chunk.subarray(0, chunk),
    sortedHashes: kept.chunk.subarray(chunk, 2 * chunk),
    sortedSamples: kept.chunk.subarray(2 * chunk, 3 * chunk),
  };
}

/** Drops the seed-table memory kept for the next match at once (it goes by itself SPARE_IDLE_MS after the last match). */
export function releaseMatchMemory(): void {
  spare = undefined;
  if (spareTimer !== undefined) clearTimeout(spareTimer);
  spareTimer = undefined;
}

/**
 * The seed table: per bucket of WAYS slots, the first sampled old positions (0 = empty) whose
 * seed hashes there, each stored as (sample number + 1) << tagBits | tag. Filling it in position
 * order is one cache miss per position (three quarters of the cloud time on a 100 MB file);
 * sorting each chunk by region first, stably, gives the same table with the writes sweeping it.
 * A count per bucket decides the slot, so the loop stores into the table without loading from it.
 */
function fillSeedTable(
  old: Uint8Array,
  samples: number,
  stride: number,
  words: number,
  bits: number,
  tagBits: number,
): Int32Array {
  const oldView = viewOf(old);
  const size = Math.min(FILL_CHUNK, samples);
  const { table, counts, hashes, sortedHashes, sortedSamples } = seedScratch(1 << bits, size);
  const shift = 32 - (bits - WAY_BITS);
  const tagMask = (1 << tagBits) - 1;
  const regionShift = Math.max(0, bits - WAY_BITS - FILL_REGION_BITS);
  const regions = 1 << (bits - WAY_BITS - regionShift);
  const starts = new Int32Array(regions + 1);
  for (let first = 0; first < samples; first += FILL_CHUNK) {
    const n = Math.min(FILL_CHUNK, samples - first);
    starts.fill(0);
    for (let i = 0; i < n; i++) {
      const h = seedHash(oldView, (first + i) * stride, words);
      hashes[i] = h;
      starts[((h >>> shift) >>> regionShift) + 1]!++;
    }
    for (let r = 0; r < regions; r++) starts[r + 1]! += starts[r]!;
    for (let i = 0; i < n; i++) {
      const h = hashes[i]!;
      const j = starts[(h >>> shift) >>> regionShift]!++;
      sortedHashes[j] = h;
      sortedSamples[j] = first + i;
    }
    for (let j = 0; j < n; j++) {
      const h = sortedHashes[j]!;
      const bucket = h >>> shift;
      const c = counts[bucket]!;
      if (c < WAYS) {
        table[(bucket << WAY_BITS) + c] = ((sortedSamples[j]! + 1) << tagBits) | (h & tagMask);
        counts[bucket] = c + 1;
      }
    }
  }
  return table;
}

function checkOption(name: string, value: number, low: number, high: number, multipleOf = 1): number {
  if (!Number.isInteger(value) || value < low || value > high || value % multipleOf !== 0) {
    const step = multipleOf > 1 ? ` in steps of ${multipleOf}` : "";
    throw new RangeError(
      `approximate matching: ${name} must be an integer from ${low} to ${high}${step}, got ${value}`,
    );
  }
  return value;
}

/**
 * Pieces that rebuild `newFile` from `oldFile`: extras and diffs in new-file order, adjacent
 * ones merged, covering the new file exactly. Memory: both files plus the seed table (at most
 * 2^maxTableBits × 4 bytes) plus the pieces.
 */
export function approximatePieces(
  oldFile: Uint8Array,
  newFile: Uint8Array,
  options: ApproxOptions = {},
): ApproxPiece[] {
  const seedLength = checkOption("seedLength", options.seedLength ?? DEFAULT_SEED_LENGTH, 4, 32, 4);
  const stride = checkOption("oldStride", options.oldStride ?? DEFAULT_OLD_STRIDE, 1, 1 << 20);
  const margin = checkOption("switchMargin", options.switchMargin ?? DEFAULT_SWITCH_MARGIN, 0, 1 << 20);
  const maxBits = checkOption("maxTableBits", options.maxTableBits ?? DEFAULT_MAX_TABLE_BITS, 4, 30);
  const words = seedLength / 4;
  if (oldFile.length > MAX_OLD_SIZE) {
    throw new RangeError(
      `approximate matching: an old file of ${oldFile.length} bytes exceeds ${MAX_OLD_SIZE}; send the file another way`,
    );
  }
  const old = oldFile;
  const nw = newFile;
  const oldLen = old.length;
  const n = nw.length;

  // Seed table: slot → first old position (+1, 0 = empty) whose seed hashes there.
  const samples = oldLen >= seedLength ? Math.floor((oldLen - seedLength) / stride) + 1 : 0;
  let bits = 4;
  while (bits < maxBits && 1 << bits < samples * 2) bits++;
  const shift = 32 - (bits - WAY_BITS);
  const tagBits = tagBitsFor(samples);
  const tagMask = (1 << tagBits) - 1;
  const table = fillSeedTable(old, samples, stride, words, bits, tagBits);
  const newView = viewOf(nw);

  const out = new PieceList();
  /** First new byte not yet given to a piece; the current alignment starts here. */
  let regionStart = 0;
  /** Current alignment: old position − new position. */
  let offset = 0;
  let cursor = 0;
  /** Positions still to look up although the current alignment matches them. */
  let probes = 0;

  /**
   * Ends the current alignment before a seed at `seedStart` with alignment `next`: the current
   * alignment reaches forward and the next one backward as far as their scores stay best, a
   * shared stretch goes to whichever matches more of it, the rest becomes extra bytes. Returns
   * where the next alignment's region starts.
   */
  const closeRegion = (seedStart: number, next: number): number => {
    const gap = seedStart - regionStart;
    let forward = 0;
    {
      let score = 0;
      let best = 0;
      const limit = Math.min(gap, oldLen - (regionStart + offset));
      for (let i = 0; i < limit; i++) {
        score += old[regionStart + offset + i] === nw[regionStart + i] ? 1 : -1;
        if (score > best) {
          best = score;
          forward = i + 1;
        }
      }
    }
    let backward = 0;
    {
      let score = 0;
      let best = 0;
      const limit = Math.min(gap, seedStart + next);
      for (let i = 1; i <= limit; i++) {
        score += old[seedStart + next - i] === nw[seedStart - i] ? 1 : -1;
        if (score > best) {
          best = score;
          backward = i;
        }
      }
    }
    const overlap = regionStart + forward - (seedStart - backward);
    if (overlap > 0) {
      // Give the shared stretch [from, from + overlap) up to the split that keeps most matches.
      const from = seedStart - backward;
      let score = 0;
      let best = 0;
      let split = 0;
      for (let i = 0; i < overlap; i++) {
        const p = from + i;
        if (old[p + offset] === nw[p]) score++;
        if (old[p + next] === nw[p]) score--;
        if (score > best) {
          best = score;
          split = i + 1;
        }
      }
      forward = from + split - regionStart;
      backward = seedStart - from - split;
    }
    out.push(1, forward, regionStart + offset);
    out.push(0, seedStart - backward - (regionStart + forward), 0);
    return seedStart - backward;
  };

  while (cursor < n) {
    // A run the current alignment matches exactly needs no seed, except right after a mismatch:
    // old positions are sampled every `stride` bytes, so a new alignment shows up within that many.
    let o = cursor + offset;
    if (o >= 0 && o < oldLen && old[o] === nw[cursor]) {
      if (probes === 0) {
        cursor++;
        o++;
        while (cursor < n && o < oldLen && old[o] === nw[cursor]) {
          cursor++;
          o++;
        }
        continue;
      }
      probes--;
    } else {
      probes = stride - 1;
    }
    if (cursor + seedLength > n) break;
    // The longest exact match among the bucket's candidates; of equal ones, the nearest to the current alignment.
    const h = seedHash(newView, cursor, words);
    const bucket = (h >>> shift) << WAY_BITS;
    const tag = h & tagMask;
    let found = -1;
    let length = 0;
    for (let w = 0; w < WAYS; w++) {
      const entry = table[bucket + w]!;
      if (entry === 0) break;
      // Another tag means another seed: it cannot match seedLength bytes, so it cannot win.
      if ((entry & tagMask) !== tag) continue;
      const candidate = ((entry >>> tagBits) - 1) * stride;
      let l = 0;
      const room = Math.min(n - cursor, oldLen - candidate);
      while (l < room && old[candidate + l] === nw[cursor + l]) l++;
      if (
        l > length ||
        (l === length && Math.abs(candidate - cursor - offset) < Math.abs(found - cursor - offset))
      ) {
        found = candidate;
        length = l;
      }
    }
    if (length < seedLength) {
      cursor++;
      continue;
    }
    const next = found - cursor;
    // Keep the current alignment if it explains the seed's bytes nearly as well.
    let misses = 0;
    for (let i = 0; i < length && misses <= margin; i++) {
      const q = cursor + i + offset;
      if (q < 0 || q >= oldLen || old[q] !== nw[cursor + i]) misses++;
    }
    if (misses > margin) {
      regionStart = closeRegion(cursor, next);
      offset = next;
    }
    cursor += length;
  }

  // The last alignment reaches as far as its score stays best; extra bytes end the file.
  {
    let score = 0;
    let best = 0;
    let forward = 0;
    const limit = Math.min(n - regionStart, oldLen - (regionStart + offset));
    for (let i = 0; i < limit; i++) {
      score += old[regionStart + offset + i] === nw[regionStart + i] ? 1 : -1;
      if (score > best) {
        best = score;
        forward = i + 1;
      }
    }
    out.push(1, forward, regionStart + offset);
    out.push(0, n - regionStart - forward, 0);
  }
  return out.toPieces() as ApproxPiece[];
}

/**
 * Splits each diff piece where the old and new bytes agree for at least `minCopy` bytes in a
 * row: those runs become copies (no stream bytes at all), the rest stays diff.
 */
export function splitExactRuns(
  oldFile: Uint8Array,
  newFile: Uint8Array,
  pieces: readonly RefinedPiece[],
  minCopy: number,
): RefinedPiece[] {
  checkOption("minCopy", minCopy, 1, Number.MAX_SAFE_INTEGER);
  const out = new PieceList();
  let at = 0;
  for (const piece of pieces) {
    if (piece.kind === "extra") {
      out.push(0, piece.length, 0);
    } else if (piece.kind === "copy") {
      out.push(2, piece.length, piece.oldOffset);
    } else {
      const base = piece.oldOffset;
      const end = piece.length;
      /** Start of the part not yet pushed. */
      let pending = 0;
      let i = 0;
      while (i < end) {
        if (oldFile[base + i] !== newFile[at + i]) {
          i++;
          continue;
        }
        let j = i + 1;
        while (j < end && oldFile[base + j] === newFile[at + j]) j++;
        if (j - i >= minCopy) {
          out.push(1, i - pending, base + pending);
          out.push(2, j - i, base + i);
          pending = j;
        }
        i = j;
      }
      out.push(1, end - pending, base + pending);
    }
    at += piece.length;
  }
  return out.toPieces();
}

function checkCoverage(oldFile: Uint8Array, newLength: number, pieces: readonly RefinedPiece[]): void {
  let total = 0;
  for (const piece of pieces) {
    if (piece.kind !== "extra" && (piece.oldOffset < 0 || piece.oldOffset + piece.length > oldFile.length)) {
      throw new RangeError(
        `approximate matching: a ${piece.kind} piece reads old bytes ${piece.oldOffset}..${piece.oldOffset + piece.length}, the old file has ${oldFile.length}`,
      );
    }
    total += piece.length;
  }
  if (total !== newLength) {
    throw new RangeError(
      `approximate matching: the pieces cover ${total} bytes, the new file has ${newLength}`,
    );
  }
}

/** The difference bytes of the diff pieces and the extra bytes, each stream in piece order. */
export function pieceStreams(
  oldFile: Uint8Array,
  newFile: Uint8Array,
  pieces: readonly RefinedPiece[],
): { diff: Uint8Array; extra: Uint8Array } {
  checkCoverage(oldFile, newFile.length, pieces);
  let diffLength = 0;
  let extraLength = 0;
  for (const piece of pieces) {
    if (piece.kind === "diff") diffLength += piece.length;
    else if (piece.kind === "extra") extraLength += piece.length;
  }
  const diff = new Uint8Array(diffLength);
  const extra = new Uint8Array(extraLength);
  let at = 0;
  let d = 0;
  let e = 0;
  for (const piece of pieces) {
    if (piece.kind === "diff") {
      const base = piece.oldOffset;
      for (let i = 0; i < piece.length; i++) diff[d + i] = newFile[at + i]! - oldFile[base + i]!;
      d += piece.length;
    } else if (piece.kind === "extra") {
      extra.set(newFile.subarray(at, at + piece.length), e);
      e += piece.length;
    }
    at += piece.length;
  }
  return { diff, extra };
}

/** One literal stream: difference bytes for diff pieces and new bytes for extras, interleaved in piece order. */
export function literalStream(
  oldFile: Uint8Array,
  newFile: Uint8Array,
  pieces: readonly RefinedPiece[],
): Uint8Array {
  checkCoverage(oldFile, newFile.length, pieces);
  let length = 0;
  for (const piece of pieces) if (piece.kind !== "copy") length += piece.length;
  const literal = new Uint8Array(length);
  let at = 0;
  let l = 0;
  for (const piece of pieces) {
    if (piece.kind === "diff") {
      const base = piece.oldOffset;
      for (let i = 0; i < piece.length; i++) literal[l + i] = newFile[at + i]! - oldFile[base + i]!;
      l += piece.length;
    } else if (piece.kind === "extra") {
      literal.set(newFile.subarray(at, at + piece.length), l);
      l += piece.length;
    }
    at += piece.length;
  }
  return literal;
}

/**
 * Adds `length` difference bytes to old bytes: out[outAt + i] = old[oldAt + i] + diff[diffAt + i]
 * (mod 256). The device's step for a diff piece, on whatever chunks it has read.
 */
export function addDifferences(
  out: Uint8Array,
  outAt: number,
  old: Uint8Array,
  oldAt: number,
  diff: Uint8Array,
  diffAt: number,
  length: number,
): void {
  for (let i = 0; i < length; i++) out[outAt + i] = old[oldAt + i]! + diff[diffAt + i]!;
}

/**
 * Rebuilds the new file from the old one, the pieces and the streams of `pieceStreams`.
 * Reads old bytes only where a piece points and each stream once, front to back.
 */
export function applyPieces(
  oldFile: Uint8Array,
  pieces: readonly RefinedPiece[],
  diff: Uint8Array,
  extra: Uint8Array,
): Uint8Array {
  let total = 0;
  for (const piece of pieces) total += piece.length;
  const out = new Uint8Array(total);
  let at = 0;
  let d = 0;
  let e = 0;
  for (const piece of pieces) {
    const { length } = piece;
    if (piece.kind === "extra") {
      if (e + length > extra.length) {
        throw new RangeError(
          `approximate matching: the extra stream ends at byte ${extra.length}, a piece needs ${e + length}`,
        );
      }
      out.set(extra.subarray(e, e + length), at);
      e += length;
    } else {
      if (piece.oldOffset < 0 || piece.oldOffset + length > oldFile.length) {
        throw new RangeError(
          `approximate matching: a piece reads old bytes ${piece.oldOffset}..${piece.oldOffset + length}, the old file has ${oldFile.length}`,
        );
      }
      if (piece.kind === "copy") {
        out.set(oldFile.subarray(piece.oldOffset, piece.oldOffset + length), at);
      } else {
        if (d + length > diff.length) {
          throw new RangeError(
            `approximate matching: the diff stream ends at byte ${diff.length}, a piece needs ${d + length}`,
          );
        }
        addDifferences(out, at, oldFile, piece.oldOffset, diff, d, length);
        d += length;
      }
    }
    at += length;
  }
  if (d !== diff.length || e !== extra.length) {
    throw new RangeError(
      `approximate matching: the pieces use ${d} diff and ${e} extra bytes, the streams hold ${diff.length} and ${extra.length}`,
    );
  }
  return out;
}

/**
 * The piece table as varints, for measuring: per piece varint(length × 3 + kind) with kind 0
 * extra, 1 diff, 2 copy, then for diff and copy varint(zigzag(oldOffset − end of the previous one)).
 */
export function encodePieceTable(pieces: readonly RefinedPiece[]): Uint8Array {
  let bytes = new Uint8Array(1024);
  let length = 0;
  const write = (value: number) => {
    if (length + 8 > bytes.length) {
      const grown = new Uint8Array(bytes.length * 2);
      grown.set(bytes.subarray(0, length));
      bytes = grown;
    }
    let v = value;
    while (v >= 0x80) {
      bytes[length++] = (v % 0x80) | 0x80;
      v = Math.floor(v / 0x80);
    }
    bytes[length++] = v;
  };
  let oldEnd = 0;
  for (const piece of pieces) {
    const kind = piece.kind === "extra" ? 0 : piece.kind === "diff" ? 1 : 2;
    write(piece.length * 3 + kind);
    if (piece.kind !== "extra") {
      const delta = piece.oldOffset - oldEnd;
      write(delta >= 0 ? delta * 2 : -delta * 2 - 1);
      oldEnd = piece.oldOffset + piece.length;
    }
  }
  return bytes.slice(0, length);
}
