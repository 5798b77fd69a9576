/**
 * OCI image layout folders (`oci-layout`, `index.json`, `blobs/sha256/…`): read one image,
 * chosen by its `org.opencontainers.image.ref.name` tag and by platform, and write images into
 * a layout (adding to an existing index.json, replacing an image of the same tag).
 */
import { createHash } from "node:crypto";
import { mkdir, open, readFile, rename, rm, stat, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { compressGzip, decompress } from "./compression.js";
import { digestHex, digestOf, tarChecked, verifyingStream } from "./digest.js";
import { FileRangeSource, readFileRange } from "./file-blob.js";
import {
  type BlobStore,
  checkDocument,
  checkLayersMatchConfig,
  type Descriptor,
  ImageFormatError,
  MAX_DOCUMENT_BYTES,
  MediaType,
  type Platform,
  parseIndex,
  parseJson,
  parsePlatform,
  REF_NAME_ANNOTATION,
  resolveImage,
} from "./oci.js";
import type { BlobLocation, ImageInfo, ImageReader, ImageToWrite, LayerCompression } from "./types.js";

export const OCI_LAYOUT_FILE = "oci-layout";
const OCI_LAYOUT_CONTENT = '{"imageLayoutVersion":"1.0.0"}';

export interface OpenOciLayoutOptions {
  /** The image's tag (ref name); required when the layout holds several images. */
  readonly tag?: string;
  /** `os/arch[/variant]` or a Platform; default linux/amd64. */
  readonly platform?: Platform | string;
}

function blobPath(dir: string, digest: string): string {
  return join(dir, "blobs", "sha256", digestHex(digest));
}

class LayoutBlobStore implements BlobStore {
  constructor(private readonly dir: string) {}

  async readDocument(digest: string, what: string): Promise<Uint8Array> {
    const path = blobPath(this.dir, digest);
    const info = await stat(path).catch(() => undefined);
    if (info === undefined) {
      throw new ImageFormatError(`${what} is missing from the OCI layout ${this.dir} (no ${path})`);
    }
    if (info.size > MAX_DOCUMENT_BYTES) {
      throw new ImageFormatError(
        `${what} is ${info.size} bytes, more than the ${MAX_DOCUMENT_BYTES}-byte limit`,
      );
    }
    return checkDocument(new Uint8Array(await readFile(path)), digest, what);
  }
}

export class OciLayoutReader implements ImageReader {
  private constructor(
    readonly dir: string,
    readonly info: ImageInfo,
  ) {}

  static async open(dir: string, options: OpenOciLayoutOptions = {}): Promise<OciLayoutReader> {
    const marker = await readFile(join(dir, OCI_LAYOUT_FILE)).catch(() => undefined);
    if (marker === undefined) {
      throw new ImageFormatError(`${dir} is not an OCI image layout: it has no ${OCI_LAYOUT_FILE} file`);
    }
    const version = (parseJson(marker, `${dir}/${OCI_LAYOUT_FILE}`) as { imageLayoutVersion?: unknown })
      ?.imageLayoutVersion;
    if (typeof version !== "string" || !version.startsWith("1.")) {
      throw new ImageFormatError(
        `${dir}/${OCI_LAYOUT_FILE} declares layout version ${JSON.stringify(version)}; only 1.x is supported`,
      );
    }
    const indexBytes = await readFile(join(dir, "index.json")).catch(() => undefined);
    if (indexBytes === undefined) throw new ImageFormatError(`${dir} is an OCI layout without index.json`);
    const topLevel = parseIndex(indexBytes, `${dir}/index.json`);
    const platform =
      typeof options.platform === "string" ? parsePlatform(options.platform) : options.platform;
    const info = await resolveImage(
      new LayoutBlobStore(dir),
      topLevel,
      { ...(options.tag !== undefined ? { name: options.tag } : {}), ...(platform ? { platform } : {}) },
      `OCI layout ${dir}`,
    );
    return new OciLayoutReader(dir, info);
  }

  private layer(index: number) {
    const layer = this.info.layers[index];
    if (layer === undefined) {
      throw new RangeError(`layer ${index} does not exist; the image has ${this.info.layers.length} layers`);
    }
    return layer;
  }

  locateLayerBlob(index: number): BlobLocation {
    const layer = this.layer(index);
    return { path: blobPath(this.dir, layer.digest), offset: 0, size: layer.size };
  }

  /**
   * Random access to an uncompressed layer as a VCDIFF source (no scratch copy); compressed layers
   * must go through openLayerTar. The bytes are not checked: stream openLayerBlob once for that.
   */
  async openLayerSource(index: number): Promise<FileRangeSource> {
    const location = this.locateLayerBlob(index);
    const layer = this.layer(index);
    if (layer.compression !== "none") {
      throw new ImageFormatError(
        `layer ${index} is stored ${layer.compression}-compressed, so it has no random access; ` +
          "inflate it with openLayerTar (to a scratch file) instead",
      );
    }
    return FileRangeSource.open(location);
  }

  async openLayerBlob(index: number): Promise<AsyncIterable<Uint8Array>> {
    const layer = this.layer(index);
    const location = this.locateLayerBlob(index);
    return verifyingStream(
      readFileRange(location.path, 0, layer.size),
      layer,
      `layer ${index} blob ${layer.digest}`,
    );
  }

  async openLayerTar(index: number): Promise<AsyncIterable<Uint8Array>> {
    const layer = this.layer(index);
    return tarChecked(
      decompress(await this.openLayerBlob(index), layer.compression),
      layer,
      `layer ${index}`,
    );
  }

  async close(): Promise<void> {}
}

export function openOciLayout(dir: string, options: OpenOciLayoutOptions = {}): Promise<OciLayoutReader> {
  return OciLayoutReader.open(dir, options);
}

export interface WriteOciLayoutOptions {
  /** Tag written as the ref name annotation; default the image's tag. */
  readonly tag?: string;
  /** How layers are stored; default "none" (the tar as is, digest = diff_id). */
  readonly compression?: Extract<LayerCompression, "none" | "gzip">;
}

/**
 * Writes a blob from a stream into the layout: to a temporary name first, renamed to its digest
 * once complete, so a crash never leaves a blob whose name lies about its content.
 */
async function writeBlobStream(dir: string, input: AsyncIterable<Uint8Array>): Promise<Descriptor> {
  const blobs = join(dir, "blobs", "sha256");
  const temp = join(blobs, `.tmp-${process.pid}-${Date.now()}-${Math.random().toString(36).slice(2)}`);
  const handle = await open(temp, "w");
  const hash = createHash("sha256");
  let size = 0;
  try {
    for await (const chunk of input) {
      hash.update(chunk);
      size += chunk.length;
      await handle.write(chunk);
    }
    await handle.close();
  } catch (err) {
    await handle.close().catch(() => {});
    await rm(temp, { force: true });
    throw err;
  }
  const digest = `sha256:${hash.digest("hex")}`;
  await rename(temp, blobPath(dir, digest));
  return { mediaType: "", digest, size };
}

async function writeBlobBytes(dir: string, bytes: Uint8Array): Promise<string> {
  const digest = digestOf(bytes);
  await writeFile(blobPath(dir, digest), bytes);
  return digest;
}

/** Deterministic JSON: the same document always has the same digest. */
function jsonBytes(value: unknown): Uint8Array {
  return new TextEncoder().encode(JSON.stringify(value));
}

/**
 * Writes `image` into the layout at `dir` (created if needed). Each layer's tar is checked
 * against its diff_id while it is written; a mismatch aborts before index.json names the image.
 * Returns the manifest descriptor.
 */
export async function writeOciLayout(
  dir: string,
  image: ImageToWrite,
  options: WriteOciLayoutOptions = {},
): Promise<Descriptor> {
  checkLayersMatchConfig(image);
  const compression = options.compression ?? "none";
  const tag = options.tag ?? image.tag;
  await mkdir(join(dir, "blobs", "sha256"), { recursive: true });
  await writeFile(join(dir, OCI_LAYOUT_FILE), OCI_LAYOUT_CONTENT);

  const layers: Descriptor[] = [];
  const written = new Map<string, Descriptor>();
  for (const [i, layer] of image.layers.entries()) {
    const known = written.get(layer.diffId);
    if (known !== undefined) {
      layers.push(known);
      continue;
    }
    const tar = verifyingStream(
      await layer.open(),
      { digest: layer.diffId, size: layer.size },
      `layer ${i} (${layer.diffId})`,
    );
    const stored = await writeBlobStream(dir, compression === "gzip" ? compressGzip(tar) : tar);
    const descriptor: Descriptor = {
      mediaType: compression === "gzip" ? `${MediaType.ociLayer}+gzip` : MediaType.ociLayer,
      digest: stored.digest,
      size: stored.size,
    };
    written.set(layer.diffId, descriptor);
    layers.push(descriptor);
  }
  const configDigest = await writeBlobBytes(dir, image.config);
  const manifest = jsonBytes({
    schemaVersion: 2,
    mediaType: MediaType.ociManifest,
    config: { mediaType: MediaType.ociConfig, digest: configDigest, size: image.config.length },
    layers,
  });
  const manifestDigest = await writeBlobBytes(dir, manifest);
  const descriptor: Descriptor = {
    mediaType: MediaType.ociManifest,
    digest: manifestDigest,
    size: manifest.length,
    ...(tag ? { annotations: { [REF_NAME_ANNOTATION]: tag } } : {}),
  };

  const indexPath = join(dir, "index.json");
  const existing = await readFile(indexPath).catch(() => undefined);
  const others =
    existing === undefined
      ? []
      : parseIndex(existing, indexPath).filter(
          (d) => !(tag && d.annotations?.[REF_NAME_ANNOTATION] === tag) && d.digest !== manifestDigest,
        );
  const index = jsonBytes({
    schemaVersion: 2,
    mediaType: MediaType.ociIndex,
    manifests: [...others, descriptor],
  });
  await writeFile(`${indexPath}.tmp-${process.pid}`, index);
  await rename(`${indexPath}.tmp-${process.pid}`, indexPath);
  return descriptor;
}
