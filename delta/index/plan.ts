/**
 * Planning: given the index of a target image and the indexes of the images a device holds,
 * decide which target layers are already there, which held layers to list as the delta's
 * virtual source, and estimate the bundle size against what `docker pull` would send.
 * Pure: indexes in, a plan out.
 */
import type { FileIndex, ImageIndex, LayerIndex } from "./index.js";

/**
 * Cost model, in compressed bytes, fitted on real layer pairs (tests/index/plan.test.ts checks it)
 * for the default `ref-zstd` codec: copies cost about a byte of piece table each, and a changed
 * file compressed against its aligned old version keeps a small share of its size (a real npm
 * version bump: 5%, against 27% with VCDIFF).
 */
const COST = {
  /** A header group found verbatim in the source: a repeat match against the old header. */
  headerCopy: 2,
  /** A header group not found: mostly zeros and octal fields, compresses well next to its neighbours. */
  headerLiteral: 22,
  /** File content found by hash: one copy piece. */
  fileCopy: 2,
  /** A changed small file, compressed against its old version, keeps this share of its compressed size. */
  changedSmallFile: 0.05,
  /** zstd -19 over the payload versus the level-3 sample the index holds. */
  literalFactor: 0.8,
  /** Manifest bytes per listed source layer and per target layer, plus the fixed part. */
  manifestPerLayer: 160,
  manifestFixed: 600,
  /** Per payload: zstd frame and VCDIFF header. */
  perPayload: 40,
};

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
  readonly chunks: Set<string>;
}

function viewOf(layer: LayerIndex): SourceView {
  const view: SourceView = {
    headers: new Set(layer.headers),
    contents: new Set(),
    paths: new Map(),
    chunks: new Set(),
  };
  for (const file of layer.files) {
    view.contents.add(file.sha256);
    view.paths.set(file.path, file);
    if (file.chunks !== undefined) for (const [hash] of file.chunks) view.chunks.add(hash);
  }
  return view;
}

function anyHas<T>(views: readonly SourceView[], pick: (v: SourceView) => Set<T>, key: T): boolean {
  for (const v of views) if (pick(v).has(key)) return true;
  return false;
}

function oldVersion(views: readonly SourceView[], path: string): FileIndex | undefined {
  for (let i = views.length - 1; i >= 0; i--) {
    const file = views[i]!.paths.get(path);
    if (file !== undefined) return file;
  }
  return undefined;
}

/** Estimated payload bytes for one target layer given the chosen source layers. */
export function estimateLayerBytes(layer: LayerIndex, views: readonly SourceView[]): number {
  let bytes = COST.perPayload;
  for (const header of layer.headers) {
    bytes += anyHas(views, (v) => v.headers, header) ? COST.headerCopy : COST.headerLiteral;
  }
  for (const file of layer.files) {
    if (file.size === 0) continue;
    if (anyHas(views, (v) => v.contents, file.sha256)) {
      bytes += COST.fileCopy;
      continue;
    }
    const old = oldVersion(views, file.path);
    if (old === undefined) {
      bytes += file.z * COST.literalFactor;
    } else if (file.chunks !== undefined && old.chunks !== undefined) {
      let unmatched = 0;
      let matched = 0;
      for (const [hash, length] of file.chunks) {
        if (anyHas(views, (v) => v.chunks, hash)) matched++;
        else unmatched += length;
      }
      bytes += (file.z * COST.literalFactor * unmatched) / file.size + matched * COST.fileCopy;
    } else {
      bytes += file.z * COST.literalFactor * COST.changedSmallFile;
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
