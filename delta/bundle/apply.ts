/**
 * Applying a bundle: check the header and the signature, check every needed layer is at hand,
 * decode each payload (zstd stream → VCDIFF against the virtual source → scratch file, or straight
 * into a file writer that drops its temporary file on failure) with memory bounded by the windows,
 * verify every layer's diff_id and the config digest, and only then hand the verified image to a
 * writer. On any failure the scratch folder goes and nothing reaches the destination (with
 * writeWhileDecoding, blobs already pushed stay, each checked, but no manifest names them).
 */
import { createHash, randomUUID } from "node:crypto";
import { open, statfs } from "node:fs/promises";
import { join } from "node:path";
import {
  type FarCopy,
  FarCopyError,
  FarTableError,
  insertFarCopies,
  keptRanges,
  readFarTables,
} from "../filters/far.js";
import { type GzipPiece, GzipTableError, readGzipTable, rebuildGzipPieces } from "../filters/gzip.js";
import { type FilterRange, FilterTableError, filterRanges, readFilterTable } from "../filters/payload.js";
import { DigestError, verifyingStream } from "../image/digest.js";
import { FileRangeSource, layerTarInPlace } from "../image/file-blob.js";
import { DIGEST_INVALID } from "../image/registry/client.js";
import { RegistryError } from "../image/registry/errors.js";
import type { BlobLocation, ImageReader, ImageToWrite, LayerToWrite, LocalLayer } from "../image/types.js";
import { decodeRefZstd, GzipToolError, RefZstdError } from "../refzstd/index.js";
import { GzipMismatchError } from "../refzstd/regzip.js";
import { decode } from "../vcdiff/decoder.js";
import { ConcatSource, FileSource, type SourceReader } from "../vcdiff/source.js";
import {
  BundleError,
  type BundleHead,
  type BundleManifest,
  isPresent,
  type LayerPayload,
  manifestConfig,
  readBundleHead,
  requiredLayers,
} from "./format.js";
import { inflateBrotliFileRange, inflateFileRange } from "./inflate.js";
import {
  ArrivingFileSource,
  readFileStream,
  ScratchDir,
  WrittenSoFar,
  writeToFile,
  writeToHandle,
} from "./scratch.js";
import { type TrustedKey, verifyManifest } from "./sign.js";

/** zstd frames that need a window above 2^26 (64 MiB) are refused: a device decodes in bounded memory. */
export const MAX_ZSTD_WINDOW_LOG = 26;
/** Free space kept on top of the layers being rebuilt, so a device never fills its disk to the last byte. */
const DISK_MARGIN = 64 * 1024 * 1024;
const READ_PIECE = 1024 * 1024;

/** Gives the uncompressed, verified tar of a layer the device holds. */
export interface LayerProvider {
  has(diffId: string): Promise<boolean>;
  /**
   * A random-access reader over the layer's tar. It need not be hashed first: every rebuilt
   * layer is checked against its diff_id, and layers copied into the image are hashed as written.
   * Given `size` (what the bundle expects), a layer still being copied to this device's scratch
   * may come back at once, read as it arrives (`SourceReader.whenReadable`) and at most `size`
   * bytes long; `locate` then resolves once it has arrived whole, or rejects if it is not intact.
   */
  open(diffId: string, size?: number): Promise<SourceReader>;
  /** Where the layer's tar lies in a local file, if it does, so a writer can copy it with large reads. */
  locate?(diffId: string): Promise<LocalLayer | undefined>;
  /** Whether `open` copies the layer to scratch first (for the free-space check); absent: no. */
  copies?(diffId: string): Promise<boolean>;
  /** Hashes the layer: after a rebuild failed, this finds the corrupted source layer to name. */
  digest?(diffId: string): Promise<string>;
  close?(): Promise<void>;
}

/** What a writer reports after storing the verified image. */
export interface WrittenImage {
  /** Where it went: `repo:tag`, an archive path or a layout folder. */
  readonly image: string;
  /** Manifest digest when one was written, else the config digest (the image id). */
  readonly digest: string;
  readonly bytesWritten: number;
}

