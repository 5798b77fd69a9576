/**
 * Building a bundle: index the source layers (file content by hash, entries by path), walk
 * each missing target layer's tar to turn file-level knowledge into VCDIFF copy and search
 * hints, encode, compress with zstd, sign, and write the bundle atomically.
 */

import { createHash } from "node:crypto";
import { createWriteStream } from "node:fs";
import { open, rename, rm, stat } from "node:fs/promises";
import { dirname } from "node:path";
import { Readable } from "node:stream";
import { pipeline } from "node:stream/promises";
import { MIN_GZIP_FILE } from "../filters/gzip.js";
import {
  ELF_HEAD,
  executableRanges,
  type FilterRange,
  isX86Elf,
  MIN_FILTERED_FILE,
} from "../filters/payload.js";
import { CompressionError } from "../image/compression.js";
import { DigestError } from "../image/digest.js";
import { FileRangeSource, layerTarInPlace } from "../image/file-blob.js";
import type { BlobLocation, ImageReader } from "../image/types.js";
import { type ScannedEntry, TarScanner } from "../index/tar-scan.js";
import { encodeRefZstd } from "../refzstd/encoder.js";
import { GZIP_MAGIC, MAX_GZIP_TEXT, startsWithGzipMagic } from "../refzstd/regzip.js";
import { BLOCK_SIZE } from "../tar/format.js";
import { ConcatSource, FileSource } from "../vcdiff/source.js";
import { CompressPool, compressWorkerCount } from "./compress-pool.js";
import {
  type BundleManifest,
  encodeHeader,
  encodeManifest,
  encodeSignatureBlock,
  HEADER_SIZE,
  type LayerEntry,
  type LayerRef,
  type PayloadCodec,
  type PlainCompressor,
  plainCodecOf,
  SIGNATURE_BLOCK_SIZE,
} from "./format.js";
import { encodePayload, type LayerHints, type PayloadSettings } from "./payload.js";
import { readFileStream, ScratchDir, writeToFile } from "./scratch.js";
import { type SigningKey, signManifest } from "./sign.js";

/**
 * Default zstd level: bytes over the link come first, the cloud has time. 22 (ultra) beats 19
 * by ~0.3% at the same window; it costs about a third more compression time and nothing on the
 * device.
 */
export const DEFAULT_ZSTD_LEVEL = 22;
/**
 * Default zstd window (64 MiB, the most a device accepts: MAX_ZSTD_WINDOW_LOG in apply.ts); the
 * device decodes with about that much memory (scenario 1 applied at 156 MB peak RSS under tsx).
 * Against 8 MiB it took the first-image bundle (365 MB, with the x86 filter) from about 71 MB to
 * 69.5 MB, under `zstd -19 --long=31` of the whole image (70.3 MB). At level 22 the match tables
 * then take ~770 MB per zstd worker in the cloud (1.17 GB peak RSS for that diff), hence two workers.
 */
export const DEFAULT_ZSTD_WINDOW_LOG = 26;
/**
 * Compressor of plain (whole-layer) payloads up to BROTLI_MAX_LAYER: Brotli at quality 11 with a
 * 16 MiB window. On the benchmark's first image (scenario 1) the bundle went from 69.5 MB to
 * 67.1 MB: the Node.js layer (151.6 MB) 26.1 → 24.2 MB, the app layer (33.2 MB) 2,973 → 2,832 KB,
 * the Debian layer (180.1 MB) 40.4 → 40.0 MB. It compresses at about 0.5 MB/s per core, a third
 * of zstd -22's speed; see docs/bundle.md.
 */
export const DEFAULT_PLAIN_COMPRESSOR: PlainCompressor = "brotli";
/**
 * Plain layers larger than this go as zstd unless Brotli is asked for: Brotli compresses on one
 * core at about 0.5 MB/s, so 256 MiB already takes some 9 minutes of an activity whose Functions
 * timeout is 30 minutes by default, while zstd splits large layers into jobs on every core, and
 * its 64 MiB window counts more on large layers (on the 180 MB Debian layer Brotli won by 1% only).
 */
export const BROTLI_MAX_LAYER = 256 * 1024 * 1024;
/**
 * Bytes of plain layers one bundle compresses with Brotli, in layer order; layers past it go as
 * zstd. Two workers compress Brotli at about 1 MB/s together, so 512 MiB keeps a large first
 * image at some 9 minutes of Brotli instead of growing past the activity's 30-minute timeout
 * (a 2 GB image of 200 MB layers would take over half an hour); zstd's jobs take the rest.
 */
export const BROTLI_BUDGET = 512 * 1024 * 1024;
/** Content shorter than this is left to zstd: a COPY instruction would cost about as much. */
const MIN_COPY_LENGTH = 32;
/** A file counts as the old version of a differently named one only within this size ratio. */
const SIMILAR_SIZE_RATIO = 2;
/**
 * A `ref-zstd` payload over this share of its layer is mostly new data the hints did not cover,
 * so whole-layer zstd (through the x86 filter) may be smaller: both are made and the smaller goes.
 * On the benchmark the largest share is 8.8% (a new app layer, against 16% for whole-layer
 * gzip), so no scenario pays for the second encoding.
 */
