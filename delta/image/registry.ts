/**
 * Images in an OCI registry (Distribution API v2): read one as an `ImageReader`, push one
 * from uncompressed layer streams, and reach the low-level client for listings and deletes.
 * See docs/registry.md.
 */
import { createHash } from "node:crypto";
import { compressGzip, decompress, peekCompression } from "./compression.js";
import { type BlobSourceOptions, RegistryBlobSource } from "./registry/blob-source.js";
import {
  type FetchedManifest,
  RegistryClient,
  type RegistryClientOptions,
  verifyStream,
} from "./registry/client.js";
import { RegistryError } from "./registry/errors.js";
import {
  DOCKER_CONFIG,
  DOCKER_LAYER,
  DOCKER_LAYER_GZIP,
  DOCKER_MANIFEST,
  isImageManifest,
  isIndex,
  layerCompression,
  layerMediaTypeFor,
  OCI_CONFIG,
  OCI_LAYER,
  OCI_LAYER_GZIP,
  OCI_MANIFEST,
} from "./registry/media-types.js";
import {
  DIGEST_PATTERN,
  formatReference,
  type ImageReference,
  manifestReference,
  parseReference,
} from "./registry/reference.js";
import type { ImageInfo, ImageReader, ImageToWrite, LayerInfo, LayerToWrite } from "./types.js";

export type { RegistryCredentials } from "./registry/auth.js";
export { type BlobSourceOptions, RegistryBlobSource } from "./registry/blob-source.js";
export { RegistryClient, type RegistryClientOptions, type UploadedBlob } from "./registry/client.js";
export { RegistryError } from "./registry/errors.js";
export * as mediaTypes from "./registry/media-types.js";
export { formatReference, type ImageReference, parseReference } from "./registry/reference.js";

export interface Platform {
  readonly os: string;
  readonly architecture: string;
  /** e.g. `v8` for arm64, `v7` for arm; when unset any variant matches. */
  readonly variant?: string;
}

export const DEFAULT_PLATFORM: Platform = { os: "linux", architecture: "amd64" };

export interface RegistryOptions extends RegistryClientOptions {
  /** Which image of an index / manifest list to read; linux/amd64 by default. */
  readonly platform?: Platform;
  /** Reuse a client (its connections and cached tokens); must be for the reference's registry. */
  readonly client?: RegistryClient;
}

/** Largest image config we read: real ones are a few KB, history-heavy ones under 1 MiB. */
const MAX_CONFIG_BYTES = 8 * 1024 * 1024;
/** Index-inside-index nesting followed: one level is all that real registries produce. */
const MAX_INDEX_DEPTH = 2;
/** Layers per image accepted: overlayfs stops at 128 lower layers; room left for odd images. */
const MAX_LAYERS = 1000;

export function clientFor(ref: ImageReference, options: RegistryOptions = {}): RegistryClient {
  if (options.client) {
    if (options.client.registry !== ref.registry) {
      throw new RegistryError(
        `options.client is for ${options.client.registry} but the reference names ${ref.registry}; pass a client for the same registry`,
      );
    }
    return options.client;
  }
  return new RegistryClient(ref.registry, options);
}

/** A registry image: the `ImageReader` plus what only a registry has. */
export interface RegistryImage extends ImageReader {
  readonly client: RegistryClient;
  readonly reference: ImageReference;
  /** The image manifest's exact bytes (its sha256 is `info.manifestDigest`). */
  readonly manifest: FetchedManifest;
  /** Digest of the index / manifest list the image was chosen from, when the reference named one. */
  readonly indexDigest?: string;
  /** Random access to an uncompressed layer blob by HTTP Range reads (a VCDIFF source). */
  openLayerSource(index: number, options?: BlobSourceOptions): RegistryBlobSource;
}

/** Whether an image reader reads from a registry (openRegistryImage). */
export function isRegistryImage(image: ImageReader): image is RegistryImage {
  return "reference" in image && "client" in image && "openLayerSource" in image;
}

/**
 * The layers of `images` that live in the registry `target` names, by diff_id, as blobs a push to
 * that registry can mount instead of uploading (the first image that has a layer wins).
 */
export function mountableLayers(
  images: readonly ImageReader[],
  target: ImageReference,
): Map<string, ExistingLayer> {
  const layers = new Map<string, ExistingLayer>();
  for (const image of images) {
    if (!isRegistryImage(image) || image.reference.baseUrl !== target.baseUrl) continue;
    for (const layer of image.info.layers) {
      if (layers.has(layer.diffId)) continue;
      const { diffId, digest, size, mediaType } = layer;
      layers.set(diffId, { diffId, digest, size, mediaType, repository: image.reference.repository });
    }
  }
  return layers;
}

