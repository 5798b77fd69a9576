/**
 * Planning: given the index of a target image and the indexes of the images a device holds,
 * decide which target layers are already there, which held layers to list as the delta's
 * virtual source, and estimate the bundle size against what `docker pull` would send.
 * Pure: indexes in, a plan out.
 */
import type { FileIndex, ImageIndex, LayerIndex } from "./index.js";

/**
 * Cost model in bundle bytes for the default codecs (`ref-zstd`, with diff pieces for changed
 * binaries, and `zstd-x86` for first images; first images went `brotli-x86` in the seventh
 * session, 3.4% smaller, and the model, left as it was, estimates them at 1.04×). Fitted on the benchmark's cached indexes against
 * the bundles the benchmark built (bench/RESULTS.md, "Planning estimate"); tests/index/plan.test.ts
 * checks it against bundles built from real binaries and real npm version bumps.
 */
const COST = {
  /** A header group found verbatim in the source: a repeat match against the old header. */
  headerCopy: 2,
  /** A header group not found: mostly zeros and octal fields, compresses well next to its neighbours. */
  headerLiteral: 22,
  /** File content found by hash: one copy piece. (Repeats within the layer need no rule: `z` already shares a block's output among its files.) */
  fileCopy: 2,
  /** zstd -19/-22 (with the x86 filter on first images) over new content versus the level-3 sample `z`: scenario 1 is 69.5 MB against 92.4 MB of `z`. */
  literalFactor: 0.75,
  /** A new file in a directory the source holds (a package that gained a file) is compressed next to its old siblings: the npm bumps of tests/index/plan.test.ts cost a third of `z` there. */
  newBesideOld: 0.35,
  /**
   * A changed executable or library of APPROX_MIN_SIZE or more goes by diff pieces: the node
   * 20.20.1 → 20.20.2 binary cost 1.16 MB of its 33.5 MB `z` (3.5%) as byte differences; as x86
   * diff pieces its pieces take 15% less (1.38 → 1.18 MB, bench/refzstd-approx.ts), so 3.0%.
   */
  changedBinary: 0.03,
  /** Any other changed file is compressed against its aligned old version: npm version bumps keep about 12% of their `z` (scenario 3 and tests/index/plan.test.ts). */
  changedText: 0.12,
  /** A changed file that is itself compressed (zip, xz…) differs from its old version throughout and zstd cannot shrink it: its full size. */
  changedCompressed: 1,
  /**
   * A changed `.gz` file whose old version is one too goes as its text against the old text when
   * GNU gzip rebuilds it (Debian's changelogs and man pages): scenario 4's 349 changed `.gz` files,
   * 2.31 MB, cost 59 KB in their frame plus their share of tables and headers.
   */
  changedGzip: 0.04,
  /**
   * A new `.gz` file in a plain payload goes as its text when GNU gzip rebuilds it and the text is
   * at most 512 KiB (`brotli-gz`): the first image's 1,506 Debian `.gz` files (11.3 MB, `z` 6.06 MB)
   * made its bundle 3.1 MB smaller, so their share of the estimate drops by as much: from the
   * literal factor's 0.75 of `z` (4.55 MB) to 0.24 (1.45 MB).
   */
  newGzip: 0.24,
  /** Manifest bytes per listed source layer and per target layer, plus the fixed part. */
  manifestPerLayer: 160,
  manifestFixed: 600,
  /** Per payload: zstd frame and codec header. */
  perPayload: 40,
};

/** The encoder sends changed binaries of this size or more as diff pieces (delta/refzstd/encoder.ts APPROX_MIN_SIZE). */
const APPROX_MIN_SIZE = 64 * 1024;
/** The encoder takes a differently named file as the old version only within this size ratio (delta/bundle/diff.ts). */
const SIMILAR_SIZE_RATIO = 2;
/** Over this share of its layer, a payload against the sources is weighed against whole-layer zstd (delta/bundle/diff.ts PLAIN_CHECK_SHARE). */
const PLAIN_CHECK_SHARE = 1 / 8;
/** Names of gzip files: a changed one whose old version is one too is recompressed on the device (delta/refzstd/regzip.ts). */
const GZIP_NAME = /\.gz$/i;
/** Names of already-compressed formats: a change rewrites them from the first changed byte on. */
const COMPRESSED_NAME = /\.(gz|tgz|xz|txz|bz2|zst|lz4|br|zip|jar|war|whl|apk|png|jpe?g|gif|webp|woff2?)$/i;
/** Names of executables and libraries (the index keeps no content, so the name stands in for the encoder's ELF check): no extension, or a shared or static library or native module. */
const BINARY_NAME = /(^|\/)[^./]+$|\.so(\.[0-9]+)*$|\.(node|a|o)$/;