export type ImageWriter = (image: ImageToWrite) => Promise<WrittenImage>;

export interface ApplyBundleOptions {
  readonly bundle: string;
  readonly trust: readonly TrustedKey[];
  readonly layers: LayerProvider;
  readonly write: ImageWriter;
  readonly scratchDir?: string;
  /**
   * Decode each rebuilt layer while the writer writes it, instead of into a scratch file first.
   * Only for writers that write each chunk before pulling the next (chunks are reused buffers)
   * and leave nothing behind when a layer stream throws at its end (its digest did not match):
   * file writers that write to a temporary name, such as writeDockerArchive.
   */
  readonly streamToWriter?: boolean;
  /**
   * Call the writer once the payloads are checked instead of after every layer is rebuilt: the
   * layers decode into their scratch files one after another while the writer works, and it may
   * follow each file as it is written (`LocalLayer.written`) but commits a layer only after its
   * `ready()` (its check). For writers that keep LayerToWrite's rules (the registry writer). A
   * later layer that fails its check stops the writer before its manifest; blobs already placed
   * were each checked first.
   */
  readonly writeWhileDecoding?: boolean;
  /** Skip the free-space check (tests on tmpfs). */
  readonly skipDiskCheck?: boolean;
  readonly onProgress?: (progress: { diffId: string; done: number; total: number }) => void;
}

export interface AppliedLayer {
  readonly diffId: string;
  readonly size: number;
  /** Rebuilt from the bundle, or already on the device. */
  readonly from: "bundle" | "device";
}

export interface ApplyResult {
  readonly image: string;
  readonly digest: string;
  readonly configDigest: string;
  readonly layers: readonly AppliedLayer[];
  readonly bytesWritten: number;
  readonly durationMs: number;
}

/** Reads a bundle's head and checks its signature against the trusted keys. */
export async function openVerifiedBundle(path: string, trust: readonly TrustedKey[]): Promise<BundleHead> {
  const head = await readBundleHead(path);
  verifyManifest(head.manifestBytes, head.signature, trust);
  return head;
}

async function checkPayloadDigest(
  path: string,
  head: BundleHead,
  payload: LayerPayload,
  where: string,
): Promise<void> {
  const hash = createHash("sha256");
  for await (const chunk of readFileStream(path, head.payloadsOffset + payload.offset, payload.length))
    hash.update(chunk);
  const digest = `sha256:${hash.digest("hex")}`;
  if (digest !== payload.sha256) {
    throw new BundleError(
      "PAYLOAD",
      where,
      `payload hashes to ${digest}, the signed manifest says ${payload.sha256}; the bundle was damaged in transit, fetch it again`,
    );
  }
}

/** Streams a SourceReader from start to end, in fresh pieces (the consumer may keep them). */
async function* readAll(reader: SourceReader): AsyncGenerator<Uint8Array> {
  for (let position = 0; position < reader.size; position += READ_PIECE) {
    const piece = Buffer.allocUnsafe(Math.min(READ_PIECE, reader.size - position));
    await reader.read(position, piece, 0, piece.length);
    yield piece;
  }
}

/**
 * A payload's decoded bytes, pulled by the consumer: nothing is inflated or decoded ahead of it.
 * Each chunk must be consumed (hashed, written) before the next is pulled: buffers are reused.
 */