export async function openRegistryImage(ref: string, options: RegistryOptions = {}): Promise<RegistryImage> {
  const reference = parseReference(ref, options);
  const client = clientFor(reference, options);
  const repository = reference.repository;
  const platform = options.platform ?? DEFAULT_PLATFORM;
  let fetched = await client.getManifest(repository, manifestReference(reference));
  let indexDigest: string | undefined;
  for (let depth = 0; isIndex(fetched.mediaType); depth++) {
    if (depth === MAX_INDEX_DEPTH) {
      throw new RegistryError(
        `${ref}: indexes nested deeper than ${MAX_INDEX_DEPTH}; not an image we can read`,
      );
    }
    indexDigest ??= fetched.digest;
    const chosen = choosePlatform(fetched, platform, ref);
    fetched = await client.getManifest(repository, chosen);
  }
  if (!isImageManifest(fetched.mediaType)) {
    throw new RegistryError(
      `${ref}: manifest media type "${fetched.mediaType}" is not an OCI or Docker schema 2 image manifest (schema 1 and artifacts are not supported); push the image again with a current tool`,
    );
  }
  const manifest = parseManifest(fetched.bytes, ref);
  const config = await client.readBlob(repository, manifest.config.digest, MAX_CONFIG_BYTES);
  if (config.length !== manifest.config.size) {
    throw new RegistryError(
      `${ref}: config blob has ${config.length} bytes but the manifest says ${manifest.config.size}; the manifest is inconsistent`,
    );
  }
  const diffIds = parseDiffIds(config, ref);
  if (diffIds.length !== manifest.layers.length) {
    throw new RegistryError(
      `${ref}: the manifest lists ${manifest.layers.length} layers but the config's rootfs.diff_ids has ${diffIds.length}; the image is inconsistent`,
    );
  }
  const layers: LayerInfo[] = manifest.layers.map((layer, i) => ({
    digest: layer.digest,
    size: layer.size,
    mediaType: layer.mediaType,
    compression: layerCompression(layer.mediaType),
    diffId: diffIds[i]!,
  }));
  const info: ImageInfo = {
    repository,
    tag: reference.tag ?? "",
    manifestDigest: fetched.digest,
    config,
    configDigest: manifest.config.digest,
    layers,
  };
  const layerAt = (index: number): LayerInfo => {
    const layer = layers[index];
    if (!layer) throw new RegistryError(`${ref}: no layer ${index}; the image has ${layers.length} layers`);
    return layer;
  };
  return {
    info,
    client,
    reference,
    manifest: fetched,
    indexDigest,
    async openLayerBlob(index) {
      const layer = layerAt(index);
      return client.openBlob(repository, layer.digest, layer.size);
    },
    async openLayerTar(index) {
      const layer = layerAt(index);
      const blob = await client.openBlob(repository, layer.digest, layer.size);
      // The compression is read from the blob's first bytes, as Docker does, not from the media
      // type: a pusher that reuses a blob the registry already holds in another compression
      // (skopeo does, from its blob-info cache) can name an uncompressed blob `tar.gzip`.
      const { compression, stream } = await peekCompression(blob);
      // An uncompressed blob whose digest is the diff_id is the tar, checked as it is read.
      if (compression === "none" && layer.digest === layer.diffId) return stream;
      const tar = decompress(stream, compression);
      return verifyStream(tar, layer.diffId, undefined, `uncompressed layer ${index} of ${ref} (diff_id)`);
    },
    openLayerSource(index, sourceOptions) {
      const layer = layerAt(index);
      if (layer.compression !== "none") {
        throw new RegistryError(
          `${ref}: layer ${index} is stored ${layer.compression}-compressed, so it has no random access; inflate it to a scratch file (openLayerTar) and read that`,
        );
      }
      return new RegistryBlobSource(client, repository, layer.digest, layer.size, sourceOptions);
    },
    async close() {
      if (!options.client) client.close();
    },
  };
}

interface Descriptor {
  readonly mediaType: string;
  readonly digest: string;
  readonly size: number;
  readonly platform?: { os?: unknown; architecture?: unknown; variant?: unknown };
}

function parseDescriptor(value: unknown, where: string): Descriptor {
  const d = value as Partial<Descriptor> | null;
  if (
    !d ||
    typeof d.mediaType !== "string" ||
    typeof d.digest !== "string" ||
    !DIGEST_PATTERN.test(d.digest) ||
    typeof d.size !== "number" ||
    !Number.isSafeInteger(d.size) ||
    d.size < 0
  ) {
    throw new RegistryError(
      `${where}: expected a descriptor {mediaType, digest sha256:…, size}, found ${JSON.stringify(value)?.slice(0, 200)}`,
    );
  }
  return d as Descriptor;
}

