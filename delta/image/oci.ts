/**
 * OCI and Docker manifest documents, shared by every store that keeps blobs by digest (an OCI
 * layout folder, the OCI part of a docker-archive, a registry): media types, parsing with
 * limits, choosing an image from an index by tag and platform, and turning a manifest plus its
 * config into an ImageInfo.
 */
import { compressionOfMediaType } from "./compression.js";
import { assertDigest, digestOf, isDigest } from "./digest.js";
import type { ImageInfo, ImageToWrite, LayerInfo } from "./types.js";

export const MediaType = {
  ociIndex: "application/vnd.oci.image.index.v1+json",
  ociManifest: "application/vnd.oci.image.manifest.v1+json",
  ociConfig: "application/vnd.oci.image.config.v1+json",
  ociLayer: "application/vnd.oci.image.layer.v1.tar",
  dockerManifestList: "application/vnd.docker.distribution.manifest.list.v2+json",
  dockerManifest: "application/vnd.docker.distribution.manifest.v2+json",
  dockerConfig: "application/vnd.docker.container.image.v1+json",
} as const;

/** The annotation OCI layouts use for a tag. */
export const REF_NAME_ANNOTATION = "org.opencontainers.image.ref.name";
/** The annotation Docker 25+ and containerd add with the full image name (`docker.io/library/alpine:3.19`). */
export const CONTAINERD_NAME_ANNOTATION = "io.containerd.image.name";

/** Manifests, indexes and configs are kilobytes; a bigger document is hostile or not one of them. */
export const MAX_DOCUMENT_BYTES = 4 * 1024 * 1024;
/** An index may point at an index; deeper nesting than this is a loop or an attack. */
export const MAX_INDEX_DEPTH = 4;
/** More layers than this in one image is not something Docker or containerd can run. */
export const MAX_LAYERS = 1000;

export class ImageFormatError extends Error {
  override readonly name = "ImageFormatError";
}

export interface Descriptor {
  readonly mediaType: string;
  readonly digest: string;
  readonly size: number;
  readonly annotations?: Readonly<Record<string, string>>;
  readonly platform?: Platform;
}

export interface Platform {
  readonly os: string;
  readonly architecture: string;
  readonly variant?: string;
}

/** What reads blobs by digest: the only thing image resolution needs from a store. */
export interface BlobStore {
  /** A small blob (manifest, index, config), checked against its digest. */
  readDocument(digest: string, what: string): Promise<Uint8Array>;
}

export function parseJson(bytes: Uint8Array, what: string): unknown {
  if (bytes.length > MAX_DOCUMENT_BYTES) {
    throw new ImageFormatError(
      `${what} is ${bytes.length} bytes, more than the ${MAX_DOCUMENT_BYTES}-byte limit`,
    );
  }
  try {
    return JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(bytes));
  } catch (err) {
    throw new ImageFormatError(`${what} is not valid JSON: ${(err as Error).message}`);
  }
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

export function parseDescriptor(value: unknown, what: string): Descriptor {
  if (!isObject(value)) throw new ImageFormatError(`${what} must be a descriptor object`);
  const { mediaType, digest, size, annotations, platform } = value;
  if (typeof mediaType !== "string") throw new ImageFormatError(`${what} has no mediaType`);
  assertDigest(digest, `${what} digest`);
  if (typeof size !== "number" || !Number.isSafeInteger(size) || size < 0) {
    throw new ImageFormatError(`${what} size must be a non-negative integer, found ${JSON.stringify(size)}`);
  }
  const out: {
    mediaType: string;
    digest: string;
    size: number;
    annotations?: Record<string, string>;
    platform?: Platform;
  } = { mediaType, digest: digest as string, size };
  if (isObject(annotations)) {
    out.annotations = Object.fromEntries(
      Object.entries(annotations).filter((e): e is [string, string] => typeof e[1] === "string"),
    );
  }
  if (isObject(platform) && typeof platform.os === "string" && typeof platform.architecture === "string") {
    out.platform = {
      os: platform.os,
      architecture: platform.architecture,
      ...(typeof platform.variant === "string" ? { variant: platform.variant } : {}),
    };
  }
  return out;
}

/** The descriptors of an index (OCI image index, Docker manifest list, or a layout's index.json). */
export function parseIndex(bytes: Uint8Array, what: string): Descriptor[] {
  const doc = parseJson(bytes, what);
  if (!isObject(doc) || !Array.isArray(doc.manifests)) {
    throw new ImageFormatError(`${what} must be an image index with a "manifests" array`);
  }
  return doc.manifests.map((m, i) => parseDescriptor(m, `${what} manifests[${i}]`));
}

export function isIndexMediaType(mediaType: string): boolean {
  return mediaType === MediaType.ociIndex || mediaType === MediaType.dockerManifestList;
}

export function isManifestMediaType(mediaType: string): boolean {
  return mediaType === MediaType.ociManifest || mediaType === MediaType.dockerManifest;
}