export const PLAIN_CHECK_SHARE = 1 / 8;

export interface BundleProgress {
  readonly phase: "source" | "target" | "encode";
  readonly diffId: string;
  readonly done: number;
  /** Bytes expected; equals `done` while unknown (a compressed layer being inflated). */
  readonly total: number;
}

export interface BuildBundleOptions {
  readonly target: ImageReader;
  /** Images the device holds; any of their layers may serve as source. */
  readonly sources: readonly ImageReader[];
  readonly key: SigningKey;
  /** Path of the bundle to write (written to a temporary name, renamed when complete). */
  readonly out: string;
  /** Restrict the virtual source to these diff_ids (e.g. from planSources); default every source layer. */
  readonly sourceLayers?: readonly string[];
  readonly scratchDir?: string;
  readonly zstdLevel?: number;
  readonly zstdWindowLog?: number;
  /**
   * Besides the file-level hints, let the VCDIFF encoder search the whole virtual source for
   * what they do not cover (content moved into new files, bundlers' reshuffled output).
   * Default true: it costs cloud time and memory, and saves link bytes (a third on npm updates).
   */
  readonly searchWholeSource?: boolean;
  /** VCDIFF target window size; default PAYLOAD_VCDIFF_WINDOW (8 MiB). */
  readonly windowSize?: number;
  /**
   * Payload codec for layers with a source: default `ref-zstd` (file-aligned zstd against the
   * old versions; smallest on every benchmark scenario); `vcdiff-zstd` forces the VCDIFF codec.
   * Layers with nothing in common with the source go as a plain payload either way. A plain
   * codec (`zstd`, `zstd-x86`, `brotli`, `brotli-x86`, `-gz`, `-far`) makes every layer plain,
   * with that compressor and with the x86 filter, gzip texts and far copies only if asked.
   */
  readonly codec?: PayloadCodec;
  /**
   * What compresses plain payloads when `codec` does not say; default DEFAULT_PLAIN_COMPRESSOR for
   * layers up to `brotliMaxLayer` bytes (default BROTLI_MAX_LAYER), zstd for larger ones.
   */
  readonly plainCompressor?: PlainCompressor;
  readonly brotliMaxLayer?: number;
  /** Bytes of layers (in layer order) that may get Brotli plain payloads; default BROTLI_BUDGET. */
  readonly brotliBudget?: number;
  /** zstd level of `ref-zstd` literal frames; default 22 (DEFAULT_REFZSTD_LEVEL in delta/refzstd/encoder.ts). */
  readonly refZstdLevel?: number;
  /** Fill spare `ref-zstd` reference room with the source layers the old versions came from; default true. */
  readonly refZstdFill?: boolean;
  /**
   * Send a plain payload's gzip files that GNU gzip rebuilds exactly as their text (`zstd-gz`,
   * `brotli-gz`); default true unless `codec` names another plain codec.
   */
  readonly plainGzip?: boolean;
  /**
   * Send a plain payload's repeats that lie beyond its compressor's window as copies of the
   * layer's earlier bytes (`zstd-far`, `brotli-far`); default true unless `codec` names another
   * plain codec.
   */
  readonly plainFarCopies?: boolean;
  /**
   * Worker threads that compress `ref-zstd` frames and plain payloads, so a diff uses several
   * cores; default one per core up to 2 (compress-pool.ts). Below 2 everything runs in this thread.
   * The bundle is the same either way.
   */
  readonly compressWorkers?: number;
  readonly onProgress?: (progress: BundleProgress) => void;
}

export interface BuiltLayer {
  readonly diffId: string;
  readonly size: number;
  readonly present: boolean;
  readonly codec?: PayloadCodec;
  readonly payloadBytes: number;
}

export interface BuildBundleResult {
  readonly path: string;
  readonly bytes: number;
  readonly manifest: BundleManifest;
  readonly layers: readonly BuiltLayer[];
  readonly durationMs: number;
}

/** A source entry, with offsets in the virtual source. */
interface SourceEntry {
  readonly layer: number;
  readonly type: ScannedEntry["type"];
  readonly headerOffset: number;
  readonly dataOffset: number;
  readonly size: number;
}

interface SourceLayer {
  readonly diffId: string;
  /** Where the layer's tar lies: in place in a local image, or a scratch copy. */
  readonly location: BlobLocation;
  readonly size: number;
  /** Virtual offset of the layer's first byte. */
  start: number;
  /** The layer's entries in tar order, with their paths (a later layer may hold the same path). */
  readonly entries: readonly (readonly [string, SourceEntry])[];
}

/** What the source layers hold, by content and by name. */
class SourceCatalog {
  readonly layers: SourceLayer[] = [];
  readonly contents = new Map<string, SourceEntry>();
  readonly paths = new Map<string, SourceEntry>();
  readonly shapes = new Map<string, SourceEntry[]>();
  /** Content sha256 of each regular file, by its header's virtual offset. */
  readonly digests = new Map<number, string>();
  /** Path suffixes (`pkg/lib/x.js` of `app/node_modules/pkg/lib/x.js`), first entry seen for each. */
  readonly suffixes = new Map<string, SourceEntry>();
  size = 0;