function parseJson(bytes: Uint8Array, what: string): Record<string, unknown> {
  try {
    const value = JSON.parse(new TextDecoder().decode(bytes));
    if (value && typeof value === "object") return value;
  } catch {
    // Reported below.
  }
  throw new RegistryError(`${what} is not a JSON object`);
}

function parseManifest(bytes: Uint8Array, ref: string): { config: Descriptor; layers: Descriptor[] } {
  const json = parseJson(bytes, `manifest of ${ref}`);
  if (!Array.isArray(json.layers)) throw new RegistryError(`manifest of ${ref} has no "layers" list`);
  if (json.layers.length > MAX_LAYERS) {
    throw new RegistryError(
      `manifest of ${ref} lists ${json.layers.length} layers, more than the ${MAX_LAYERS} we accept`,
    );
  }
  return {
    config: parseDescriptor(json.config, `manifest of ${ref}, config`),
    layers: json.layers.map((l, i) => parseDescriptor(l, `manifest of ${ref}, layer ${i}`)),
  };
}

function parseDiffIds(config: Uint8Array, ref: string): string[] {
  const json = parseJson(config, `config of ${ref}`);
  const rootfs = json.rootfs as { diff_ids?: unknown } | undefined;
  const ids = rootfs?.diff_ids;
  if (!Array.isArray(ids) || !ids.every((id) => typeof id === "string" && DIGEST_PATTERN.test(id))) {
    throw new RegistryError(
      `config of ${ref} has no rootfs.diff_ids list of sha256 digests; it is not an image config`,
    );
  }
  return ids as string[];
}

/** Picks the manifest for `platform` from an index; the error lists what the index offers. */
export function choosePlatform(index: FetchedManifest, platform: Platform, ref: string): string {
  const json = parseJson(index.bytes, `index of ${ref}`);
  if (!Array.isArray(json.manifests)) throw new RegistryError(`index of ${ref} has no "manifests" list`);
  const entries = json.manifests.map((m, i) => parseDescriptor(m, `index of ${ref}, manifest ${i}`));
  const matches = entries.filter(
    (e) =>
      e.platform?.os === platform.os &&
      e.platform?.architecture === platform.architecture &&
      (platform.variant === undefined || e.platform?.variant === platform.variant),
  );
  if (matches.length === 0) {
    const offered = entries
      .map((e) => [e.platform?.os, e.platform?.architecture, e.platform?.variant].filter(Boolean).join("/"))
      .join(", ");
    const wanted = [platform.os, platform.architecture, platform.variant].filter(Boolean).join("/");
    throw new RegistryError(
      `${ref} is a multi-platform index without ${wanted} (it has: ${offered || "no platforms"}); choose one of those with the platform option`,
    );
  }
  // Without a variant asked for, prefer the entry that names none (the plain build).
  return (matches.find((e) => e.platform?.variant === undefined) ?? matches[0]!).digest;
}

// ---- pushing ----

/** A layer blob already in this registry (in the target repository or one it can mount from). */
export interface ExistingLayer {
  readonly diffId: string;
  readonly digest: string;
  readonly size: number;
  readonly mediaType: string;
  /** Repository that holds the blob, to mount it from when the target lacks it. */
  readonly repository?: string;
  /**
   * The layer's tar, uploaded as a streamed layer when the blob is neither in the target
   * repository nor mountable (another registry, no permission to mount); without it that fails.
   */
  readonly upload?: LayerToWrite;
}

export type LayerToPush = LayerToWrite | ExistingLayer;

export interface ImageToPush {
  readonly config: Uint8Array;
  readonly layers: readonly LayerToPush[];
}

export interface PushOptions extends RegistryOptions {
  /** How streamed layers are stored: `none` (digest = diff_id, the default) or `gzip`. */
  readonly compression?: "none" | "gzip";
  /** zlib level for `gzip`; 6 unless given. */
  readonly gzipLevel?: number;
  /** Repositories in the same registry to try mounting blobs from before uploading them. */
  readonly mountFrom?: readonly string[];
  /** `oci` (default) or `docker` schema 2 media types for the manifest and config. */
  readonly manifestFormat?: "oci" | "docker";
}

export interface PushedLayer {
  readonly diffId: string;
  readonly digest: string;
  readonly size: number;
  readonly mediaType: string;
  readonly outcome: "exists" | "mounted" | "uploaded";
}