async function* payloadChunks(
  bundlePath: string,
  head: BundleHead,
  payload: LayerPayload,
  source: SourceReader | undefined,
  scratchDir: string,
): AsyncGenerator<Uint8Array> {
  const start = head.payloadsOffset + payload.offset;
  /** A whole-layer payload's stream (Brotli or zstd) in `length` bytes at `at` of the bundle. */
  const inflatePlain = (brotli: boolean, at: number, length: number) =>
    brotli
      ? inflateBrotliFileRange(bundlePath, at, length)
      : inflateFileRange(bundlePath, at, length, { windowLogMax: MAX_ZSTD_WINDOW_LOG, reuseOutput: true });
  if (payload.length === 0) {
    // An empty payload decodes to nothing; the size check decides.
  } else if (payload.codec === "zstd" || payload.codec === "brotli") {
    yield* inflatePlain(payload.codec === "brotli", start, payload.length);
  } else if (
    payload.codec === "zstd-x86" ||
    payload.codec === "brotli-x86" ||
    payload.codec === "zstd-gz" ||
    payload.codec === "brotli-gz" ||
    payload.codec === "zstd-far" ||
    payload.codec === "brotli-far"
  ) {
    // (`-far`) The packed tables, of the layer without its copied bytes; else the x86 filter table
    // and (`-gz`) the gzip table. Then the stream.
    const where = `layer ${payload.diffId}`;
    const withFar = payload.codec.endsWith("-far");
    const withGzip = withFar || payload.codec.endsWith("-gz");
    let copies: FarCopy[] = [];
    let x86: FilterRange[];
    let pieces: GzipPiece[] = [];
    let tables: number;
    try {
      if (withFar) {
        ({
          copies,
          x86,
          pieces,
          tablesLength: tables,
        } = await readFarTables(bundlePath, start, payload.length, payload.outputSize));
      } else {
        const filter = await readFilterTable(bundlePath, start, payload.length, payload.outputSize);
        x86 = filter.ranges;
        tables = filter.tableLength;
        if (withGzip) {
          const gzip = await readGzipTable(
            bundlePath,
            start + tables,
            payload.length - tables,
            payload.outputSize,
          );
          pieces = gzip.pieces;
          tables += gzip.tableLength;
        }
      }
    } catch (err) {
      if (
        !(err instanceof FilterTableError) &&
        !(err instanceof GzipTableError) &&
        !(err instanceof FarTableError)
      )
        throw err;
      throw new BundleError("PAYLOAD", where, err.message);
    }
    const inflated = inflatePlain(
      payload.codec.startsWith("brotli"),
      start + tables,
      payload.length - tables,
    );
    try {
      const layer = filterRanges(
        withGzip ? rebuildGzipPieces(inflated, pieces, scratchDir) : inflated,
        x86,
        "decode",
      );
      yield* withFar
        ? insertFarCopies(layer, copies, payload.outputSize, join(scratchDir, `far-${randomUUID()}`))
        : layer;
    } catch (err) {
      if (err instanceof GzipToolError)
        throw new BundleError("IO", where, `${err.message}; nothing was written`);
      if (err instanceof GzipMismatchError || err instanceof FarCopyError)
        throw new BundleError("PAYLOAD", where, err.message);
      throw err;
    }
  } else if (payload.codec === "ref-zstd") {
    const reader = await FileRangeSource.open({ path: bundlePath, offset: start, size: payload.length });
    try {
      const options = {
        expectedSize: payload.outputSize,
        scratchDir,
        ...(source !== undefined ? { source } : {}),
      };
      yield* decodeRefZstd(reader, options);
    } catch (err) {
      if (err instanceof GzipToolError)
        throw new BundleError("IO", `layer ${payload.diffId}`, `${err.message}; nothing was written`);
      if (!(err instanceof RefZstdError)) throw err;
      throw new BundleError("PAYLOAD", `layer ${payload.diffId} payload byte ${err.offset}`, err.message);
    } finally {
      await reader.close();
    }
  } else {
    // The VCDIFF decoder keeps its input chunks, so they are fresh; the layer's sha256 decides,
    // so window checksums (a second pass over the output) are not checked.
    const delta = inflateFileRange(bundlePath, start, payload.length, {
      windowLogMax: MAX_ZSTD_WINDOW_LOG,
      reuseOutput: false,
    });
    yield* decode(delta, {
      ...(source !== undefined ? { source } : {}),
      reuseBuffers: true,
      verifyChecksum: false,
    });
  }
}