  /**
   * The old version of `path`: the same path, else the nearest-sized file whose name differs
   * only in digits, else the entry with the longest common path suffix (the same package file
   * of another app's node_modules).
   */
  oldVersion(path: string, size: number): SourceEntry | undefined {
    const same = this.paths.get(path);
    if (same !== undefined) return same;
    const candidates = this.shapes.get(shapeOf(path));
    let best: SourceEntry | undefined;
    for (const c of candidates ?? []) {
      if (c.size * SIMILAR_SIZE_RATIO < size || size * SIMILAR_SIZE_RATIO < c.size) continue;
      if (best === undefined || Math.abs(c.size - size) < Math.abs(best.size - size)) best = c;
    }
    if (best !== undefined) return best;
    for (let slash = path.indexOf("/"); slash >= 0; slash = path.indexOf("/", slash + 1)) {
      const found = this.suffixes.get(path.slice(slash + 1));
      if (found !== undefined) return found;
    }
    return undefined;
  }

  addSuffixes(path: string, entry: SourceEntry): void {
    for (let slash = path.indexOf("/"); slash >= 0; slash = path.indexOf("/", slash + 1)) {
      const suffix = path.slice(slash + 1);
      if (suffix !== "" && !this.suffixes.has(suffix)) this.suffixes.set(suffix, entry);
    }
  }
}

/** Bytes of the scanned layer's files whose content the source does not hold, by name extension. */
function literalByExtension(
  entries: readonly ScannedEntry[],
  digests: readonly (string | undefined)[],
  catalog: SourceCatalog,
): Map<string, number> {
  const bytes = new Map<string, number>();
  entries.forEach((e, i) => {
    const digest = digests[i];
    if (e.type !== "file" || digest === undefined || catalog.contents.has(digest)) return;
    const ext = extensionOf(e.path);
    bytes.set(ext, (bytes.get(ext) ?? 0) + e.size);
  });
  return bytes;
}

/**
 * The reference fill for a target layer: the source layers `order` names, in that order, as
 * ranges of the virtual source (`startOf` gives a layer's start there). Files of a kind the
 * target hardly has (FILL_SKIP_RATIO) are left out, their neighbours kept in tar order; with
 * nothing left out each layer is one range.
 */
function fillRanges(
  catalog: SourceCatalog,
  order: readonly number[],
  literal: ReadonlyMap<string, number>,
  startOf: (n: number) => number,
): { sourceOffset: number; length: number }[] {
  const whole = () => order.map((n) => ({ sourceOffset: startOf(n), length: catalog.layers[n]!.size }));
  const fill = new Map<string, number>();
  let fillTotal = 0;
  for (const n of order) {
    for (const [path, e] of catalog.layers[n]!.entries) {
      if (e.type !== "file") continue;
      const ext = extensionOf(path);
      fill.set(ext, (fill.get(ext) ?? 0) + e.size);
      fillTotal += e.size;
    }
  }
  let literalTotal = 0;
  for (const n of literal.values()) literalTotal += n;
  if (literalTotal === 0 || fillTotal === 0) return whole();
  const skip = new Set<string>();
  for (const [ext, n] of fill) {
    const share = n / fillTotal;
    if (share >= FILL_SKIP_SHARE && share > (FILL_SKIP_RATIO * (literal.get(ext) ?? 0)) / literalTotal)
      skip.add(ext);
  }
  if (skip.size === 0) return whole();
  const ranges: { sourceOffset: number; length: number }[] = [];
  for (const n of order) {
    const shift = startOf(n) - catalog.layers[n]!.start;
    for (const [path, e] of catalog.layers[n]!.entries) {
      if (e.type === "file" && skip.has(extensionOf(path))) continue;
      const from = e.headerOffset + shift;
      const end = e.dataOffset + Math.ceil(e.size / BLOCK_SIZE) * BLOCK_SIZE + shift;
      const last = ranges[ranges.length - 1];
      if (last !== undefined && last.sourceOffset + last.length === from)
        last.length = end - last.sourceOffset;
      else ranges.push({ sourceOffset: from, length: end - from });
    }
  }
  return ranges;
}

/** The name extension of a path (`.js`, `.map`), lower case, or "" when its last part has none. */
function extensionOf(path: string): string {
  const name = path.slice(path.lastIndexOf("/") + 1);
  const dot = name.lastIndexOf(".");
  return dot > 0 ? name.slice(dot).toLowerCase() : "";
}

/**
 * A kind of file (by name extension) is left out of a reference fill when it is at least
 * FILL_SKIP_SHARE of the fill layers' file bytes and over FILL_SKIP_RATIO times as common there
 * as among the target layer's new and changed files. On the new-app benchmark the other app's
 * source maps were 29% of its layer and 2% of the new app; leaving them out let more code into
 * the reference (1,200,150 → 1,196,780 bytes). Small kinds stay: every file left out splits a
 * range, and on the app update leaving out 190 KB of small kinds cost 600 bytes of tables.
 */
const FILL_SKIP_RATIO = 10;
const FILL_SKIP_SHARE = 0.1;

