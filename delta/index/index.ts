/**
 * The image index: per layer its diff_id, sizes and entries; per regular file its path, size,
 * sha256, an estimate of its compressed size, and content-defined chunks for large files.
 * It is what the cloud keeps per image and what planning (plan.ts) reads; it never holds content.
 */
import { createHash } from "node:crypto";
import { Compressor } from "zstd-napi";
import type { ImageReader } from "../image/types.js";
import { type Chunk, Chunker } from "./chunker.js";
import { type ScannedEntry, TarScanner } from "./tar-scan.js";

export const IMAGE_INDEX_VERSION = 1;
/** Files at least this large get chunk hashes, so planning can see partial matches. */
export const CHUNKED_FILE_MIN = 64 * 1024;
/** File bytes are compressed in blocks of the bundle encoder's zstd window (8 MiB) to estimate compressibility at level 3. */
const SAMPLE_BLOCK = 8 * 1024 * 1024;
const SAMPLE_LEVEL = 3;

export interface FileIndex {
  /** Path inside the layer, without leading `./` or `/`. */
  readonly path: string;
  readonly size: number;
  /** Hex sha256 of the content. */
  readonly sha256: string;
  /** Estimated compressed size in bytes. */
  readonly z: number;
  /** Content-defined chunks (hash prefix, length) of files of CHUNKED_FILE_MIN bytes or more. */
  readonly chunks?: readonly Chunk[];
}

export interface LayerIndex {
  readonly diffId: string;
  /** Uncompressed tar size. */
  readonly size: number;
  /** Digest and size of the blob as stored (what `docker pull` downloads). */
  readonly blobDigest: string;
  readonly blobSize: number;
  /** Number of tar entries (each has header blocks). */
  readonly entries: number;
  /** 12-hex-digit sha256 prefixes of each entry's header blocks, in order. */
  readonly headers: readonly string[];
  readonly files: readonly FileIndex[];
}

export interface ImageIndex {
  readonly version: number;
  readonly repository: string;
  readonly tag: string;
  readonly manifestDigest?: string;
  readonly configDigest: string;
  readonly layers: readonly LayerIndex[];
}

/** Estimates compressed sizes by compressing file bytes in 8 MiB blocks and sharing each block's output among its files. */
class CompressibilitySampler {
  private readonly compressor = new Compressor();
  private readonly block = new Uint8Array(SAMPLE_BLOCK);
  private fill = 0;
  /** (file number, bytes in this block) pairs. */
  private members: number[] = [];
  readonly estimates: number[] = [];

  constructor() {
    this.compressor.setParameters({ compressionLevel: SAMPLE_LEVEL, windowLog: 23 });
  }

  add(file: number, data: Uint8Array): void {
    while (this.estimates.length <= file) this.estimates.push(0);
    let at = 0;
    while (at < data.length) {
      const take = Math.min(SAMPLE_BLOCK - this.fill, data.length - at);
      this.block.set(data.subarray(at, at + take), this.fill);
      this.fill += take;
      at += take;
      const n = this.members.length;
      if (n > 0 && this.members[n - 2] === file) this.members[n - 1]! += take;
      else this.members.push(file, take);
      if (this.fill === SAMPLE_BLOCK) this.flush();
    }
  }

  flush(): void {
    if (this.fill === 0) return;
    const compressed = this.compressor.compress(this.block.subarray(0, this.fill)).length;
    for (let i = 0; i < this.members.length; i += 2) {
      this.estimates[this.members[i]!]! += (compressed * this.members[i + 1]!) / this.fill;
    }
    this.fill = 0;
    this.members = [];
  }
}

export interface LayerScanResult {
  readonly size: number;
  readonly entries: number;
  readonly headers: string[];
  readonly files: FileIndex[];
  /** The scanned entries in order, for the encoder. */
  readonly scanned: ScannedEntry[];
}

/** Indexes one uncompressed layer tar stream. */
export async function indexLayerTar(tar: AsyncIterable<Uint8Array>): Promise<LayerScanResult> {
  const headers: string[] = [];
  const scanned: ScannedEntry[] = [];
  const pending: { path: string; size: number; sha256: string; chunks?: Chunk[] }[] = [];
  const sampler = new CompressibilitySampler();
  let hash: ReturnType<typeof createHash> | undefined;
  let chunker: Chunker | undefined;
  let fileNumber = -1;
  const scanner = new TarScanner({
    entry(entry) {
      scanned.push(entry);
      headers.push(entry.headerHash);
      if (entry.type === "file") {
        fileNumber = pending.length;
        pending.push({ path: entry.path, size: entry.size, sha256: "" });
        hash = createHash("sha256");
        chunker = entry.size >= CHUNKED_FILE_MIN ? new Chunker() : undefined;
      }
    },
    data(chunk) {
      hash!.update(chunk);
      chunker?.push(chunk);
      sampler.add(fileNumber, chunk);
    },
    entryEnd(entry) {
      if (entry.type !== "file") return;
      const file = pending[fileNumber]!;
      file.sha256 = hash!.digest("hex");
      if (chunker !== undefined) file.chunks = chunker.finish();
      hash = undefined;
      chunker = undefined;
    },
  });
  for await (const chunk of tar) scanner.push(chunk);
  const size = scanner.finish();
  sampler.flush();
  const files: FileIndex[] = pending.map((f, i) => ({
    path: f.path,
    size: f.size,
    sha256: f.sha256,
    z: Math.round(sampler.estimates[i] ?? 0),
    ...(f.chunks !== undefined ? { chunks: f.chunks } : {}),
  }));
  return { size, entries: scanned.length, headers, files, scanned };
}

/** Indexes every layer of an image (one pass over each layer's tar). */
export async function indexImage(
  image: ImageReader,
  onProgress?: (layer: number, bytes: number) => void,
): Promise<ImageIndex> {
  const layers: LayerIndex[] = [];
  for (let i = 0; i < image.info.layers.length; i++) {
    const info = image.info.layers[i]!;
    const tar = await image.openLayerTar(i);
    const counted = onProgress === undefined ? tar : countBytes(tar, (n) => onProgress(i, n));
    const scan = await indexLayerTar(counted);
    layers.push({
      diffId: info.diffId,
      size: scan.size,
      blobDigest: info.digest,
      blobSize: info.size,
      entries: scan.entries,
      headers: scan.headers,
      files: scan.files,
    });
  }
  return {
    version: IMAGE_INDEX_VERSION,
    repository: image.info.repository,
    tag: image.info.tag,
    ...(image.info.manifestDigest !== undefined ? { manifestDigest: image.info.manifestDigest } : {}),
    configDigest: image.info.configDigest,
    layers,
  };
}

async function* countBytes(
  stream: AsyncIterable<Uint8Array>,
  report: (bytes: number) => void,
): AsyncGenerator<Uint8Array> {
  let total = 0;
  for await (const chunk of stream) {
    total += chunk.length;
    report(total);
    yield chunk;
  }
}

/** Reads an index back from JSON, refusing other versions. */
export function parseImageIndex(text: string): ImageIndex {
  const value = JSON.parse(text) as ImageIndex;
  if (
    value === null ||
    typeof value !== "object" ||
    value.version !== IMAGE_INDEX_VERSION ||
    !Array.isArray(value.layers)
  ) {
    throw new Error(
      `expected an image index of version ${IMAGE_INDEX_VERSION}; rebuild it with 'deltaship index'`,
    );
  }
  return value;
}
