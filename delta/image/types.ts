/**
 * What every image reader and writer agrees on: a docker-archive, an OCI layout folder and an
 * OCI registry all serve an image as a config blob plus an ordered list of layers.
 */

export type LayerCompression = "none" | "gzip" | "zstd";

export interface LayerInfo {
  /** Digest of the layer blob as stored (compressed or not), `sha256:…`. */
  readonly digest: string;
  /** Size of the stored blob in bytes. */
  readonly size: number;
  /** Media type of the stored blob (OCI or Docker). */
  readonly mediaType: string;
  readonly compression: LayerCompression;
  /** sha256 of the uncompressed tar, `sha256:…`, from the config's rootfs.diff_ids. */
  readonly diffId: string;
}

export interface ImageInfo {
  /** Repository name without registry host, e.g. `apps/telemetry`; empty when unknown. */
  readonly repository: string;
  /** Tag, e.g. `1.4.2`; empty when unknown. */
  readonly tag: string;
  /** Digest of the manifest this image was read from, `sha256:…`, when there is one. */
  readonly manifestDigest?: string;
  /** Raw config JSON bytes (kept exact: its digest is the image id). */
  readonly config: Uint8Array;
  /** `sha256:…` of config. */
  readonly configDigest: string;
  readonly layers: readonly LayerInfo[];
}

/** Where a stored blob sits inside a local file: random access without a scratch copy. */
export interface BlobLocation {
  readonly path: string;
  /** Offset of the blob's first byte in the file (non-zero inside a docker-archive tar). */
  readonly offset: number;
  readonly size: number;
}

/** A readable image: its description plus streams of its blobs. */
export interface ImageReader {
  readonly info: ImageInfo;
  /** The stored blob of layer i (compressed as stored). */
  openLayerBlob(index: number): Promise<AsyncIterable<Uint8Array>>;
  /** Local readers only (docker-archive, OCI layout): the file range holding layer i's stored blob. */
  locateLayerBlob?(index: number): BlobLocation;
  /** The uncompressed tar of layer i, checked: the stream throws at its end unless it hashes to the layer's diff_id. */
  openLayerTar(index: number): Promise<AsyncIterable<Uint8Array>>;
  close(): Promise<void>;
}

/** One layer to write: its uncompressed tar as a stream, with the diff_id it must hash to. */
export interface LayerToWrite {
  readonly diffId: string;
  /** Uncompressed size in bytes. */
  readonly size: number;
  open(): Promise<AsyncIterable<Uint8Array>>;
  /** open() yields a stream that throws at its end unless its bytes hash to diffId: writers need not hash it again. */
  readonly checked?: boolean;
  /** Where the same tar lies in a local file, if it does: file writers copy it from there with large reads. */
  readonly local?: LocalLayer;
  /**
   * Resolves once the layer's bytes are in place, rejects if they cannot be made (a layer still
   * being rebuilt while the writer works). A writer that has it awaits it before it reads `local`,
   * and awaits every layer's before it makes the image visible (a manifest, an index); open() waits by itself.
   */
  ready?(): Promise<void>;
}

/** A layer's tar inside a local file. */
export interface LocalLayer {
  readonly location: BlobLocation;
  /** Whether this process already hashed these bytes against the diff_id (writers need not again). */
  readonly verified: boolean;
  /**
   * For a file still being written (a layer being rebuilt): resolves once the file holds its
   * bytes before `end`, rejects if it never will. A writer may read the file this way before the
   * layer's `ready()`, but commits nothing made of it until `ready()` resolves.
   */
  readonly written?: (end: number) => Promise<void>;
}

export interface ImageToWrite {
  readonly repository: string;
  readonly tag: string;
  readonly config: Uint8Array;
  readonly layers: readonly LayerToWrite[];
}