/** A payload's decoded bytes, hashed and counted; throws after the last chunk unless they are the layer. */
async function* verifiedPayload(
  bundlePath: string,
  head: BundleHead,
  payload: LayerPayload,
  source: SourceReader | undefined,
  scratchDir: string,
  where: string,
  onBytes: (n: number) => void,
  onMismatch: () => Promise<void>,
  /** Awaited after the check: the layer ends only once this resolves. */
  thenAwait?: Promise<void>,
): AsyncGenerator<Uint8Array> {
  const hash = createHash("sha256");
  let size = 0;
  try {
    for await (const chunk of payloadChunks(bundlePath, head, payload, source, scratchDir)) {
      if (size + chunk.length > payload.outputSize) {
        throw new BundleError(
          "PAYLOAD",
          `layer ${payload.diffId}`,
          `decodes to more than the ${payload.outputSize} bytes the manifest says`,
        );
      }
      hash.update(chunk);
      size += chunk.length;
      yield chunk;
      onBytes(size);
    }
  } catch (err) {
    await onMismatch();
    if (err instanceof BundleError) throw err;
    throw new BundleError(
      "DIGEST",
      where,
      `layer ${payload.diffId} could not be rebuilt (${(err as Error).message}); a source layer on this device may be corrupted`,
    );
  }
  const digest = `sha256:${hash.digest("hex")}`;
  if (digest !== payload.diffId || size !== payload.outputSize) {
    await onMismatch();
    throw new BundleError(
      "DIGEST",
      where,
      `rebuilt layer hashes to ${digest} (${size} bytes), expected ${payload.diffId} (${payload.outputSize} bytes); a source layer on this device is corrupted or differs, nothing was written`,
    );
  }
  await thenAwait;
}

/**
 * Scratch bytes the far copies of a bundle's `-far` payloads keep while they decode (the bytes
 * later copies read, delta/filters/far.ts), from their tables. A malformed table counts 0 here and
 * fails the payload's decode.
 */
export async function farKeptBytes(bundlePath: string, head: BundleHead): Promise<number> {
  let total = 0;
  for (const entry of head.manifest.layers) {
    if (isPresent(entry) || !entry.codec.endsWith("-far")) continue;
    try {
      const { copies } = await readFarTables(
        bundlePath,
        head.payloadsOffset + entry.offset,
        entry.length,
        entry.outputSize,
      );
      total += keptRanges(copies).keptBytes;
    } catch (err) {
      if (!(err instanceof FarTableError || err instanceof FilterTableError || err instanceof GzipTableError))
        throw err;
    }
  }
  return total;
}

/**
 * Scratch bytes an apply needs, at most: the rebuilt layers, and the held layers (sources and
 * layers copied into the image) that the provider copies to scratch before reading them.
 */
export async function scratchNeeded(
  manifest: BundleManifest,
  layers: LayerProvider,
): Promise<{ rebuilt: number; held: number }> {
  let rebuilt = 0;
  const held = new Map<string, number>();
  for (const [i, entry] of manifest.layers.entries()) {
    if (!isPresent(entry)) rebuilt += entry.outputSize;
    else held.set(manifest.target.layers[i]!.diffId, manifest.target.layers[i]!.size);
  }
  for (const ref of manifest.sources) held.set(ref.diffId, ref.size);
  let copied = 0;
  for (const [diffId, size] of held) if ((await layers.copies?.(diffId)) === true) copied += size;
  return { rebuilt, held: copied };
}

/** Throws a DIGEST error naming the first source layer that does not hash to its diff_id, if any. */
async function nameCorruptedSource(
  provider: LayerProvider,
  sources: readonly { diffId: string }[],
): Promise<void> {
  if (provider.digest === undefined) return;
  for (const { diffId } of sources) {
    const digest = await provider.digest(diffId);
    if (digest !== diffId) {
      throw new BundleError(
        "DIGEST",
        diffId,
        `layer ${diffId} on this device hashes to ${digest}; it is corrupted, re-deploy the image that holds it`,
      );
    }
  }
}