/** `linux/amd64`, `linux/arm64/v8` → Platform. */
export function parsePlatform(text: string): Platform {
  const [os, architecture, variant, ...rest] = text.split("/");
  if (!os || !architecture || rest.length > 0) {
    throw new ImageFormatError(
      `platform "${text}" must look like os/architecture[/variant], e.g. linux/amd64`,
    );
  }
  return variant ? { os, architecture, variant } : { os, architecture };
}

export function formatPlatform(p: Platform): string {
  return p.variant ? `${p.os}/${p.architecture}/${p.variant}` : `${p.os}/${p.architecture}`;
}

export const DEFAULT_PLATFORM: Platform = { os: "linux", architecture: "amd64" };

/** Picks the manifest for a platform; a wanted variant must match, an unspecified one takes any. */
export function choosePlatform(
  descriptors: readonly Descriptor[],
  wanted: Platform,
  what: string,
): Descriptor {
  const matches = descriptors.filter(
    (d) =>
      d.platform !== undefined &&
      d.platform.os === wanted.os &&
      d.platform.architecture === wanted.architecture &&
      (wanted.variant === undefined || d.platform.variant === wanted.variant),
  );
  if (matches.length === 0) {
    const offered = descriptors
      .filter((d) => d.platform !== undefined && d.platform.os !== "unknown")
      .map((d) => formatPlatform(d.platform!));
    throw new ImageFormatError(
      `${what} has no image for ${formatPlatform(wanted)}; it offers ${offered.join(", ") || "no platforms"}. ` +
        "Choose one with the platform option",
    );
  }
  return matches[0]!;
}

/** The names an index descriptor answers to: its ref name (tag) and its full containerd name. */
export function descriptorNames(d: Descriptor): string[] {
  const names: string[] = [];
  const ref = d.annotations?.[REF_NAME_ANNOTATION];
  const full = d.annotations?.[CONTAINERD_NAME_ANNOTATION];
  if (ref) names.push(ref);
  if (full) names.push(full);
  return names;
}

/** Whether `wanted` (a tag, `repo:tag`, or a full name) names this descriptor. */
function nameMatches(d: Descriptor, wanted: string): boolean {
  for (const name of descriptorNames(d)) {
    if (name === wanted) return true;
    if (name.endsWith(`/${wanted}`)) return true;
    // docker.io/library/alpine:3 answers to alpine:3 and to the bare tag 3.
    const parsed = splitImageName(name);
    if (parsed.tag === wanted && !wanted.includes(":")) return true;
    if (`${parsed.repository}:${parsed.tag}` === wanted) return true;
  }
  return false;
}

export interface ResolveOptions {
  /** A tag, `repository:tag`, or full name; required when the index holds several images. */
  readonly name?: string;
  /** Default linux/amd64. */
  readonly platform?: Platform;
}

/**
 * From a top-level index (a layout's index.json) to one image manifest: filter by name, then by
 * platform where several remain, following nested indexes.
 */
export async function resolveImage(
  store: BlobStore,
  topLevel: readonly Descriptor[],
  options: ResolveOptions,
  what: string,
): Promise<ImageInfo> {
  let candidates = [...topLevel];
  if (options.name !== undefined && options.name !== "") {
    const wanted = options.name;
    candidates = candidates.filter((d) => nameMatches(d, wanted));
    if (candidates.length === 0) {
      const available = topLevel.flatMap(descriptorNames);
      throw new ImageFormatError(
        `${what} has no image named "${wanted}"; it holds ${available.length > 0 ? available.join(", ") : "only unnamed images"}`,
      );
    }
  }
  if (candidates.length === 0) throw new ImageFormatError(`${what} holds no images`);
  const platform = options.platform ?? DEFAULT_PLATFORM;
  let chosen: Descriptor;
  if (candidates.length === 1) {
    chosen = candidates[0]!;
    // A lone image is taken whatever its platform, unless the caller asked for another one.
    if (options.platform !== undefined && chosen.platform !== undefined) {
      chosen = choosePlatform(candidates, options.platform, what);
    }
  } else if (candidates.every((d) => d.platform !== undefined)) {
    chosen = choosePlatform(candidates, platform, what);
  } else {
    const available = candidates.flatMap(descriptorNames);
    throw new ImageFormatError(
      `${what} holds ${candidates.length} images; choose one by name (${available.join(", ") || "none are named"})`,
    );
  }
  const names = descriptorNames(chosen);
  for (let depth = 0; isIndexMediaType(chosen.mediaType); depth++) {
    if (depth >= MAX_INDEX_DEPTH) {
      throw new ImageFormatError(`${what} nests image indexes more than ${MAX_INDEX_DEPTH} deep`);
    }
    const nested = parseIndex(
      await store.readDocument(chosen.digest, `index ${chosen.digest}`),
      `index ${chosen.digest}`,
    );
    chosen = choosePlatform(nested, platform, `index ${chosen.digest}`);
  }
  if (!isManifestMediaType(chosen.mediaType)) {
    throw new ImageFormatError(
      `${what}: ${chosen.digest} has media type ${chosen.mediaType}, not an image manifest`,
    );
  }
  const manifestBytes = await store.readDocument(chosen.digest, `manifest ${chosen.digest}`);
  const full = names.find((n) => n.includes(":") || n.includes("/"));
  const { repository, tag } = full ? splitImageName(full) : { repository: "", tag: names[0] ?? "" };
  return imageFromManifest(store, manifestBytes, chosen.digest, repository, tag);
}