export interface PushResult {
  /** The reference the manifest was pushed under. */
  readonly reference: string;
  readonly manifestDigest: string;
  readonly manifest: Uint8Array;
  readonly manifestMediaType: string;
  readonly configDigest: string;
  readonly config: { readonly outcome: "exists" | "mounted" | "uploaded" };
  readonly layers: readonly PushedLayer[];
}

function isStreamLayer(layer: LayerToPush): layer is LayerToWrite {
  return typeof (layer as LayerToWrite).open === "function";
}

/**
 * Pushes an image: config and layer blobs first (skipping those the repository has,
 * mounting those another repository has, uploading the rest while checking each digest),
 * the manifest last, and only once every blob is verified in place.
 */
export async function pushImage(
  ref: string,
  image: ImageToWrite | ImageToPush,
  options: PushOptions = {},
): Promise<PushResult> {
  const reference = parseReference(ref, options);
  const client = clientFor(reference, options);
  try {
    return await pushWith(client, reference, ref, image, options);
  } finally {
    if (!options.client) client.close();
  }
}

async function pushWith(
  client: RegistryClient,
  reference: ImageReference,
  ref: string,
  image: ImageToWrite | ImageToPush,
  options: PushOptions,
): Promise<PushResult> {
  const repository = reference.repository;
  const docker = options.manifestFormat === "docker";
  const mountFrom = (options.mountFrom ?? []).filter((r) => r !== repository);

  const diffIds = parseDiffIds(image.config, ref);
  const expected = image.layers.map((l) => l.diffId);
  if (diffIds.length !== expected.length || diffIds.some((id, i) => id !== expected[i])) {
    throw new RegistryError(
      `push ${ref}: the config's rootfs.diff_ids [${diffIds.join(", ")}] do not match the layers given [${expected.join(", ")}]; nothing was pushed, pass the layers in the config's order`,
    );
  }

  const configDigest = `sha256:${createHash("sha256").update(image.config).digest("hex")}`;
  const configOutcome = await placeBlob(client, repository, configDigest, mountFrom, async () =>
    client.uploadBlob(repository, [image.config], {
      digest: configDigest,
      size: image.config.length,
    }),
  );

  const placeLayer = async (layer: LayerToPush, i: number): Promise<PushedLayer> => {
    if (isStreamLayer(layer)) return pushStreamLayer(client, repository, ref, i, layer, mountFrom, options);
    const from = [
      ...(layer.repository && layer.repository !== repository ? [layer.repository] : []),
      ...mountFrom,
    ];
    // Named as this manifest's format names it; a blob it has no name for goes up from its tar.
    const mediaType = layerMediaTypeFor(layer.mediaType, docker ? "docker" : "oci");
    if (mediaType === undefined && layer.upload !== undefined) {
      return pushStreamLayer(client, repository, ref, i, layer.upload, mountFrom, options);
    }
    let uploaded: PushedLayer | undefined;
    const outcome = await placeBlob(client, repository, layer.digest, from, async () => {
      if (layer.upload === undefined) {
        throw new RegistryError(
          `push ${ref}: layer ${i} (${layer.digest}, diff_id ${layer.diffId}) is neither in ${repository} nor mountable from [${from.join(", ")}]; nothing was pushed, give the layer as a stream or name the repository that holds it`,
        );
      }
      uploaded = await pushStreamLayer(client, repository, ref, i, layer.upload, mountFrom, options);
    });
    return uploaded ?? { ...pick(layer), mediaType: mediaType ?? layer.mediaType, outcome };
  };
  const pushed = await inParallel(
    image.layers.map((layer, i) => () => placeLayer(layer, i)),
    PARALLEL_LAYERS,
  );

  // A layer the registry had already is not read, but the manifest still waits until it is rebuilt and checked.
  await Promise.all(image.layers.map((layer) => (isStreamLayer(layer) ? layer.ready?.() : undefined)));
  const manifestMediaType = docker ? DOCKER_MANIFEST : OCI_MANIFEST;
  const manifest = new TextEncoder().encode(
    JSON.stringify({
      schemaVersion: 2,
      mediaType: manifestMediaType,
      config: {
        mediaType: docker ? DOCKER_CONFIG : OCI_CONFIG,
        digest: configDigest,
        size: image.config.length,
      },
      layers: pushed.map((l) => ({ mediaType: l.mediaType, digest: l.digest, size: l.size })),
    }),
  );
  const target = reference.tag ?? (reference.digest ? undefined : "latest");
  const manifestDigest = await client.putManifest(
    repository,
    target ?? reference.digest!,
    manifest,
    manifestMediaType,
  );
  if (reference.digest && reference.digest !== manifestDigest) {
    throw new RegistryError(
      `push ${ref}: the manifest built has digest ${manifestDigest}, not the ${reference.digest} the reference names; the layers or config differ from the original`,
    );
  }
  return {
    reference: formatReference({ ...reference, tag: target, digest: manifestDigest }),
    manifestDigest,
    manifest,
    manifestMediaType,
    configDigest,
    config: { outcome: configOutcome },
    layers: pushed,
  };
}