export async function applyBundle(options: ApplyBundleOptions): Promise<ApplyResult> {
  const started = Date.now();
  const head = await openVerifiedBundle(options.bundle, options.trust);
  const { manifest } = head;
  const bundleName =
    head.manifest.target.repository !== ""
      ? `${manifest.target.repository}:${manifest.target.tag}`
      : manifest.target.configDigest;

  const needed = requiredLayers(manifest);
  const absent: string[] = [];
  for (const diffId of needed) if (!(await options.layers.has(diffId))) absent.push(diffId);
  if (absent.length > 0) {
    throw new BundleError(
      "MISSING_SOURCE",
      "sources",
      `the bundle for ${bundleName} needs layer${absent.length > 1 ? "s" : ""} ${absent.join(", ")}, which ${absent.length > 1 ? "are" : "is"} not on this device; deploy the base image first`,
    );
  }

  const config = manifestConfig(manifest);
  const configDigest = `sha256:${createHash("sha256").update(config).digest("hex")}`;
  if (configDigest !== manifest.target.configDigest) {
    throw new BundleError(
      "DIGEST",
      "target.config",
      `config hashes to ${configDigest}, the manifest says ${manifest.target.configDigest}`,
    );
  }
  // The payloads are hashed against the signed manifest while the held layers are opened and the
  // first layers decode into scratch files. Nothing reaches the writer before every one matches,
  // and a decode that fails on a damaged payload reports the damage.
  const payloadsChecked = (async () => {
    for (let i = 0; i < manifest.layers.length; i++) {
      const entry = manifest.layers[i]!;
      if (!isPresent(entry)) await checkPayloadDigest(options.bundle, head, entry, `layers[${i}]`);
    }
  })();
  payloadsChecked.catch(() => {});
  const decodeTo = async (
    chunks: AsyncIterable<Uint8Array>,
    out: string,
    onWritten: (size: number) => void,
  ): Promise<number> => {
    try {
      return await writeToFile(chunks, out, undefined, onWritten);
    } catch (err) {
      await payloadsChecked;
      throw err;
    }
  };

  const scratch = await ScratchDir.create(options.scratchDir, "deltaship-apply-");
  const opened: SourceReader[] = [];
  // Rebuilt layers decode one after another. With writeWhileDecoding, if the writer fails, those
  // not yet started never start, and the one running ends before its sources close.
  let decodes: Promise<void> = Promise.resolve();
  let stopped = false;
  try {
    if (options.skipDiskCheck !== true) {
      const { rebuilt, held } = await scratchNeeded(manifest, options.layers);
      const kept = await farKeptBytes(options.bundle, head);
      const fs = await statfs(scratch.path);
      const free = fs.bavail * fs.bsize;
      if (free < rebuilt + held + kept + DISK_MARGIN) {
        throw new BundleError(
          "IO",
          scratch.path,
          `rebuilding ${bundleName} needs ${rebuilt + held + kept} bytes of scratch space (${rebuilt} for the rebuilt layers, ${held} for held layers copied out of a registry or inflated${kept > 0 ? `, ${kept} kept for far copies` : ""}) plus a margin, only ${free} are free; free some disk space`,
        );
      }
    }

    const sourceParts: SourceReader[] = [];
    for (const [n, ref] of manifest.sources.entries()) {
      const reader = await options.layers.open(ref.diffId, ref.size);
      opened.push(reader);
      if (reader.size !== ref.size) {
        throw new BundleError(
          "DIGEST",
          `sources[${n}]`,
          `layer ${ref.diffId} on this device has ${reader.size} bytes, the bundle expects ${ref.size}`,
        );
      }
      sourceParts.push(reader);
    }
    const source = sourceParts.length > 0 ? new ConcatSource(sourceParts) : undefined;
    // A source still being copied (a registry blob) is read as it arrives. The layer rebuilt last
    // is ready (and so the image is) only once each source has arrived whole, intact and of the
    // size the bundle says; the layers rebuilt before it are each checked against their diff_id.
    const sourcesIntact = Promise.all(
      manifest.sources.map(async (ref, n) => {
        const local = await options.layers.locate?.(ref.diffId);
        if (local !== undefined && local.location.size !== ref.size) {
          throw new BundleError(
            "DIGEST",
            `sources[${n}]`,
            `layer ${ref.diffId} on this device has ${local.location.size} bytes, the bundle expects ${ref.size}`,
          );
        }
      }),
    ).then(() => undefined);
    sourcesIntact.catch(() => {});

    // Rebuilt layers decode one at a time, into scratch files unless the writer pulls each as a
    // stream (streamToWriter, in layer order). Into a registry (writeWhileDecoding) the largest
    // decodes first: its upload, the longest, starts first and runs beside the others' decodes.
    const rebuilt: { i: number; entry: LayerPayload }[] = [];
    for (const [i, entry] of manifest.layers.entries()) if (!isPresent(entry)) rebuilt.push({ i, entry });
    if (options.writeWhileDecoding === true) rebuilt.sort((a, b) => b.entry.outputSize - a.entry.outputSize);
    const lastRebuilt = rebuilt.at(-1)?.i;
    const chunksOf = (i: number, entry: LayerPayload) => () =>
      verifiedPayload(
        options.bundle,
        head,
        entry,
        source,
        scratch.path,
        `layers[${i}]`,
        (done) => options.onProgress?.({ diffId: entry.diffId, done, total: entry.outputSize }),
        () => nameCorruptedSource(options.layers, manifest.sources),
        i === lastRebuilt ? sourcesIntact : undefined,
      );
    const decodedFiles = new Map<number, LayerToWrite>();
    if (options.streamToWriter !== true) {
      for (const { i, entry } of rebuilt) {
        const out = scratch.file("layer.tar");
        const progress = new WrittenSoFar(`the rebuilt layer ${entry.diffId}`);
        const chunks = chunksOf(i, entry);
        const decoded = decodes.then(async () => {
          if (stopped) throw new Error("stopped: the writer failed");
          await decodeTo(chunks(), out, (size) => progress.advance(size));
        });
        // Its failure reaches the writer through ready(), open() and written(), and is awaited below.
        decoded.then(
          () => progress.end(),
          (error: unknown) => progress.end(error),
        );
        decodes = decoded;
        decodedFiles.set(i, {
          diffId: entry.diffId,
          size: entry.outputSize,
          ready: () => decoded,
          open: async () => {
            await decoded;
            return readFileStream(out);
          },
          // An upload may follow the file as it is written; it commits only after ready().
          local: {
            location: { path: out, offset: 0, size: entry.outputSize },
            verified: true,
            written: (end) => progress.until(end),
          },
        });
      }
      // Without writeWhileDecoding, every layer is rebuilt before the writer is called.
      if (options.writeWhileDecoding !== true) await decodes;
    }

    const layers: LayerToWrite[] = [];
    const applied: AppliedLayer[] = [];
    for (let i = 0; i < manifest.layers.length; i++) {
      const entry = manifest.layers[i]!;
      const ref = manifest.target.layers[i]!;
      if (isPresent(entry)) {
        const reader = await options.layers.open(ref.diffId);
        opened.push(reader);
        const local = await options.layers.locate?.(ref.diffId);
        const expected = { digest: ref.diffId, size: reader.size };
        layers.push({
          diffId: ref.diffId,
          size: reader.size,
          open: async () => verifyingStream(readAll(reader), expected, `layer ${ref.diffId} on this device`),
          checked: true,
          ...(local !== undefined ? { local } : {}),
        });
        applied.push({ diffId: ref.diffId, size: reader.size, from: "device" });
        continue;
      }
      if (options.streamToWriter === true) {
        // Decoded while the writer writes it; the writer drops everything if the check at its end throws.
        const chunks = chunksOf(i, entry);
        layers.push({
          diffId: entry.diffId,
          size: entry.outputSize,
          open: async () => chunks(),
          checked: true,
        });
      } else {
        layers.push(decodedFiles.get(i)!);
      }
      applied.push({ diffId: entry.diffId, size: entry.outputSize, from: "bundle" });
    }

    await payloadsChecked;
    let written: WrittenImage;
    try {
      written = await options.write({
        repository: manifest.target.repository,
        tag: manifest.target.tag,
        config,
        layers,
      });
      await decodes;
    } catch (err) {
      // A layer that could not be rebuilt is why the writer failed (its upload could not read on).
      await decodes;
      // Layers the device holds are hashed while copied in; the writer has removed what it wrote.
      if (!(err instanceof DigestError)) throw err;
      throw new BundleError(
        "DIGEST",
        "target.layers",
        `${err.message}; nothing was written, re-deploy the image that holds it`,
      );
    }
    return {
      image: written.image,
      digest: written.digest,
      configDigest,
      layers: applied,
      bytesWritten: written.bytesWritten,
      durationMs: Date.now() - started,
    };
  } finally {
    stopped = true;
    await decodes.catch(() => {});
    await payloadsChecked.catch(() => {});
    await Promise.all(opened.map((r) => r.close?.()));
    await scratch.remove();
  }
}