/** Adding a source layer must save at least this many estimated bytes: each listed layer narrows which devices can use the bundle. */
const MIN_SOURCE_GAIN = 512;

export interface PlannedLayer {
  readonly diffId: string;
  readonly size: number;
  readonly present: boolean;
  /** Estimated payload bytes (0 when present). */
  readonly estimatedBytes: number;
  /** What `docker pull` downloads for this layer (its stored blob), 0 when present. */
  readonly blobBytes: number;
}

export interface SourcePlan {
  /** Per target layer, in order. */
  readonly layers: readonly PlannedLayer[];
  /** Held layers to list as the virtual source, in order. */
  readonly sources: readonly { readonly diffId: string; readonly size: number }[];
  readonly estimatedBundleBytes: number;
  /** Sum of the stored blob sizes of the missing layers: what a pull would send. */
  readonly fullImageBytes: number;
}

/** What a set of source layers offers the encoder, for cost lookups. */
interface SourceView {
  readonly headers: Set<string>;
  readonly contents: Set<string>;
  readonly paths: Map<string, FileIndex>;
  /** Files by name shape (digits replaced), as the encoder finds renamed versions. */
  readonly shapes: Map<string, FileIndex[]>;
  /** Path suffixes, first file seen for each (the same package file in another app's node_modules). */
  readonly suffixes: Map<string, FileIndex>;
  /** Directories holding files. */
  readonly directories: Set<string>;
}

function viewOf(layer: LayerIndex): SourceView {
  const view: SourceView = {
    headers: new Set(layer.headers),
    contents: new Set(),
    paths: new Map(),
    shapes: new Map(),
    suffixes: new Map(),
    directories: new Set(),
  };
  for (const file of layer.files) {
    view.contents.add(file.sha256);
    view.paths.set(file.path, file);
    view.directories.add(directoryOf(file.path));
    const shape = shapeOf(file.path);
    const list = view.shapes.get(shape);
    if (list === undefined) view.shapes.set(shape, [file]);
    else list.push(file);
    for (let slash = file.path.indexOf("/"); slash >= 0; slash = file.path.indexOf("/", slash + 1)) {
      const suffix = file.path.slice(slash + 1);
      if (suffix !== "" && !view.suffixes.has(suffix)) view.suffixes.set(suffix, file);
    }
  }
  return view;
}

function directoryOf(path: string): string {
  return path.slice(0, Math.max(0, path.lastIndexOf("/")));
}

/** `libssl.so.3.0.13` and `libssl.so.3.0.14` share a shape, as in the encoder. */
function shapeOf(path: string): string {
  return path.replace(/[0-9]+/g, "#");
}

function anyHas<T>(views: readonly SourceView[], pick: (v: SourceView) => Set<T>, key: T): boolean {
  for (const v of views) if (pick(v).has(key)) return true;
  return false;
}

/** The old version the encoder would diff `file` against: same path, else similar name and size, else a common path suffix. */
function oldVersion(views: readonly SourceView[], file: FileIndex): FileIndex | undefined {
  for (let i = views.length - 1; i >= 0; i--) {
    const same = views[i]!.paths.get(file.path);
    if (same !== undefined) return same;
  }
  const shape = shapeOf(file.path);
  let best: FileIndex | undefined;
  for (const view of views) {
    for (const c of view.shapes.get(shape) ?? []) {
      if (c.size * SIMILAR_SIZE_RATIO < file.size || file.size * SIMILAR_SIZE_RATIO < c.size) continue;
      if (best === undefined || Math.abs(c.size - file.size) < Math.abs(best.size - file.size)) best = c;
    }
  }
  if (best !== undefined) return best;
  for (let slash = file.path.indexOf("/"); slash >= 0; slash = file.path.indexOf("/", slash + 1)) {
    const suffix = file.path.slice(slash + 1);
    for (const view of views) {
      const found = view.suffixes.get(suffix);
      if (found !== undefined) return found;
    }
  }
  return undefined;
}

