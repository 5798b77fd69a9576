/**
 * Blob Storage: image indexes, content-addressed bundles, per-device outboxes the
 * file-transfer tool picks bundles up from, and named deployment manifests.
 */
import { createHash } from "node:crypto";
import { BlobServiceClient, type ContainerClient, RestError } from "@azure/storage-blob";
import { type OutboxOrder, outboxNamePrefix } from "../config/priorities.js";

export interface ContainerNames {
  indexes: string;
  bundles: string;
  outbox: string;
  manifests: string;
}
export const DEFAULT_CONTAINERS: ContainerNames = {
  indexes: "indexes",
  bundles: "bundles",
  outbox: "outbox",
  manifests: "manifests",
};

/** A named manifest or an index is small JSON; anything bigger is a wrong blob, not data to parse. */
export const MAX_JSON_BLOB_BYTES = 64 * 1024 * 1024;

const DIGEST = /^sha256:([0-9a-f]{64})$/;

/** `sha256:ab…` → `sha256-ab…`: a digest as a path segment that every file system accepts. */
export function digestPath(digest: string): string {
  const match = DIGEST.exec(digest);
  if (!match) throw new Error(`expected a digest like sha256:<64 hex>, found ${JSON.stringify(digest)}`);
  return `sha256-${match[1]}`;
}

/**
 * Hash of what a bundle assumes the device holds: the ordered source layers (the order is part of
 * the delta's virtual source) and the target layers it references as present instead of sending.
 */
export function sourceSetHash(
  sourceLayers: readonly string[],
  presentLayers: readonly string[] = [],
): string {
  const assumed =
    presentLayers.length === 0 ? sourceLayers : { sources: sourceLayers, present: presentLayers };
  return createHash("sha256").update(JSON.stringify(assumed)).digest("hex");
}

/** Content-addressed bundle name: same target and same assumed layers, same blob. */
export function bundleBlobName(
  targetDigest: string,
  sourceLayers: readonly string[],
  presentLayers: readonly string[] = [],
): string {
  return `${digestPath(targetDigest)}/${sourceSetHash(sourceLayers, presentLayers)}.bundle`;
}

/**
 * Where a bundle lands in a device's outbox: one prefix per device, the bundle's own name below it.
 * With an order, the file name starts `p<rank>-<class>-<sort key>-`, so a name sort is the serving
 * order (one flat folder per device: the edge module reads only its inbox's top level).
 */
export function outboxBlobName(device: string, bundleId: string, order?: OutboxOrder): string {
  const prefix = order === undefined ? "" : outboxNamePrefix(order);
  return `${device}/${prefix}${bundleId.replace(/\//g, "-")}`;
}

export function indexBlobName(digest: string): string {
  return `${digestPath(digest)}.json`;
}

export class BlobStore {
  readonly indexes: ContainerClient;
  readonly bundles: ContainerClient;
  readonly outbox: ContainerClient;
  readonly manifests: ContainerClient;

  constructor(service: BlobServiceClient, names: ContainerNames = DEFAULT_CONTAINERS) {
    this.indexes = service.getContainerClient(names.indexes);
    this.bundles = service.getContainerClient(names.bundles);
    this.outbox = service.getContainerClient(names.outbox);
    this.manifests = service.getContainerClient(names.manifests);
  }

  static fromConnectionString(
    connectionString: string,
    names: ContainerNames = DEFAULT_CONTAINERS,
  ): BlobStore {
    return new BlobStore(BlobServiceClient.fromConnectionString(connectionString), names);
  }

  async createContainers(): Promise<void> {
    for (const container of [this.indexes, this.bundles, this.outbox, this.manifests]) {
      await container.createIfNotExists();
    }
  }

  /** Size of a stored bundle, or undefined when it was never built. */
  async bundleSize(bundleId: string): Promise<number | undefined> {
    try {
      return (await this.bundles.getBlobClient(bundleId).getProperties()).contentLength;
    } catch (error) {
      if (error instanceof RestError && error.statusCode === 404) return undefined;
      throw error;
    }
  }

  /** Uploads a bundle file under its content address (streamed from disk). */
  async uploadBundle(bundleId: string, filePath: string): Promise<number> {
    const client = this.bundles.getBlockBlobClient(bundleId);
    await client.uploadFile(filePath, { blobHTTPHeaders: { blobContentType: "application/octet-stream" } });
    return (await client.getProperties()).contentLength ?? 0;
  }

  /**
   * Copies a bundle into a device's outbox, server-side (no bytes through this process).
   * Idempotent: an outbox blob of the same size is left as it is. With an order, the blob carries
   * it as metadata and as blob index tags (`priority`, `sortkey`) besides its name prefix.
   */
  async placeBundle(device: string, bundleId: string, order?: OutboxOrder): Promise<string> {
    const name = outboxBlobName(device, bundleId, order);
    const source = this.bundles.getBlobClient(bundleId);
    const target = this.outbox.getBlobClient(name);
    const sourceSize = (await source.getProperties()).contentLength;
    try {
      const existing = await target.getProperties();
      if (existing.contentLength === sourceSize && existing.copyStatus !== "pending") return name;
    } catch (error) {
      if (!(error instanceof RestError && error.statusCode === 404)) throw error;
    }
    const labels = order === undefined ? undefined : { priority: order.priority, sortkey: order.sortKey };
    const poller = await target.beginCopyFromURL(source.url, { metadata: labels, tags: labels });
    const result = await poller.pollUntilDone();
    if (result.copyStatus !== "success") {
      throw new Error(
        `expected the copy of bundle ${bundleId} to ${this.outbox.containerName}/${name} to succeed, ` +
          `found status ${result.copyStatus}; check the storage account`,
      );
    }
    return name;
  }

  hasIndex(digest: string): Promise<boolean> {
    return this.indexes.getBlobClient(indexBlobName(digest)).exists();
  }

  async writeIndex(digest: string, index: unknown): Promise<void> {
    const body = JSON.stringify(index);
    await this.indexes
      .getBlockBlobClient(indexBlobName(digest))
      .upload(body, Buffer.byteLength(body), { blobHTTPHeaders: { blobContentType: "application/json" } });
  }

  async readIndex<T>(digest: string): Promise<T> {
    return (await readJson(this.indexes, indexBlobName(digest), "image index")) as T;
  }

  /** A named deployment manifest from the manifests container. */
  readManifest(name: string): Promise<unknown> {
    return readJson(this.manifests, name, "deployment manifest");
  }
}

async function readJson(container: ContainerClient, name: string, what: string): Promise<unknown> {
  const client = container.getBlobClient(name);
  let size: number;
  try {
    size = (await client.getProperties()).contentLength ?? 0;
  } catch (error) {
    if (error instanceof RestError && error.statusCode === 404) {
      throw new Error(
        `expected ${what} ${container.containerName}/${name}, found no such blob; upload it first`,
      );
    }
    throw error;
  }
  if (size > MAX_JSON_BLOB_BYTES) {
    throw new Error(
      `expected ${what} ${container.containerName}/${name} of at most ${MAX_JSON_BLOB_BYTES} bytes, found ${size}`,
    );
  }
  const text = (await client.downloadToBuffer()).toString("utf8");
  try {
    return JSON.parse(text);
  } catch (error) {
    throw new Error(
      `expected ${what} ${container.containerName}/${name} to be JSON, found a parse error: ${(error as Error).message}`,
    );
  }
}