/**
 * Serves layers from images at hand (archives, layouts, registries). An uncompressed layer in a
 * local file is read where it lies, unhashed (what is rebuilt from it or copied from it is
 * checked); any other is copied once to a scratch file (inflated, for a compressed blob) and
 * verified against its diff_id as it goes. Copies run one at a time, in the order asked for;
 * asked with its expected size, a layer being copied is read as it arrives.
 */
export class ImageLayerProvider implements LayerProvider {
  /** Each layer's copy, set before its first await so that two opens of one layer share it. */
  private readonly spools = new Map<string, Promise<Spool>>();
  private readonly inPlace = new Map<string, BlobLocation>();
  private scratch: Promise<ScratchDir> | undefined;
  /** The last copy started: the next one waits for it. */
  private queue: Promise<unknown> = Promise.resolve();
  /** Counts closes: a copy started before the last one stops at its next chunk. */
  private closes = 0;

  constructor(
    private readonly images: readonly ImageReader[],
    private readonly scratchDir?: string,
  ) {}

  private find(diffId: string): { image: ImageReader; index: number } | undefined {
    for (const image of this.images) {
      const index = image.info.layers.findIndex((l) => l.diffId === diffId);
      if (index >= 0) return { image, index };
    }
    return undefined;
  }

  async has(diffId: string): Promise<boolean> {
    return this.find(diffId) !== undefined;
  }