/** Share of a changed file's cost: gzip files by their text, other compressed formats in full, big binaries by diff pieces, the rest against the old version. */
function changedCost(file: FileIndex, old: FileIndex): number {
  if (GZIP_NAME.test(file.path) && GZIP_NAME.test(old.path)) return file.size * COST.changedGzip;
  if (COMPRESSED_NAME.test(file.path)) return file.size * COST.changedCompressed;
  if (file.size >= APPROX_MIN_SIZE && BINARY_NAME.test(file.path)) return file.z * COST.changedBinary;
  return file.z * COST.changedText;
}

/**
 * Estimated payload bytes for one target layer given the chosen source layers: the smaller of
 * the delta and whole-layer zstd when the diff would weigh them (it sends the smaller).
 */
export function estimateLayerBytes(layer: LayerIndex, views: readonly SourceView[]): number {
  const delta = estimateAgainst(layer, views);
  if (views.length === 0 || delta <= layer.size * PLAIN_CHECK_SHARE) return delta;
  return Math.min(delta, estimateAgainst(layer, []));
}

function estimateAgainst(layer: LayerIndex, views: readonly SourceView[]): number {
  let bytes = COST.perPayload;
  for (const header of layer.headers) {
    bytes += anyHas(views, (v) => v.headers, header) ? COST.headerCopy : COST.headerLiteral;
  }
  // A changed file's cost is a share of its own size; a repeat of it later in the layer is one zstd match.
  const changed = new Set<string>();
  for (const file of layer.files) {
    if (file.size === 0) continue;
    if (anyHas(views, (v) => v.contents, file.sha256) || changed.has(file.sha256)) {
      bytes += COST.fileCopy;
      continue;
    }
    const old = oldVersion(views, file);
    if (old !== undefined) {
      changed.add(file.sha256);
      bytes += changedCost(file, old);
    } else if (anyHas(views, (v) => v.directories, directoryOf(file.path))) {
      bytes += file.z * COST.newBesideOld;
    } else if (views.length === 0 && GZIP_NAME.test(file.path)) {
      bytes += file.z * COST.newGzip;
    } else {
      bytes += file.z * COST.literalFactor;
    }
  }
  return Math.round(bytes);
}

/**
 * Chooses source layers greedily (the held layer that saves the most estimated bytes, until
 * none saves MIN_SOURCE_GAIN) and estimates the resulting bundle.
 */
export function planSources(target: ImageIndex, held: readonly ImageIndex[]): SourcePlan {
  const heldLayers = new Map<string, LayerIndex>();
  for (const image of held)
    for (const layer of image.layers) if (!heldLayers.has(layer.diffId)) heldLayers.set(layer.diffId, layer);
  const missing = target.layers.filter((l) => !heldLayers.has(l.diffId));
  const candidates = [...heldLayers.values()].map((layer) => ({ layer, view: viewOf(layer) }));

  const chosen: typeof candidates = [];
  const costOf = (views: SourceView[]) => missing.reduce((sum, l) => sum + estimateLayerBytes(l, views), 0);
  let current = costOf([]);
  for (;;) {
    let best: (typeof candidates)[number] | undefined;
    let bestCost = current;
    const base = chosen.map((c) => c.view);
    for (const candidate of candidates) {
      if (chosen.includes(candidate)) continue;
      const cost = costOf([...base, candidate.view]) + COST.manifestPerLayer;
      if (cost < bestCost) {
        bestCost = cost;
        best = candidate;
      }
    }
    if (best === undefined || current - bestCost < MIN_SOURCE_GAIN) break;
    chosen.push(best);
    current = bestCost - COST.manifestPerLayer;
  }
  // The virtual source keeps the held images' layer order, so offsets are stable for every device.
  const order = candidates.filter((c) => chosen.includes(c));
  const views = order.map((c) => c.view);
  const layers: PlannedLayer[] = target.layers.map((layer) => {
    const present = heldLayers.has(layer.diffId);
    return {
      diffId: layer.diffId,
      size: layer.size,
      present,
      estimatedBytes: present ? 0 : estimateLayerBytes(layer, views),
      blobBytes: present ? 0 : layer.blobSize,
    };
  });
  const payloadBytes = layers.reduce((sum, l) => sum + l.estimatedBytes, 0);
  return {
    layers,
    sources: order.map((c) => ({ diffId: c.layer.diffId, size: c.layer.size })),
    estimatedBundleBytes:
      payloadBytes + COST.manifestFixed + COST.manifestPerLayer * (order.length + target.layers.length),
    fullImageBytes: layers.reduce((sum, l) => sum + l.blobBytes, 0),
  };
}