function pick(layer: ExistingLayer): Omit<PushedLayer, "outcome"> {
  return { diffId: layer.diffId, digest: layer.digest, size: layer.size, mediaType: layer.mediaType };
}

/** Places a streamed layer: as its tar (digest = diff_id, looked up and mounted first) or gzipped. */
async function pushStreamLayer(
  client: RegistryClient,
  repository: string,
  ref: string,
  i: number,
  layer: LayerToWrite,
  mountFrom: readonly string[],
  options: PushOptions,
): Promise<PushedLayer> {
  const docker = options.manifestFormat === "docker";
  if ((options.compression ?? "none") === "none") {
    const mediaType = docker ? DOCKER_LAYER : OCI_LAYER;
    let size = layer.size;
    const outcome = await placeBlob(client, repository, layer.diffId, mountFrom, async () => {
      // A tar in a local file is streamed from there (hashed first unless this process did already),
      // following it while it is written if it still is; a stream that checks itself, or bytes
      // hashed already, is not hashed again. Nothing is committed before the layer's ready().
      const local = layer.local;
      if (local?.written === undefined) await layer.ready?.();
      const blob =
        local !== undefined
          ? await client.uploadFile(repository, local.location, {
              digest: layer.diffId,
              verified: local.verified,
              ...(local.written !== undefined ? { written: local.written } : {}),
              ...(layer.ready !== undefined ? { beforeCommit: () => layer.ready!() } : {}),
            })
          : await client.uploadBlob(repository, await layer.open(), {
              digest: layer.diffId,
              size: layer.size,
              verified: layer.checked === true,
            });
      size = blob.size;
    });
    return { diffId: layer.diffId, digest: layer.diffId, size, mediaType, outcome };
  }
  // The gzip digest is known only after compressing, so there is nothing to look up first.
  const tar = verifyStream(
    await layer.open(),
    layer.diffId,
    layer.size,
    `push ${ref}: layer ${i} tar (diff_id)`,
    "nothing was committed, the layer data is corrupt or not the layer it claims to be",
  );
  const blob = await client.uploadBlob(repository, compressGzip(tar, options.gzipLevel ?? 6));
  return {
    diffId: layer.diffId,
    digest: blob.digest,
    size: blob.size,
    mediaType: docker ? DOCKER_LAYER_GZIP : OCI_LAYER_GZIP,
    outcome: "uploaded",
  };
}

/**
 * Layers placed at once (docker pushes up to five): a layer rebuilt or read later goes up beside
 * one still uploading, instead of after it. An upload from a file or a checking stream holds no
 * chunk; one from a plain stream holds one.
 */
const PARALLEL_LAYERS = 3;

/**
 * Runs `tasks`, at most `limit` at a time, and returns their results in order. After a failure
 * no task starts; the ones running end, then the first failure (in task order) is thrown.
 */
async function inParallel<T>(tasks: readonly (() => Promise<T>)[], limit: number): Promise<T[]> {
  const results: PromiseSettledResult<T>[] = [];
  let next = 0;
  let failed = false;
  const worker = async () => {
    while (!failed && next < tasks.length) {
      const i = next++;
      try {
        results[i] = { status: "fulfilled", value: await tasks[i]!() };
      } catch (reason) {
        results[i] = { status: "rejected", reason };
        failed = true;
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, tasks.length) }, worker));
  const failure = results.find((r) => r?.status === "rejected");
  if (failure !== undefined) throw (failure as PromiseRejectedResult).reason;
  return results.map((r) => (r as PromiseFulfilledResult<T>).value);
}

/** HEAD the target; mount from the first repository that has the blob; else upload. */
async function placeBlob(
  client: RegistryClient,
  repository: string,
  digest: string,
  mountFrom: readonly string[],
  upload: () => Promise<unknown>,
): Promise<"exists" | "mounted" | "uploaded"> {
  if ((await client.blobSize(repository, digest)) !== undefined) return "exists";
  for (const from of mountFrom) {
    if (await client.mountBlob(repository, digest, from)) return "mounted";
  }
  await upload();
  return "uploaded";
}