  /** Not for a layer read where it lies (uncompressed in a local file), nor one copied already. */
  async copies(diffId: string): Promise<boolean> {
    if (this.inPlace.has(diffId) || this.spools.has(diffId)) return false;
    const found = this.find(diffId);
    return found !== undefined && layerTarInPlace(found.image, found.index) === undefined;
  }

  async open(diffId: string, size?: number): Promise<SourceReader> {
    const inPlace = this.inPlace.get(diffId);
    if (inPlace !== undefined) return FileRangeSource.open(inPlace);
    let copy = this.spools.get(diffId);
    if (copy === undefined) {
      const found = this.find(diffId);
      if (found === undefined) {
        throw new BundleError(
          "MISSING_SOURCE",
          diffId,
          `layer ${diffId} is not in any image given; deploy the base image first`,
        );
      }
      const location = layerTarInPlace(found.image, found.index);
      if (location !== undefined) {
        this.inPlace.set(diffId, location);
        return FileRangeSource.open(location);
      }
      copy = this.startSpool(diffId, found.image, found.index);
      this.spools.set(diffId, copy);
    }
    const spool = await copy;
    if (size !== undefined && !spool.settled)
      return ArrivingFileSource.follow(spool.path, size, spool.progress);
    return FileSource.open((await spool.done).path);
  }

