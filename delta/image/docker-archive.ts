/**
 * `docker save` archives: read the legacy form (manifest.json + repositories, layers at
 * `<id>/layer.tar` or `blobs/sha256/…`) and the OCI form Docker 25+ adds (index.json,
 * oci-layout, blobs/sha256/), choosing one image of several by `repo:tag`; write archives that
 * `docker load` accepts. Reading indexes the tar once by jumping from header to header and then
 * reads blobs by positional reads of the file: the archive is never held in memory.
 */
import { type FileHandle, open, rename, rm } from "node:fs/promises";
import { posix } from "node:path";
import { BLOCK_SIZE, TarError } from "../tar/format.js";
import { type BlockSource, readHeaderGroup, type TarEntry } from "../tar/header.js";
import { type TarWriterEntry, writeTar } from "../tar/writer.js";
import { decompress, detectCompression, ociLayerMediaType } from "./compression.js";
import { digestHex, digestOf, digestStream, tarChecked, verifyingStream } from "./digest.js";
import { FileRangeSource, readAt, readHandleRange } from "./file-blob.js";
import {
  type BlobStore,
  CONTAINERD_NAME_ANNOTATION,
  checkDocument,
  checkLayersMatchConfig,
  diffIdsOf,
  ImageFormatError,
  MAX_DOCUMENT_BYTES,
  MAX_LAYERS,
  MediaType,
  type Platform,
  parseIndex,
  parseJson,
  parsePlatform,
  REF_NAME_ANNOTATION,
  resolveImage,
  splitImageName,
} from "./oci.js";
import type { BlobLocation, ImageInfo, ImageReader, ImageToWrite, LayerInfo } from "./types.js";

/** docker save writes a few files per layer; an archive with more entries is not one. */
export const MAX_ARCHIVE_ENTRIES = 200_000;
/** Symlinks inside an archive (legacy duplicate layers) point one hop; deeper chains are loops. */
const MAX_LINK_HOPS = 8;

/** Where an archive member's data sits in the archive file. */
interface Member {
  readonly entry: TarEntry;
}

/** Header-to-header positional walk of a tar file. */
class FileBlockSource implements BlockSource {
  offset = 0;
  constructor(private readonly handle: FileHandle) {}

  async readExact(length: number): Promise<Uint8Array | null> {
    const bytes = await readAt(this.handle, this.offset, length);
    if (bytes.length === 0) return null;
    if (bytes.length < length) {
      throw new TarError(
        "TRUNCATED",
        `input ended ${bytes.length} bytes into a ${length}-byte read`,
        this.offset,
      );
    }
    this.offset += length;
    return bytes;
  }
}