/** `libssl.so.3.0.13` and `libssl.so.3.0.14` share a shape. */
function shapeOf(path: string): string {
  return path.replace(/[0-9]+/g, "#");
}

function sha256Hex(): ReturnType<typeof createHash> {
  return createHash("sha256");
}

async function addSourceLayer(
  catalog: SourceCatalog,
  image: ImageReader,
  index: number,
  scratch: ScratchDir,
  onProgress?: (done: number) => void,
): Promise<void> {
  const info = image.info.layers[index]!;
  const layerNumber = catalog.layers.length;
  const start = catalog.size;
  const entries: [string, SourceEntry][] = [];
  let hash: ReturnType<typeof createHash> | undefined;
  const scanner = new TarScanner({
    entry(entry) {
      if (entry.type === "file" && entry.size > 0) hash = sha256Hex();
      const source: SourceEntry = {
        layer: layerNumber,
        type: entry.type,
        headerOffset: start + entry.headerOffset,
        dataOffset: start + entry.dataOffset,
        size: entry.size,
      };
      entries.push([entry.path, source]);
      catalog.paths.set(entry.path, source);
      catalog.addSuffixes(entry.path, source);
      if (entry.type === "file" && entry.size > 0) {
        const shape = shapeOf(entry.path);
        const list = catalog.shapes.get(shape);
        if (list === undefined) catalog.shapes.set(shape, [source]);
        else list.push(source);
      }
    },
    data(chunk) {
      hash!.update(chunk);
    },
    entryEnd(entry) {
      if (hash === undefined) return;
      const digest = hash.digest("hex");
      hash = undefined;
      catalog.digests.set(start + entry.headerOffset, digest);
      if (!catalog.contents.has(digest)) {
        catalog.contents.set(digest, {
          layer: layerNumber,
          type: entry.type,
          headerOffset: start + entry.headerOffset,
          dataOffset: start + entry.dataOffset,
          size: entry.size,
        });
      }
    },
  });
  let done = 0;
  const scan = (chunk: Uint8Array) => {
    scanner.push(chunk);
    done += chunk.length;
    onProgress?.(done);
  };
  let location = layerTarInPlace(image, index);
  if (location !== undefined) {
    // An uncompressed layer in a local file is read where it lies: scanned and hashed, not copied.
    const hash = sha256Hex();
    for await (const chunk of readFileStream(location.path, location.offset, location.size)) {
      hash.update(chunk);
      scan(chunk);
    }
    const digest = `sha256:${hash.digest("hex")}`;
    scanner.finish();
    if (digest !== info.diffId) {
      throw new Error(
        `source layer ${index} of ${describe(image)} hashes to ${digest}, but its config says ${info.diffId}; the source image is damaged, fetch it again`,
      );
    }
  } else {
    const path = scratch.file("source.tar");
    location = { path, offset: 0, size: await copyLayerTar(image, index, "source", path, scan) };
    scanner.finish();
  }
  catalog.layers.push({ diffId: info.diffId, location, size: location.size, start, entries });
  catalog.size += location.size;
}

/**
 * Copies layer `index`'s tar to the scratch file `path` and returns its size; `onChunk` sees every
 * chunk. The reader's stream checks the diff_id at its end (ImageReader.openLayerTar), so the copy
 * is not hashed again here; a mismatch, or a compressed blob that does not inflate, is reported
 * as that image being damaged.
 */
async function copyLayerTar(
  image: ImageReader,
  index: number,
  role: "source" | "target",
  path: string,
  onChunk: (chunk: Uint8Array) => void,
): Promise<number> {
  try {
    return await writeToFile(await image.openLayerTar(index), path, onChunk);
  } catch (err) {
    if (!(err instanceof DigestError || err instanceof CompressionError)) throw err;
    throw new Error(
      `${role} layer ${index} of ${describe(image)} is damaged: ${err.message}${role === "source" ? "; fetch the source image again" : ""}`,
    );
  }
}

function describe(image: ImageReader): string {
  const { repository, tag, configDigest } = image.info;
  return repository !== "" ? `${repository}:${tag}` : configDigest;
}

/** Walks a target layer's entries and turns what the catalog knows into encoder hints. */
function hintsFor(
  entries: readonly ScannedEntry[],
  digests: readonly (string | undefined)[],
  catalog: SourceCatalog,
): LayerHints {
  const hints: LayerHints = { copies: [], searches: [], uses: new Set() };
  entries.forEach((entry, i) => {
    const headerLength = entry.dataOffset - entry.headerOffset;
    const digest = digests[i];
    const old = catalog.oldVersion(entry.path, entry.size);
    // Unchanged content is copied from its old version, so copies follow the old layer's order.
    const found =
      digest === undefined || entry.size < MIN_COPY_LENGTH
        ? undefined
        : old !== undefined && catalog.digests.get(old.headerOffset) === digest
          ? old
          : catalog.contents.get(digest);
    if (found !== undefined) {
      // Headers change with mtime or path even when content does not; search the old header.
      if (old !== undefined) {
        hints.searches.push({
          targetOffset: entry.headerOffset,
          targetLength: headerLength,
          sourceOffset: old.headerOffset,
          sourceLength: old.dataOffset - old.headerOffset,
        });
        hints.uses.add(old.layer);
      }
      hints.copies.push({
        targetOffset: entry.dataOffset,
        length: entry.size,
        sourceOffset: found.dataOffset,
      });
      hints.uses.add(found.layer);
    } else if (old !== undefined) {
      // The header and the changed content, searched together against the old entry.
      hints.searches.push({
        targetOffset: entry.headerOffset,
        targetLength: headerLength + entry.size,
        sourceOffset: old.headerOffset,
        sourceLength: old.dataOffset - old.headerOffset + old.size,
        targetHeaderLength: headerLength,
        sourceHeaderLength: old.dataOffset - old.headerOffset,
      });
      hints.uses.add(old.layer);
    }
  });
  return hints;
}

