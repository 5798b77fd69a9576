/** Media types of the Distribution API and what each means to the reader. */
import type { LayerCompression } from "../types.js";
import { RegistryError } from "./errors.js";

export const OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json";
export const OCI_INDEX = "application/vnd.oci.image.index.v1+json";
export const OCI_CONFIG = "application/vnd.oci.image.config.v1+json";
export const OCI_LAYER = "application/vnd.oci.image.layer.v1.tar";
export const OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip";
export const OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd";
export const DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json";
export const DOCKER_MANIFEST_LIST = "application/vnd.docker.distribution.manifest.list.v2+json";
export const DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json";
export const DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar";
export const DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/** Every manifest kind we read, in the order we prefer them. */
export const MANIFEST_ACCEPT = [OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST].join(", ");

export function isIndex(mediaType: string): boolean {
  return mediaType === OCI_INDEX || mediaType === DOCKER_MANIFEST_LIST;
}

export function isImageManifest(mediaType: string): boolean {
  return mediaType === OCI_MANIFEST || mediaType === DOCKER_MANIFEST;
}

const LAYER_COMPRESSION: Record<string, LayerCompression> = {
  [OCI_LAYER]: "none",
  [OCI_LAYER_GZIP]: "gzip",
  [OCI_LAYER_ZSTD]: "zstd",
  "application/vnd.oci.image.layer.nondistributable.v1.tar": "none",
  "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip": "gzip",
  "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd": "zstd",
  [DOCKER_LAYER]: "none",
  [DOCKER_LAYER_GZIP]: "gzip",
  "application/vnd.docker.image.rootfs.diff.tar.zstd": "zstd",
  "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip": "gzip",
};

export function layerCompression(mediaType: string): LayerCompression {
  const compression = LAYER_COMPRESSION[mediaType];
  if (!compression) {
    throw new RegistryError(
      `layer media type "${mediaType}" is not a tar layer we can read (expected an OCI or Docker tar, tar+gzip or tar+zstd layer)`,
    );
  }
  return compression;
}

/** What each manifest format calls a plain layer of each compression. */
const STANDARD_LAYER: Record<"oci" | "docker", Partial<Record<LayerCompression, string>>> = {
  oci: { none: OCI_LAYER, gzip: OCI_LAYER_GZIP, zstd: OCI_LAYER_ZSTD },
  docker: { none: DOCKER_LAYER, gzip: DOCKER_LAYER_GZIP },
};
const STANDARD_LAYER_TYPES = new Set(Object.values(STANDARD_LAYER).flatMap((names) => Object.values(names)));

/**
 * The media type a stored layer blob takes in a manifest of `format`: the same bytes, named the
 * way that format names them (an image pushed by Docker or skopeo has Docker layer types, and an
 * OCI manifest that mixes them in is refused by readers such as skopeo). Undefined when the format
 * has no name for them: zstd in a Docker manifest, or a foreign or non-distributable layer of the
 * other format.
 */
export function layerMediaTypeFor(mediaType: string, format: "oci" | "docker"): string | undefined {
  if (STANDARD_LAYER_TYPES.has(mediaType)) return STANDARD_LAYER[format][LAYER_COMPRESSION[mediaType]!];
  const family = format === "oci" ? "application/vnd.oci." : "application/vnd.docker.";
  return mediaType.startsWith(family) ? mediaType : undefined;
}
