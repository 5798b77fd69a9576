/**
 * A registry blob as a random-access VCDIFF source: `Range` reads with a small LRU cache of
 * aligned blocks, so the decoder's many short COPYs near each other cost one request, and
 * read-ahead when reads go on sequentially (a file copied whole from a source layer).
 * Only meaningful for blobs stored uncompressed (a compressed blob has no random access:
 * inflate it to a scratch file first). Range reads cannot be hashed; the bundle decoder's
 * check of every output layer's diff_id is what catches a corrupt source.
 */
import type { SourceReader } from "../../vcdiff/source.js";
import type { RegistryClient } from "./client.js";
import { RegistryError } from "./errors.js";

/** Bytes fetched per cache block: larger blocks mean fewer requests, more bytes wasted per miss. */
export const DEFAULT_BLOCK_SIZE = 256 * 1024;
/** Blocks kept: bounds the cache's memory at blockSize × this. */
export const DEFAULT_CACHE_BLOCKS = 64;

/** Blocks fetched per request when reading sequentially (4 MiB at the default block size). */
const MAX_READAHEAD_BLOCKS = 16;

export interface BlobSourceOptions {
  readonly blockSize?: number;
  readonly cacheBlocks?: number;
}

export class RegistryBlobSource implements SourceReader {
  private readonly blockSize: number;
  private readonly cacheBlocks: number;
  /** Map order is recency: the first entry is the least recently used. */
  private readonly cache = new Map<number, Uint8Array>();
  /** The block after the last one fetched: a miss there means the reader goes sequentially. */
  private nextBlock = 0;
  /** Range requests made so far (tests check the cache works). */
  requests = 0;

  constructor(
    private readonly client: RegistryClient,
    readonly repository: string,
    readonly digest: string,
    readonly size: number,
    options: BlobSourceOptions = {},
  ) {
    this.blockSize = options.blockSize ?? DEFAULT_BLOCK_SIZE;
    this.cacheBlocks = options.cacheBlocks ?? DEFAULT_CACHE_BLOCKS;
  }

  /** Opens a blob as a source, asking the registry its size. */
  static async open(
    client: RegistryClient,
    repository: string,
    digest: string,
    options: BlobSourceOptions = {},
  ): Promise<RegistryBlobSource> {
    const size = await client.blobSize(repository, digest);
    if (size === undefined) {
      throw new RegistryError(
        `blob ${digest} is not in ${client.registry}/${repository}; the source layer is missing, deploy the image that holds it first`,
        404,
      );
    }
    return new RegistryBlobSource(client, repository, digest, size, options);
  }

  async read(position: number, into: Uint8Array, offset: number, length: number): Promise<void> {
    if (position < 0 || length < 0 || position + length > this.size) {
      throw new RegistryError(
        `read of ${length} bytes at ${position} is past the end of the ${this.size}-byte blob ${this.digest}`,
      );
    }
    if (length === 0) return;
    const bs = this.blockSize;
    const first = Math.floor(position / bs);
    const last = Math.floor((position + length - 1) / bs);
    // Reads spanning more blocks than the cache holds would only evict it: fetch them straight through.
    if (last - first + 1 > this.cacheBlocks) {
      this.requests++;
      into.set(await this.client.readBlobRange(this.repository, this.digest, position, length), offset);
      return;
    }
    let block = first;
    while (block <= last) {
      const cached = this.cache.get(block);
      if (cached) {
        this.cache.delete(block);
        this.cache.set(block, cached);
        this.copy(cached, block * bs, position, into, offset, length);
        block++;
        continue;
      }
      // One request for the run of missing blocks.
      let end = block;
      while (end + 1 <= last && !this.cache.has(end + 1)) end++;
      // Reading on from where the last fetch ended: fetch ahead, a whole file's COPY is coming.
      if (end === last && block === this.nextBlock) {
        const ahead = Math.min(MAX_READAHEAD_BLOCKS, Math.floor(this.cacheBlocks / 2));
        const lastBlock = Math.ceil(this.size / bs) - 1;
        while (end < lastBlock && end - block + 1 < ahead && !this.cache.has(end + 1)) end++;
      }
      this.nextBlock = end + 1;
      const start = block * bs;
      const stop = Math.min((end + 1) * bs, this.size);
      this.requests++;
      const bytes = await this.client.readBlobRange(this.repository, this.digest, start, stop - start);
      this.copy(bytes, start, position, into, offset, length);
      for (let b = block; b <= end; b++) {
        this.cache.set(b, bytes.subarray((b - block) * bs, Math.min((b - block + 1) * bs, bytes.length)));
      }
      while (this.cache.size > this.cacheBlocks) this.cache.delete(this.cache.keys().next().value!);
      block = end + 1;
    }
  }

  /** Copies the overlap of `bytes` (which starts at blob offset `at`) with the requested range. */
  private copy(
    bytes: Uint8Array,
    at: number,
    position: number,
    into: Uint8Array,
    offset: number,
    length: number,
  ) {
    const from = Math.max(position, at);
    const to = Math.min(position + length, at + bytes.length);
    if (to > from) into.set(bytes.subarray(from - at, to - at), offset + from - position);
  }

  async close(): Promise<void> {
    this.cache.clear();
  }
}