/** Encodes `path` as a `ref-zstd` payload into `out`; returns length and sha256. */
async function encodeRefZstdPayload(
  targetPath: string,
  source: ConcatSource,
  hints: LayerHints,
  level: number | undefined,
  fill: readonly { sourceOffset: number; length: number }[] | undefined,
  pool: CompressPool | undefined,
  out: string,
  onBytes: (n: number) => void,
): Promise<{ length: number; sha256: string }> {
  const target = await FileSource.open(targetPath);
  const hash = createHash("sha256");
  let length = 0;
  try {
    const parts = encodeRefZstd(target, source, {
      copies: hints.copies,
      references: hints.searches,
      // gzip's input files (changed .gz files' texts) go beside the payload being written.
      scratchDir: dirname(out),
      ...(level !== undefined ? { level } : {}),
      ...(fill !== undefined && fill.length > 0 ? { fill } : {}),
      // One frame per worker compressing and one waiting, so no worker idles while the next segment is gathered.
      ...(pool !== undefined
        ? { compressFrame: pool.compressFrame, matchBinary: pool.matchBinary, framesAhead: pool.size }
        : {}),
    });
    await pipeline(
      Readable.from(parts, { objectMode: false }),
      async function* (payload: AsyncIterable<Uint8Array>) {
        for await (const chunk of payload) {
          hash.update(chunk);
          length += chunk.length;
          yield chunk;
        }
      },
      createWriteStream(out, { mode: 0o600 }),
    );
  } finally {
    await target.close();
  }
  onBytes(target.size);
  return { length, sha256: `sha256:${hash.digest("hex")}` };
}

/** Shifts hint source offsets after unused source layers were dropped from the virtual source. */
function relocate(hints: LayerHints, shift: (offset: number) => number): void {
  for (const c of hints.copies) c.sourceOffset = shift(c.sourceOffset);
  for (const s of hints.searches) s.sourceOffset = shift(s.sourceOffset);
}