/** Builds ImageInfo from manifest bytes: reads and checks the config, pairs layers with diff_ids. */
export async function imageFromManifest(
  store: BlobStore,
  manifestBytes: Uint8Array,
  manifestDigest: string,
  repository: string,
  tag: string,
): Promise<ImageInfo> {
  const what = `manifest ${manifestDigest}`;
  const doc = parseJson(manifestBytes, what);
  if (!isObject(doc) || !Array.isArray(doc.layers))
    throw new ImageFormatError(`${what} has no "layers" array`);
  const config = parseDescriptor(doc.config, `${what} config`);
  if (doc.layers.length > MAX_LAYERS) {
    throw new ImageFormatError(
      `${what} lists ${doc.layers.length} layers, more than the limit of ${MAX_LAYERS}`,
    );
  }
  const layerDescriptors = doc.layers.map((l, i) => parseDescriptor(l, `${what} layers[${i}]`));
  const configBytes = await store.readDocument(config.digest, `config ${config.digest}`);
  const diffIds = diffIdsOf(configBytes, `config ${config.digest}`);
  if (diffIds.length !== layerDescriptors.length) {
    throw new ImageFormatError(
      `${what} has ${layerDescriptors.length} layers but its config lists ${diffIds.length} diff_ids`,
    );
  }
  const layers: LayerInfo[] = layerDescriptors.map((d, i) => {
    const compression = compressionOfMediaType(d.mediaType);
    if (compression === undefined) {
      throw new ImageFormatError(
        `${what} layer ${i} has media type ${d.mediaType}, which is not a layer tar`,
      );
    }
    return { digest: d.digest, size: d.size, mediaType: d.mediaType, compression, diffId: diffIds[i]! };
  });
  return { repository, tag, manifestDigest, config: configBytes, configDigest: config.digest, layers };
}

/** rootfs.diff_ids of an image config, validated. */
export function diffIdsOf(configBytes: Uint8Array, what: string): string[] {
  const doc = parseJson(configBytes, what);
  if (!isObject(doc) || !isObject(doc.rootfs) || !Array.isArray(doc.rootfs.diff_ids)) {
    throw new ImageFormatError(`${what} has no rootfs.diff_ids`);
  }
  return doc.rootfs.diff_ids.map((d, i) => assertDigest(d, `${what} diff_ids[${i}]`));
}

/** Checks small blob bytes against the digest they were asked for. */
export function checkDocument(bytes: Uint8Array, digest: string, what: string): Uint8Array {
  const actual = digestOf(bytes);
  if (actual !== digest) {
    throw new ImageFormatError(`${what} should have digest ${digest} but has ${actual}; the blob is corrupt`);
  }
  return bytes;
}

/**
 * `registry:5000/apps/telemetry:1.4` → repository `apps/telemetry`, tag `1.4`. A first component
 * with a dot or a port, or `localhost`, is a registry host and is dropped; Docker Hub's
 * `library/` prefix is kept only when written out.
 */
export function splitImageName(name: string): { repository: string; tag: string } {
  let rest = name;
  const at = rest.indexOf("@");
  if (at >= 0) rest = rest.slice(0, at);
  const slash = rest.lastIndexOf("/");
  const colon = rest.lastIndexOf(":");
  let tag = "";
  if (colon > slash) {
    tag = rest.slice(colon + 1);
    rest = rest.slice(0, colon);
  }
  const parts = rest.split("/");
  if (parts.length > 1 && (parts[0]!.includes(".") || parts[0]!.includes(":") || parts[0] === "localhost")) {
    parts.shift();
  }
  return { repository: parts.join("/"), tag };
}

/** Before writing: the layers must be exactly the config's rootfs.diff_ids, in order. */
export function checkLayersMatchConfig(image: ImageToWrite): void {
  for (const [i, layer] of image.layers.entries()) {
    if (!isDigest(layer.diffId)) {
      throw new ImageFormatError(`layer ${i} diff_id ${JSON.stringify(layer.diffId)} is not a digest`);
    }
  }
  const configDiffIds = diffIdsOf(image.config, "image config");
  const layerIds = image.layers.map((l) => l.diffId);
  if (configDiffIds.join() !== layerIds.join()) {
    throw new ImageFormatError(
      `the layers (${layerIds.join(", ")}) are not the config's rootfs.diff_ids (${configDiffIds.join(", ")}); ` +
        "an image written like this would not load",
    );
  }
}