  /** Creates the layer's scratch file and copies the layer into it once the copies before it end. */
  private async startSpool(diffId: string, image: ImageReader, index: number): Promise<Spool> {
    const closes = this.closes;
    const path = (await (this.scratch ??= ScratchDir.create(this.scratchDir, "deltaship-layers-"))).file(
      "held.tar",
    );
    const handle = await open(path, "wx", 0o600);
    const progress = new WrittenSoFar(`the copy of layer ${diffId}`);
    const before = this.queue;
    const spool: Spool = { path, progress, settled: false, done: Promise.resolve(undefined as never) };
    const stopIfClosing = () => {
      if (this.closes !== closes) throw new Error("the apply ended before the copy did");
    };
    spool.done = (async () => {
      let size: number;
      try {
        let tar: AsyncIterable<Uint8Array>;
        try {
          await before.catch(() => {});
          stopIfClosing();
          tar = await image.openLayerTar(index);
        } catch (err) {
          await handle.close();
          throw err;
        }
        // The reader checks the tar against its diff_id as it goes (ImageReader.openLayerTar).
        size = await writeToHandle(tar, handle, stopIfClosing, (n) => progress.advance(n));
      } catch (err) {
        const error = copyError(diffId, err);
        spool.settled = true;
        progress.end(error);
        throw error;
      }
      spool.settled = true;
      progress.end();
      return { path, offset: 0, size };
    })();
    spool.done.catch(() => {});
    this.queue = spool.done;
    return spool;
  }

  /** Known after `open`: in place (not yet hashed), or copied (hashed while copied; waits for the copy). */
  async locate(diffId: string): Promise<LocalLayer | undefined> {
    const inPlace = this.inPlace.get(diffId);
    if (inPlace !== undefined) return { location: inPlace, verified: false };
    const copy = this.spools.get(diffId);
    return copy !== undefined ? { location: await (await copy).done, verified: true } : undefined;
  }

  async digest(diffId: string): Promise<string> {
    const location = this.inPlace.get(diffId) ?? (await (await this.spools.get(diffId))?.done);
    if (location === undefined) {
      const reader = await this.open(diffId);
      await reader.close?.();
      return this.digest(diffId);
    }
    const hash = createHash("sha256");
    for await (const chunk of readFileStream(location.path, location.offset, location.size))
      hash.update(chunk);
    return `sha256:${hash.digest("hex")}`;
  }

  /**
   * Removes the scratch files. A copy still running stops at its next chunk (a stalled source
   * is not waited for); until then it writes to a file no longer in any folder.
   */
  async close(): Promise<void> {
    this.closes++;
    const scratch = this.scratch;
    this.scratch = undefined;
    this.spools.clear();
    this.inPlace.clear();
    await (await scratch?.catch(() => undefined))?.remove();
  }
}

/** The error for a held layer's copy that failed: its data (`DIGEST`), or the scratch disk, or else (`IO`). */
export function copyError(diffId: string, err: unknown): BundleError {
  const message = (err as Error).message;
  if ((err as NodeJS.ErrnoException).code === "ENOSPC") {
    return new BundleError(
      "IO",
      diffId,
      `the scratch disk filled up while layer ${diffId} on this device was copied there (${message}); free some disk space`,
    );
  }
  const corrupt =
    (err as Error).name === "DigestError" ||
    (err instanceof RegistryError && err.codes.includes(DIGEST_INVALID));
  return new BundleError(
    corrupt ? "DIGEST" : "IO",
    diffId,
    `layer ${diffId} on this device could not be read${corrupt ? " intact" : ""} (${message}); re-deploy the image that holds it`,
  );
}

/** A held layer's copy in a scratch file. */
interface Spool {
  readonly path: string;
  readonly progress: WrittenSoFar;
  /** Whether the copy has ended, whole and checked or failed. */
  settled: boolean;
  /** The copy, whole and checked against its diff_id; rejects with a BundleError naming the layer. */
  done: Promise<BlobLocation>;
}