function normalizeMemberPath(path: string): string {
  const normalized = posix.normalize(path.replace(/^\.\//, "")).replace(/\/+$/, "");
  return normalized === "." ? "" : normalized;
}

async function indexArchive(handle: FileHandle, path: string): Promise<Map<string, Member>> {
  const { size: fileSize } = await handle.stat();
  const source = new FileBlockSource(handle);
  const members = new Map<string, Member>();
  for (let count = 0; ; count++) {
    if (count >= MAX_ARCHIVE_ENTRIES) {
      throw new ImageFormatError(
        `${path} has more than ${MAX_ARCHIVE_ENTRIES} entries; it is not a docker save archive`,
      );
    }
    const group = await readHeaderGroup(source);
    if (group.kind !== "entry") break;
    const entry = group.entry;
    if (entry.dataOffset + entry.size > fileSize) {
      throw new TarError(
        "TRUNCATED",
        `"${entry.path}" needs ${entry.size} bytes of data but ${path} ends at byte ${fileSize}`,
        entry.dataOffset,
      );
    }
    members.set(normalizeMemberPath(entry.path), { entry });
    source.offset = entry.endOffset;
  }
  if (members.size === 0 && fileSize >= BLOCK_SIZE) {
    throw new ImageFormatError(`${path} is an empty tar, not a docker save archive`);
  }
  return members;
}

export interface OpenDockerArchiveOptions {
  /** `repository:tag` (or the tag alone) of the image to read; needed when the archive holds several. */
  readonly tag?: string;
  /** For archives holding an image index: `os/arch[/variant]`; default linux/amd64. */
  readonly platform?: Platform | string;
}

interface ManifestJsonItem {
  readonly Config: string;
  readonly RepoTags: readonly string[];
  readonly Layers: readonly string[];
}

function parseManifestJson(bytes: Uint8Array, path: string): ManifestJsonItem[] {
  const doc = parseJson(bytes, `${path}: manifest.json`);
  if (!Array.isArray(doc)) throw new ImageFormatError(`${path}: manifest.json must be an array of images`);
  return doc.map((item, i) => {
    const what = `${path}: manifest.json[${i}]`;
    if (typeof item !== "object" || item === null) throw new ImageFormatError(`${what} is not an object`);
    const { Config, RepoTags, Layers } = item as Record<string, unknown>;
    if (typeof Config !== "string") throw new ImageFormatError(`${what} has no Config path`);
    if (!Array.isArray(Layers) || !Layers.every((l) => typeof l === "string")) {
      throw new ImageFormatError(`${what} has no Layers list of paths`);
    }
    if (Layers.length > MAX_LAYERS)
      throw new ImageFormatError(`${what} lists more than ${MAX_LAYERS} layers`);
    const tags = Array.isArray(RepoTags) ? RepoTags.filter((t): t is string => typeof t === "string") : [];
    return { Config, RepoTags: tags, Layers: Layers as string[] };
  });
}

/** Whether `wanted` (`repo:tag`, a bare tag, or with a registry host) names `repoTag`. */
function repoTagMatches(repoTag: string, wanted: string): boolean {
  if (repoTag === wanted) return true;
  const have = splitImageName(repoTag);
  if (!wanted.includes(":") && !wanted.includes("/")) return have.tag === wanted;
  const want = splitImageName(wanted);
  const bare = (r: string) => r.replace(/^library\//, "");
  return bare(have.repository) === bare(want.repository) && have.tag === (want.tag || "latest");
}

export class DockerArchiveReader implements ImageReader {
  private constructor(
    readonly path: string,
    private readonly handle: FileHandle,
    private readonly members: Map<string, Member>,
    readonly info: ImageInfo,
    private readonly layerMembers: readonly Member[],
    /** Every `repo:tag` the archive's manifest.json or index.json names. */
    readonly tags: readonly string[],
  ) {}

  static async open(path: string, options: OpenDockerArchiveOptions = {}): Promise<DockerArchiveReader> {
    const handle = await open(path, "r");
    try {
      const compression = detectCompression(await readAt(handle, 0, 4));
      if (compression !== "none") {
        throw new ImageFormatError(
          `${path} is ${compression}-compressed; blobs are read in place, so decompress it first ` +
            `(${compression === "gzip" ? "gunzip" : "unzstd"} ${path})`,
        );
      }
      const members = await indexArchive(handle, path);
      const resolved = members.has("manifest.json")
        ? await fromManifestJson(handle, members, path, options)
        : await fromOciIndex(handle, members, path, options);
      return new DockerArchiveReader(
        path,
        handle,
        members,
        resolved.info,
        resolved.layerMembers,
        resolved.tags,
      );
    } catch (err) {
      await handle.close();
      throw err;
    }
  }

  private layerMember(index: number): Member {
    const member = this.layerMembers[index];
    if (member === undefined) {
      throw new RangeError(`layer ${index} does not exist; the image has ${this.layerMembers.length} layers`);
    }
    return member;
  }

  locateLayerBlob(index: number): BlobLocation {
    const { entry } = this.layerMember(index);
    return { path: this.path, offset: entry.dataOffset, size: entry.size };
  }

  /**
   * Random access to an uncompressed layer as a VCDIFF source (no scratch copy); compressed layers
   * must go through openLayerTar. The bytes are not checked: stream openLayerBlob once for that.
   */
  async openLayerSource(index: number): Promise<FileRangeSource> {
    const location = this.locateLayerBlob(index);
    const layer = this.info.layers[index]!;
    if (layer.compression !== "none") {
      throw new ImageFormatError(
        `layer ${index} is stored ${layer.compression}-compressed, so it has no random access; ` +
          "inflate it with openLayerTar (to a scratch file) instead",
      );
    }
    return FileRangeSource.open(location);
  }

  async openLayerBlob(index: number): Promise<AsyncIterable<Uint8Array>> {
    const { entry } = this.layerMember(index);
    const layer = this.info.layers[index]!;
    return verifyingStream(
      readHandleRange(this.handle, this.path, entry.dataOffset, entry.size),
      layer,
      `${this.path}: layer ${index} (${entry.path})`,
    );
  }

  async openLayerTar(index: number): Promise<AsyncIterable<Uint8Array>> {
    const layer = this.info.layers[index]!;
    const tar = decompress(await this.openLayerBlob(index), layer.compression);
    return tarChecked(tar, layer, `${this.path}: layer ${index}`);
  }

  /** The archive member at `path` (after following links), if any: for inspection and tests. */
  member(path: string): TarEntry | undefined {
    return lookup(this.members, path)?.entry;
  }

  async close(): Promise<void> {
    await this.handle.close();
  }
}

export function openDockerArchive(
  path: string,
  options: OpenDockerArchiveOptions = {},
): Promise<DockerArchiveReader> {
  return DockerArchiveReader.open(path, options);
}

/** Finds a member, following symlinks (relative to the link) and hard links (from the root). */
function lookup(members: Map<string, Member>, path: string): Member | undefined {
  let current = normalizeMemberPath(path);
  for (let hop = 0; hop <= MAX_LINK_HOPS; hop++) {
    if (current.startsWith("../")) return undefined;
    const member = members.get(current);
    if (member === undefined) return undefined;
    const { entry } = member;
    if (entry.type === "symlink") {
      current = normalizeMemberPath(posix.join(posix.dirname(current), entry.linkName));
    } else if (entry.type === "hardlink") {
      current = normalizeMemberPath(entry.linkName);
    } else {
      return entry.type === "file" ? member : undefined;
    }
  }
  return undefined;
}

function requireMember(
  members: Map<string, Member>,
  memberPath: string,
  archive: string,
  what: string,
): Member {
  const member = lookup(members, memberPath);
  if (member === undefined) {
    throw new ImageFormatError(`${archive}: ${what} "${memberPath}" is not a file in the archive`);
  }
  return member;
}

async function readMember(handle: FileHandle, member: Member, archive: string): Promise<Uint8Array> {
  const { entry } = member;
  if (entry.size > MAX_DOCUMENT_BYTES) {
    throw new ImageFormatError(
      `${archive}: "${entry.path}" is ${entry.size} bytes, more than the ${MAX_DOCUMENT_BYTES}-byte document limit`,
    );
  }
  return readAt(handle, entry.dataOffset, entry.size);
}

/** `blobs/sha256/<hex>` → its digest, else undefined. */
function digestFromBlobPath(path: string): string | undefined {
  const match = /^blobs\/sha256\/([0-9a-f]{64})$/.exec(normalizeMemberPath(path));
  return match ? `sha256:${match[1]}` : undefined;
}

interface Resolved {
  readonly info: ImageInfo;
  readonly layerMembers: Member[];
  readonly tags: string[];
}

async function fromManifestJson(
  handle: FileHandle,
  members: Map<string, Member>,
  path: string,
  options: OpenDockerArchiveOptions,
): Promise<Resolved> {
  const items = parseManifestJson(await readMember(handle, members.get("manifest.json")!, path), path);
  const tags = items.flatMap((i) => i.RepoTags);
  let chosen: ManifestJsonItem | undefined;
  let repoTag: string | undefined;
  if (options.tag !== undefined && options.tag !== "") {
    const wanted = options.tag;
    for (const item of items) {
      repoTag = item.RepoTags.find((t) => repoTagMatches(t, wanted));
      if (repoTag !== undefined) {
        chosen = item;
        break;
      }
    }
    if (chosen === undefined) {
      throw new ImageFormatError(
        `${path} has no image tagged "${wanted}"; it holds ${tags.length > 0 ? tags.join(", ") : "only untagged images"}`,
      );
    }
  } else if (items.length === 1) {
    chosen = items[0]!;
    repoTag = chosen.RepoTags[0];
  } else {
    throw new ImageFormatError(
      `${path} holds ${items.length} images; choose one with path:repo:tag (${tags.join(", ") || "none are tagged"})`,
    );
  }

  const configMember = requireMember(members, chosen.Config, path, "config");
  const config = await readMember(handle, configMember, path);
  const configDigest = digestOf(config);
  const namedDigest = digestFromBlobPath(chosen.Config) ?? configNameDigest(chosen.Config);
  if (namedDigest !== undefined) checkDocument(config, namedDigest, `${path}: config ${chosen.Config}`);
  const diffIds = diffIdsOf(config, `${path}: config ${chosen.Config}`);
  if (diffIds.length !== chosen.Layers.length) {
    throw new ImageFormatError(
      `${path}: manifest.json lists ${chosen.Layers.length} layers but the config has ${diffIds.length} diff_ids`,
    );
  }
  const layerMembers: Member[] = [];
  const layers: LayerInfo[] = [];
  for (const [i, layerPath] of chosen.Layers.entries()) {
    const member = requireMember(members, layerPath, path, `layer ${i}`);
    layerMembers.push(member);
    const compression = detectCompression(await readAt(handle, member.entry.dataOffset, 4));
    const diffId = diffIds[i]!;
    // Uncompressed layers are their own diff_id; compressed ones are named by digest or hashed once.
    const digest =
      compression === "none"
        ? diffId
        : (digestFromBlobPath(layerPath) ??
          (await digestStream(readHandleRange(handle, path, member.entry.dataOffset, member.entry.size)))
            .digest);
    layers.push({
      digest,
      size: member.entry.size,
      mediaType: ociLayerMediaType(compression),
      compression,
      diffId,
    });
  }
  const { repository, tag } = repoTag !== undefined ? splitImageName(repoTag) : { repository: "", tag: "" };
  return {
    info: {
      repository,
      tag,
      config,
      configDigest,
      layers,
      ...(await manifestDigestFor(handle, members, path, configDigest)),
    },
    layerMembers,
    tags,
  };
}

/** Legacy archives name the config `<hex>.json`. */
function configNameDigest(path: string): string | undefined {
  const match = /^([0-9a-f]{64})\.json$/.exec(normalizeMemberPath(path));
  return match ? `sha256:${match[1]}` : undefined;
}

/** In a Docker 25+ archive, the OCI manifest whose config is ours gives the manifest digest. */
async function manifestDigestFor(
  handle: FileHandle,
  members: Map<string, Member>,
  path: string,
  configDigest: string,
): Promise<{ manifestDigest?: string }> {
  const indexMember = members.get("index.json");
  if (indexMember === undefined) return {};
  const store = new ArchiveBlobStore(handle, members, path);
  try {
    for (const d of parseIndex(await readMember(handle, indexMember, path), `${path}: index.json`)) {
      if (d.mediaType !== MediaType.ociManifest && d.mediaType !== MediaType.dockerManifest) continue;
      const manifest = parseJson(await store.readDocument(d.digest, `manifest ${d.digest}`), d.digest) as {
        config?: { digest?: unknown };
      };
      if (manifest?.config?.digest === configDigest) return { manifestDigest: d.digest };
    }
  } catch {
    // The OCI part is optional in an archive read through manifest.json; ignore it if it is odd.
  }
  return {};
}

class ArchiveBlobStore implements BlobStore {
  constructor(
    private readonly handle: FileHandle,
    private readonly members: Map<string, Member>,
    private readonly path: string,
  ) {}

  blobMember(digest: string, what: string): Member {
    return requireMember(this.members, `blobs/sha256/${digestHex(digest)}`, this.path, what);
  }

  async readDocument(digest: string, what: string): Promise<Uint8Array> {
    return checkDocument(
      await readMember(this.handle, this.blobMember(digest, what), this.path),
      digest,
      what,
    );
  }
}

async function fromOciIndex(
  handle: FileHandle,
  members: Map<string, Member>,
  path: string,
  options: OpenDockerArchiveOptions,
): Promise<Resolved> {
  const indexMember = members.get("index.json");
  if (indexMember === undefined || !members.has("oci-layout")) {
    throw new ImageFormatError(
      `${path} is not a docker save archive: it has neither manifest.json nor index.json with oci-layout`,
    );
  }
  const topLevel = parseIndex(await readMember(handle, indexMember, path), `${path}: index.json`);
  const store = new ArchiveBlobStore(handle, members, path);
  const platform = typeof options.platform === "string" ? parsePlatform(options.platform) : options.platform;
  const info = await resolveImage(
    store,
    topLevel,
    { ...(options.tag ? { name: options.tag } : {}), ...(platform ? { platform } : {}) },
    path,
  );
  const layerMembers = info.layers.map((l, i) => store.blobMember(l.digest, `layer ${i}`));
  for (const [i, m] of layerMembers.entries()) {
    if (m.entry.size !== info.layers[i]!.size) {
      throw new ImageFormatError(
        `${path}: layer ${i} blob is ${m.entry.size} bytes but its manifest says ${info.layers[i]!.size}`,
      );
    }
  }
  const tags = topLevel.flatMap((d) => {
    const full = d.annotations?.[CONTAINERD_NAME_ANNOTATION] ?? d.annotations?.[REF_NAME_ANNOTATION];
    return full ? [full] : [];
  });
  return { info, layerMembers, tags };
}

/** What `writeDockerArchive` produced. */
export interface WrittenArchive {
  readonly path: string;
  readonly configDigest: string;
  /** Digest of the OCI manifest written into the archive's index.json. */
  readonly manifestDigest: string;
  readonly size: number;
}

function jsonBytes(value: unknown): Uint8Array {
  return new TextEncoder().encode(JSON.stringify(value));
}

/**
 * Writes a docker-archive tar that `docker load` (legacy loader and Docker 25+) accepts:
 * uncompressed layers at `blobs/sha256/<diff_id hex>`, the config at `blobs/sha256/<hex>`, an
 * OCI manifest and index.json, manifest.json and repositories. Same image in, same bytes out.
 * Each layer is checked against its diff_id while written; on a mismatch nothing is left at `dest`.
 */
export async function writeDockerArchive(dest: string, image: ImageToWrite): Promise<WrittenArchive> {
  const configDigest = digestOf(image.config);
  checkLayersMatchConfig(image);
  const layerIds = image.layers.map((l) => l.diffId);
  const blobPath = (digest: string) => `blobs/sha256/${digestHex(digest)}`;
  const repoTag = image.repository ? `${image.repository}:${image.tag || "latest"}` : undefined;

  const manifest = jsonBytes({
    schemaVersion: 2,
    mediaType: MediaType.ociManifest,
    config: { mediaType: MediaType.ociConfig, digest: configDigest, size: image.config.length },
    layers: image.layers.map((l) => ({ mediaType: MediaType.ociLayer, digest: l.diffId, size: l.size })),
  });
  const manifestDigest = digestOf(manifest);
  const annotations: Record<string, string> = {};
  if (repoTag !== undefined) {
    annotations[CONTAINERD_NAME_ANNOTATION] = dockerFullName(repoTag);
    annotations[REF_NAME_ANNOTATION] = image.tag || "latest";
  }
  const index = jsonBytes({
    schemaVersion: 2,
    mediaType: MediaType.ociIndex,
    manifests: [
      {
        mediaType: MediaType.ociManifest,
        digest: manifestDigest,
        size: manifest.length,
        ...(repoTag !== undefined ? { annotations } : {}),
      },
    ],
  });
  const manifestJson = jsonBytes([
    {
      Config: blobPath(configDigest),
      RepoTags: repoTag !== undefined ? [repoTag] : null,
      Layers: layerIds.map(blobPath),
    },
  ]);
  const lastLayer = layerIds.at(-1);
  const repositories =
    repoTag !== undefined && lastLayer !== undefined
      ? jsonBytes({ [image.repository]: { [image.tag || "latest"]: digestHex(lastLayer) } })
      : undefined;

  const entries: TarWriterEntry[] = [
    { path: "blobs", type: "directory" },
    { path: "blobs/sha256", type: "directory" },
  ];
  const seen = new Set<string>();
  let buffer: Buffer | undefined;
  const copyBuffer = () => {
    buffer ??= Buffer.allocUnsafe(COPY_PIECE);
    return buffer;
  };
  for (const [i, layer] of image.layers.entries()) {
    if (seen.has(layer.diffId)) continue;
    seen.add(layer.diffId);
    entries.push({
      path: blobPath(layer.diffId),
      type: "file",
      stream: {
        size: layer.size,
        open: () => verifiedLayer(layer, i, copyBuffer),
      },
    });
  }
  if (!seen.has(configDigest))
    entries.push({ path: blobPath(configDigest), type: "file", content: image.config });
  entries.push(
    { path: blobPath(manifestDigest), type: "file", content: manifest },
    { path: "index.json", type: "file", content: index },
    { path: "manifest.json", type: "file", content: manifestJson },
    { path: "oci-layout", type: "file", content: jsonBytes({ imageLayoutVersion: "1.0.0" }) },
  );
  if (repositories !== undefined) entries.push({ path: "repositories", type: "file", content: repositories });

  const temp = `${dest}.tmp-${process.pid}`;
  const handle = await open(temp, "w");
  let size = 0;
  try {
    // Each chunk is written before the next is pulled: layer copies reuse one buffer.
    for await (const chunk of writeTar(entries)) {
      for (let done = 0; done < chunk.length; ) {
        const { bytesWritten } = await handle.write(chunk, done, chunk.length - done, size + done);
        done += bytesWritten;
      }
      size += chunk.length;
    }
    await handle.close();
  } catch (err) {
    await handle.close().catch(() => {});
    await rm(temp, { force: true });
    throw err;
  }
  await rename(temp, dest);
  return { path: dest, configDigest, manifestDigest, size };
}

/** Bytes per read when a layer is copied from a local file: few calls, one buffer. */
const COPY_PIECE = 4 * 1024 * 1024;

/**
 * A local file range in pieces of one reused buffer: each piece is overwritten by the next, which
 * is safe here because the archive loop writes every chunk before it pulls the next one.
 */
async function* reusedPieces(location: BlobLocation, buffer: Buffer): AsyncGenerator<Uint8Array> {
  const handle = await open(location.path, "r");
  try {
    for (let done = 0; done < location.size; ) {
      const want = Math.min(buffer.length, location.size - done);
      let filled = 0;
      while (filled < want) {
        const at = location.offset + done + filled;
        const { bytesRead } = await handle.read(buffer, filled, want - filled, at);
        if (bytesRead === 0) {
          throw new Error(
            `${location.path} ends at byte ${at}, inside the ${location.size}-byte layer at ${location.offset}; the file is truncated`,
          );
        }
        filled += bytesRead;
      }
      done += want;
      yield buffer.subarray(0, want);
    }
  } finally {
    await handle.close();
  }
}

async function* verifiedLayer(
  layer: ImageToWrite["layers"][number],
  index: number,
  copyBuffer: () => Buffer,
): AsyncGenerator<Uint8Array> {
  const expected = { digest: layer.diffId, size: layer.size };
  const what = `layer ${index} (${layer.diffId})`;
  await layer.ready?.();
  const local = layer.local;
  if (local === undefined) {
    yield* layer.checked === true ? await layer.open() : verifyingStream(await layer.open(), expected, what);
  } else if (local.verified) {
    // Hashed by this process a moment ago (a rebuilt layer): copied, not hashed again.
    yield* reusedPieces(local.location, copyBuffer());
  } else {
    yield* verifyingStream(reusedPieces(local.location, copyBuffer()), expected, what);
  }
}

/** `apps/x:1` → `docker.io/apps/x:1`, `alpine:3` → `docker.io/library/alpine:3`, as Docker annotates. */
function dockerFullName(repoTag: string): string {
  const first = repoTag.split("/")[0]!;
  if (repoTag.includes("/") && (first.includes(".") || first.includes(":") || first === "localhost"))
    return repoTag;
  return repoTag.includes("/") ? `docker.io/${repoTag}` : `docker.io/library/${repoTag}`;
}