export async function buildBundle(options: BuildBundleOptions): Promise<BuildBundleResult> {
  const started = Date.now();
  const { target, key } = options;
  const scratch = await ScratchDir.create(options.scratchDir);
  const progress = options.onProgress;
  try {
    const held = new Set<string>();
    for (const image of options.sources) for (const layer of image.info.layers) held.add(layer.diffId);
    const wanted = options.sourceLayers === undefined ? undefined : new Set(options.sourceLayers);
    const missing = target.info.layers.map((l) => !held.has(l.diffId));

    // Source layers: spooled once each, in the held images' order.
    const catalog = new SourceCatalog();
    if (missing.some(Boolean)) {
      const seen = new Set<string>();
      for (const image of options.sources) {
        for (let i = 0; i < image.info.layers.length; i++) {
          const layer = image.info.layers[i]!;
          if (seen.has(layer.diffId) || (wanted !== undefined && !wanted.has(layer.diffId))) continue;
          seen.add(layer.diffId);
          await addSourceLayer(catalog, image, i, scratch, (done) =>
            progress?.({
              phase: "source",
              diffId: layer.diffId,
              done,
              total: layer.compression === "none" ? layer.size : done,
            }),
          );
        }
      }
    }

    // Target layers: copied to scratch and scanned (pass one), collect hints.
    interface Pending {
      index: number;
      path: string;
      size: number;
      hints: LayerHints;
      /** The layer's x86 executables (content ranges), for the x86 filter of a plain-zstd payload. */
      x86: FilterRange[];
      /** The layer's files that start with the gzip magic (content ranges), for a plain payload's gzip pieces. */
      gzip: FilterRange[];
      /** Bytes of the layer's files that the source does not hold, by name extension. */
      literalByExtension: Map<string, number>;
      /** What compresses its plain payload if it gets one (decided in layer order: see BROTLI_BUDGET). */
      plainCompressor: PlainCompressor;
    }
    const searchWholeSource = options.searchWholeSource ?? true;
    // Plain compressors are chosen as layers are scanned, in layer order, so the same images always
    // make the same bundle whichever layer's encode finishes first.
    let brotliLeft = options.brotliBudget ?? BROTLI_BUDGET;
    const plainCompressorFor = (size: number): PlainCompressor => {
      if (options.plainCompressor !== undefined) return options.plainCompressor;
      if (size > (options.brotliMaxLayer ?? BROTLI_MAX_LAYER) || size > brotliLeft) return "zstd";
      brotliLeft -= size;
      return DEFAULT_PLAIN_COMPRESSOR;
    };
    const pending: Pending[] = [];
    let listed: SourceLayer[] = [];
    let parts: FileRangeSource[] = [];
    let source: ConcatSource | undefined;
    const openSource = async (layers: SourceLayer[]) => {
      listed = layers;
      parts = await Promise.all(layers.map((layer) => FileRangeSource.open(layer.location)));
      source = parts.length > 0 ? new ConcatSource(parts) : undefined;
    };
    const payloads = new Map<
      number,
      { path: string; length: number; sha256: string; codec: PayloadCodec; outputSize: number }
    >();
    const workers = options.compressWorkers ?? compressWorkerCount();
    const pool = workers >= 2 && missing.some(Boolean) ? new CompressPool(workers) : undefined;
    const plainPayload = (
      path: string,
      settings: PayloadSettings,
      out: string,
      report: (n: number) => void,
    ) =>
      pool !== undefined
        ? pool.encodePlainPayload(
            {
              ...settings,
              targetPath: path,
              out,
              scratchDir: scratch.path,
              compressor: settings.compressor ?? "zstd",
            },
            report,
          )
        : encodePayload(path, undefined, undefined, { ...settings, scratchDir: scratch.path }, out, report);
    const layerAt = (offset: number): number => {
      let n = catalog.layers.length - 1;
      while (n > 0 && catalog.layers[n]!.start > offset) n--;
      return n;
    };
    // The source layers each target layer copies most files from, most first: ref-zstd fills
    // spare reference room with them, because new files often sit beside old ones there (a new
    // app's packages beside another app's). On the new-app benchmark: 1,215,837 → 1,201,792 bytes
    // (by bytes of old versions instead, the Node.js layer came first and it grew to 1,221,454).
    const fillFor = (p: Pending, startOf: (n: number) => number) => {
      const weight = new Map<number, number>();
      for (const c of p.hints.copies) {
        const n = layerAt(c.sourceOffset);
        weight.set(n, (weight.get(n) ?? 0) + 1);
      }
      const order = [...weight.entries()].sort((a, b) => b[1] - a[1]).map(([n]) => n);
      return fillRanges(catalog, order, p.literalByExtension, startOf);
    };
    const encodeLayer = async (
      p: Pending,
      fill: { sourceOffset: number; length: number }[],
    ): Promise<void> => {
      const info = target.info.layers[p.index]!;
      const hinted = p.hints.copies.length > 0 || p.hints.searches.length > 0;
      const settings = {
        level: options.zstdLevel ?? DEFAULT_ZSTD_LEVEL,
        windowLog: options.zstdWindowLog ?? DEFAULT_ZSTD_WINDOW_LOG,
        searchWholeSource,
        ...(options.windowSize !== undefined ? { windowSize: options.windowSize } : {}),
      };
      const report = (done: number) =>
        progress?.({ phase: "encode", diffId: info.diffId, done, total: p.size });
      const preferred = options.codec ?? "ref-zstd";
      const plainAsked = preferred !== "ref-zstd" && preferred !== "vcdiff-zstd";
      const compressor: PlainCompressor = plainAsked
        ? preferred.startsWith("brotli")
          ? "brotli"
          : "zstd"
        : p.plainCompressor;
      // A whole-layer payload runs executables through the x86 filter unless `zstd` or `brotli` was asked for.
      const plainX86 =
        p.x86.length > 0 && preferred !== "zstd" && preferred !== "brotli" ? { x86: p.x86 } : {};
      // Far copies, and gzip files as their text, unless turned off or another plain codec was asked for.
      const farAsked = preferred === "zstd-far" || preferred === "brotli-far";
      const plainGzip =
        p.gzip.length > 0 &&
        options.plainGzip !== false &&
        (!plainAsked || preferred === "zstd-gz" || preferred === "brotli-gz" || farAsked)
          ? { gzip: p.gzip }
          : {};
      const farCopies = options.plainFarCopies !== false && (!plainAsked || farAsked);
      const plainSettings = { ...settings, ...plainX86, ...plainGzip, compressor, farCopies };
      const plainCodecFor = (result: { gzipPieces: number; farCopies: number }) =>
        plainCodecOf(compressor, plainX86.x86 !== undefined, result.gzipPieces > 0, result.farCopies > 0);
      let codec: PayloadCodec | "plain" =
        source === undefined || plainAsked
          ? "plain"
          : preferred === "ref-zstd" && hinted
            ? "ref-zstd"
            : hinted || searchWholeSource
              ? "vcdiff-zstd"
              : "plain";
      let out = scratch.file("payload");
      let length: number;
      let sha256: string;
      if (codec === "ref-zstd") {
        ({ length, sha256 } = await encodeRefZstdPayload(
          p.path,
          source!,
          p.hints,
          options.refZstdLevel,
          options.refZstdFill === false ? undefined : fill,
          pool,
          out,
          report,
        ));
      } else if (codec === "vcdiff-zstd") {
        ({ length, sha256 } = await encodePayload(p.path, source, p.hints, settings, out, report));
      } else {
        const plain = await plainPayload(p.path, plainSettings, out, report);
        ({ length, sha256 } = plain);
        codec = plainCodecFor(plain);
      }
      // Nothing known in common (a VCDIFF search on its own), or a ref-zstd payload that is
      // mostly literal data: keep the delta only if it beats the whole-layer payload. An explicit
      // codec is kept as asked.
      const checkPlain =
        (codec === "vcdiff-zstd" && !hinted) ||
        (codec === "ref-zstd" && options.codec === undefined && length > p.size * PLAIN_CHECK_SHARE);
      if (checkPlain) {
        const plain = scratch.file("payload");
        const alternative = await plainPayload(p.path, plainSettings, plain, report);
        if (alternative.length <= length) {
          await rm(out);
          out = plain;
          codec = plainCodecFor(alternative);
          ({ length, sha256 } = alternative);
        } else {
          await rm(plain);
        }
      }
      payloads.set(p.index, { path: out, length, sha256, codec, outputSize: p.size });
      await rm(p.path);
    };
    // Layers are independent: while workers compress one layer's frames, this thread scans the
    // next layer and plans (gathering literal bytes). The first failure stops the pool, so the
    // other layers fail soon instead of finishing for nothing; that failure is the one reported.
    let failed: { error: unknown } | undefined;
    const encodes: Promise<void>[] = [];
    const start = (p: Pending, fill: { sourceOffset: number; length: number }[]) => {
      encodes.push(
        encodeLayer(p, fill).catch(async (error: unknown) => {
          if (failed === undefined) {
            failed = { error };
            await pool?.close();
          }
        }),
      );
    };
    try {
      if (searchWholeSource) await openSource(catalog.layers);
      for (let i = 0; i < target.info.layers.length; i++) {
        if (!missing[i]) continue;
        const info = target.info.layers[i]!;
        const entries: ScannedEntry[] = [];
        const digests: (string | undefined)[] = [];
        const x86: FilterRange[] = [];
        const gzip: FilterRange[] = [];
        let hash: ReturnType<typeof createHash> | undefined;
        // The first bytes of a file, to recognise executables (if large enough to be worth the
        // x86 filter) and gzip files.
        let head: Uint8Array | undefined;
        let headLength = 0;
        const scanner = new TarScanner({
          entry(entry) {
            entries.push(entry);
            digests.push(undefined);
            hash = entry.type === "file" && entry.size > 0 ? sha256Hex() : undefined;
            head =
              entry.type === "file" && entry.size >= MIN_GZIP_FILE
                ? new Uint8Array(entry.size >= MIN_FILTERED_FILE ? ELF_HEAD : GZIP_MAGIC.length)
                : undefined;
            headLength = 0;
          },
          data(chunk) {
            hash!.update(chunk);
            if (head !== undefined && headLength < head.length) {
              const n = Math.min(head.length - headLength, chunk.length);
              head.set(chunk.subarray(0, n), headLength);
              headLength += n;
            }
          },
          entryEnd() {
            if (hash !== undefined) digests[digests.length - 1] = hash.digest("hex");
            hash = undefined;
            const entry = entries[entries.length - 1]!;
            if (head !== undefined && isX86Elf(head)) {
              const part = head.subarray(0, headLength);
              for (const r of executableRanges(part, entry.size))
                x86.push({ offset: entry.dataOffset + r.offset, length: r.length });
            } else if (head !== undefined && entry.size <= MAX_GZIP_TEXT && startsWithGzipMagic(head))
              gzip.push({ offset: entry.dataOffset, length: entry.size });
            head = undefined;
          },
        });
        let done = 0;
        const path = scratch.file("target.tar");
        const size = await copyLayerTar(target, i, "target", path, (chunk) => {
          scanner.push(chunk);
          done += chunk.length;
          progress?.({
            phase: "target",
            diffId: info.diffId,
            done,
            total: info.compression === "none" ? info.size : done,
          });
        });
        scanner.finish();
        const p: Pending = {
          index: i,
          path,
          size,
          hints: hintsFor(entries, digests, catalog),
          x86,
          gzip,
          literalByExtension: literalByExtension(entries, digests, catalog),
          plainCompressor: plainCompressorFor(size),
        };
        pending.push(p);
        // Every source layer is listed and offsets stay as they are: this layer can start now.
        if (searchWholeSource)
          start(
            p,
            fillFor(p, (n) => catalog.layers[n]!.start),
          );
      }

      if (!searchWholeSource) {
        // Without whole-source search only the source layers some hint reads from are listed.
        const used = new Set<number>();
        for (const p of pending) for (const n of p.hints.uses) used.add(n);
        const newStart = new Map<number, number>();
        let virtualSize = 0;
        catalog.layers.forEach((layer, n) => {
          if (!used.has(n)) return;
          newStart.set(n, virtualSize);
          virtualSize += layer.size;
        });
        const fills = new Map(pending.map((p) => [p, fillFor(p, (n) => newStart.get(n)!)]));
        for (const p of pending)
          relocate(p.hints, (offset) => {
            const n = layerAt(offset);
            return offset - catalog.layers[n]!.start + newStart.get(n)!;
          });
        await openSource(catalog.layers.filter((_, n) => used.has(n)));
        for (const p of pending) start(p, fills.get(p)!);
      }
      await Promise.all(encodes);
      if (failed !== undefined) throw failed.error;
    } finally {
      // After a failed scan, layers already started must stop before their sources close.
      await pool?.close();
      await Promise.all(encodes);
      await Promise.all(parts.map((part) => part.close()));
    }

    let offset = 0;
    const layers: LayerEntry[] = target.info.layers.map((_, i) => {
      const payload = payloads.get(i);
      if (payload === undefined) return { present: true };
      const entry: LayerEntry = {
        offset,
        length: payload.length,
        sha256: payload.sha256,
        outputSize: payload.outputSize,
        diffId: target.info.layers[i]!.diffId,
        codec: payload.codec,
      };
      offset += payload.length;
      return entry;
    });
    const layerSizes = new Map<string, number>();
    for (const p of pending) layerSizes.set(target.info.layers[p.index]!.diffId, p.size);
    for (const layer of catalog.layers) layerSizes.set(layer.diffId, layer.size);
    const targetLayers: LayerRef[] = await Promise.all(
      target.info.layers.map(async (layer) => ({
        diffId: layer.diffId,
        size: layerSizes.get(layer.diffId) ?? (await sizeOfHeldLayer(layer.diffId, options.sources)),
      })),
    );
    const manifest: BundleManifest = {
      format: 1,
      target: {
        repository: target.info.repository,
        tag: target.info.tag,
        manifestDigest: target.info.manifestDigest ?? "",
        config: Buffer.from(target.info.config).toString("base64"),
        configDigest: target.info.configDigest,
        layers: targetLayers,
      },
      // Plain payloads read no source: a bundle of only those needs no source layer on the device.
      sources: [...payloads.values()].some((p) => p.codec === "ref-zstd" || p.codec === "vcdiff-zstd")
        ? listed.map((layer) => ({ diffId: layer.diffId, size: layer.size }))
        : [],
      layers,
    };
    const bytes = await writeBundleFile(
      options.out,
      manifest,
      key,
      target.info.layers.map((_, i) => payloads.get(i)?.path),
    );
    return {
      path: options.out,
      bytes,
      manifest,
      layers: target.info.layers.map((layer, i) => {
        const payload = payloads.get(i);
        return {
          diffId: layer.diffId,
          size: targetLayers[i]!.size,
          present: payload === undefined,
          ...(payload !== undefined ? { codec: payload.codec } : {}),
          payloadBytes: payload?.length ?? 0,
        };
      }),
      durationMs: Date.now() - started,
    };
  } finally {
    await scratch.remove();
  }
}

/** The uncompressed size of a layer the device holds: counted from the source image's tar (configs do not record it). */
async function sizeOfHeldLayer(diffId: string, sources: readonly ImageReader[]): Promise<number> {
  for (const image of sources) {
    const i = image.info.layers.findIndex((l) => l.diffId === diffId);
    if (i < 0) continue;
    if (image.info.layers[i]!.compression === "none") return image.info.layers[i]!.size;
    let size = 0;
    for await (const chunk of await image.openLayerTar(i)) size += chunk.length;
    return size;
  }
  throw new Error(`layer ${diffId} is marked present but no source image holds it`);
}

/** Writes header, manifest, signature and payloads to a temporary name, then renames it into place. */
export async function writeBundleFile(
  out: string,
  manifest: BundleManifest,
  key: SigningKey,
  payloadPaths: readonly (string | undefined)[],
): Promise<number> {
  const manifestBytes = encodeManifest(manifest);
  const signature = encodeSignatureBlock(signManifest(manifestBytes, key));
  let payloadsLength = 0;
  for (const entry of manifest.layers) if ("length" in entry) payloadsLength += entry.length;
  const header = encodeHeader({
    manifestLength: manifestBytes.length,
    signatureLength: SIGNATURE_BLOCK_SIZE,
    payloadsLength,
  });
  const temporary = `${out}.partial-${process.pid}`;
  const handle = await open(temporary, "w", 0o644);
  try {
    let position = 0;
    for (const part of [header, manifestBytes, signature]) {
      await handle.write(part, 0, part.length, position);
      position += part.length;
    }
    for (const path of payloadPaths) {
      if (path === undefined) continue;
      for await (const chunk of readFileStream(path)) {
        await handle.write(chunk, 0, chunk.length, position);
        position += chunk.length;
      }
    }
    await handle.sync();
  } catch (err) {
    await handle.close();
    await rm(temporary, { force: true });
    throw err;
  }
  await handle.close();
  await rename(temporary, out);
  const { size } = await stat(out);
  if (size !== HEADER_SIZE + manifestBytes.length + SIGNATURE_BLOCK_SIZE + payloadsLength) {
    throw new Error(
      `wrote ${size} bytes to ${out}, expected ${HEADER_SIZE + manifestBytes.length + SIGNATURE_BLOCK_SIZE + payloadsLength}`,
    );
  }
  return size;
}
