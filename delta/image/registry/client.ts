/**
 * A Distribution API v2 client for one registry: manifests, blobs (streamed and verified,
 * ranged, uploaded in chunks, mounted across repositories), catalog and tags, deletes.
 * Authentication (anonymous, basic, bearer tokens) is handled per request from the
 * registry's challenges. No Azure code: ACR is just a registry with a token service.
 */
import { createHash } from "node:crypto";
import { FILE_READ_CHUNK, readFileRange } from "../file-blob.js";
import type { BlobLocation } from "../types.js";
import { basicHeader, type Challenge, parseChallenge, type RegistryCredentials, TokenCache } from "./auth.js";
import { concatBytes, describeErrorBody, hintForStatus, RegistryError, readBounded } from "./errors.js";
import { type BodyError, type HttpResponse, HttpTransport, type StreamedBody } from "./http.js";
import { MANIFEST_ACCEPT } from "./media-types.js";
import {
  baseUrlFor,
  DIGEST_PATTERN,
  MAX_REPOSITORY_LENGTH,
  REPOSITORY_PATTERN,
  type ReferenceOptions,
} from "./reference.js";

export interface RegistryClientOptions extends ReferenceOptions {
  readonly credentials?: RegistryCredentials;
  /** Bytes per PATCH of a chunked upload; blobs up to this size go up in one PUT. */
  readonly chunkSize?: number;
  /** Bytes per PATCH of an upload streamed from a local file (`uploadFile`); none of them is held in memory. */
  readonly fileChunkSize?: number;
}

export interface FetchedManifest {
  readonly bytes: Uint8Array;
  readonly mediaType: string;
  /** sha256 of bytes, checked against the digest asked for or the registry's Docker-Content-Digest. */
  readonly digest: string;
}

export type UploadOutcome = "exists" | "mounted" | "uploaded";

export interface UploadedBlob {
  readonly digest: string;
  readonly size: number;
  readonly outcome: UploadOutcome;
}

/** Largest manifest or index we read: the Distribution registry itself refuses above 4 MiB. */
export const MAX_MANIFEST_BYTES = 4 * 1024 * 1024;
/** Redirects followed per request: registries redirect blob reads once, to their storage. */
const MAX_REDIRECTS = 5;
/** Pages of catalog or tag listing followed: a loop in `Link` headers must not run forever. */
const MAX_LIST_PAGES = 1000;
/** Entries a whole listing may hold: a device registry has dozens, ACR repositories thousands. */
const MAX_LIST_ENTRIES = 1_000_000;
/** Entries asked for per listing page (registries may answer fewer and link the next page). */
const LIST_PAGE_SIZE = 1000;
/** Default PATCH size: large enough for few round trips, small enough for a device's memory. */
export const DEFAULT_CHUNK_SIZE = 8 * 1024 * 1024;
/**
 * Default PATCH size of an upload streamed from a file. Only one 1 MiB read buffer is held, whatever
 * the PATCH size, so it is large: to a
 * local registry a 300 MB blob went up at 159–185 MB/s in streamed 8 MiB PATCHes, 192–221 MB/s in
 * 32 or 64 MiB ones and 111–166 MB/s in buffered 8 MiB chunks (docs/registry.md).
 */
export const DEFAULT_FILE_CHUNK_SIZE = 64 * 1024 * 1024;
/** Largest chunk we agree to hold in memory per upload. */
const MAX_CHUNK_SIZE = 256 * 1024 * 1024;

interface RequestSpec {
  readonly method: "GET" | "HEAD" | "POST" | "PUT" | "PATCH" | "DELETE";
  /** Path under the registry (`/v2/…`) or an absolute URL (upload locations). */
  readonly url: string;
  /** Token scopes this request needs, e.g. `repository:apps/x:pull`. */
  readonly scopes: readonly string[];
  readonly headers?: Record<string, string>;
  readonly body?: Uint8Array | StreamedBody;
  /** Statuses that are answers, not errors. */
  readonly expect: readonly number[];
  /** What we were doing, for error messages: `GET manifest apps/x:1.0`. */
  readonly what: string;
}

// Every repository request builds its scope here, so this is where a repository name that
// would bend the URL path (a hostile catalog entry such as `a/../../x`) is refused.
export function pullScope(repository: string): string {
  return `repository:${checkedRepository(repository)}:pull`;
}

export function pushScope(repository: string): string {
  return `repository:${checkedRepository(repository)}:pull,push`;
}

function checkedRepository(repository: string): string {
  if (repository.length > MAX_REPOSITORY_LENGTH || !REPOSITORY_PATTERN.test(repository)) {
    throw new RegistryError(
      `repository name "${repository.slice(0, 300)}" is not valid (lowercase letters, digits, . _ - and /, at most ${MAX_REPOSITORY_LENGTH} characters)`,
    );
  }
  return repository;
}

export class RegistryClient {
  readonly baseUrl: string;
  readonly chunkSize: number;
  readonly fileChunkSize: number;
  private readonly credentials: RegistryCredentials;
  private readonly tokens: TokenCache;
  private readonly transport = new HttpTransport();
  /** The last challenge this registry sent: later requests authenticate up front. */
  private challenge: Challenge | undefined;

  constructor(
    readonly registry: string,
    options: RegistryClientOptions = {},
  ) {
    this.baseUrl = baseUrlFor(registry, options);
    this.credentials = options.credentials ?? {};
    this.tokens = new TokenCache(this.credentials, this.transport);
    this.chunkSize = options.chunkSize ?? DEFAULT_CHUNK_SIZE;
    this.fileChunkSize = options.fileChunkSize ?? DEFAULT_FILE_CHUNK_SIZE;
    if (!(this.fileChunkSize >= 1 && Number.isSafeInteger(this.fileChunkSize))) {
      throw new RegistryError(`fileChunkSize ${this.fileChunkSize} is not a positive whole number of bytes`);
    }
    if (!(this.chunkSize >= 1 && this.chunkSize <= MAX_CHUNK_SIZE)) {
      throw new RegistryError(`chunkSize ${this.chunkSize} is outside 1..${MAX_CHUNK_SIZE}; pick a few MiB`);
    }
  }

  /** Closes kept-alive connections; the client stays usable (new requests open new ones). */
  close(): void {
    this.transport.close();
  }

  /** Token requests made so far (tests check tokens are cached per scope). */
  get tokenRequests(): number {
    return this.tokens.requests;
  }

  /** GET /v2/: checks the registry answers and the credentials work. */
  async ping(): Promise<void> {
    const response = await this.request({
      method: "GET",
      url: "/v2/",
      scopes: [],
      expect: [200],
      what: "GET /v2/",
    });
    await response.body.cancel();
  }

  // ---- manifests ----

  async getManifest(repository: string, reference: string): Promise<FetchedManifest> {
    const what = `GET manifest ${repository}:${reference}`;
    const response = await this.request({
      method: "GET",
      url: `/v2/${repository}/manifests/${reference}`,
      scopes: [pullScope(repository)],
      headers: { accept: MANIFEST_ACCEPT },
      expect: [200],
      what,
    });
    const bytes = await readBounded(response, MAX_MANIFEST_BYTES, `${what} body`);
    const digest = sha256Digest(bytes);
    const expected = DIGEST_PATTERN.test(reference)
      ? reference
      : response.headers.get("docker-content-digest");
    if (expected?.startsWith("sha256:") && expected !== digest) {
      throw new RegistryError(
        `${what}: the manifest's bytes hash to ${digest}, not ${expected}; the registry served a corrupt or substituted manifest, do not use it`,
      );
    }
    let mediaType = (response.headers.get("content-type") ?? "").split(";")[0]!.trim();
    const declared = parseJsonObject(bytes, what).mediaType;
    // Some registries answer application/json; the manifest's own field is authoritative then.
    if (typeof declared === "string" && (mediaType === "" || mediaType.endsWith("/json")))
      mediaType = declared;
    return { bytes, mediaType, digest };
  }

  /** The digest a tag points to now (HEAD, no body), or undefined if the tag does not exist. */
  async resolveDigest(repository: string, reference: string): Promise<string | undefined> {
    const response = await this.request({
      method: "HEAD",
      url: `/v2/${repository}/manifests/${reference}`,
      scopes: [pullScope(repository)],
      headers: { accept: MANIFEST_ACCEPT },
      expect: [200, 404],
      what: `HEAD manifest ${repository}:${reference}`,
    });
    if (response.status === 404) return undefined;
    const digest = response.headers.get("docker-content-digest");
    if (digest && DIGEST_PATTERN.test(digest)) return digest;
    return (await this.getManifest(repository, reference)).digest;
  }

  /** PUT a manifest under a tag or its digest; checks the registry computed the same digest. */
  async putManifest(
    repository: string,
    reference: string,
    bytes: Uint8Array,
    mediaType: string,
  ): Promise<string> {
    const digest = sha256Digest(bytes);
    const what = `PUT manifest ${repository}:${reference}`;
    const response = await this.request({
      method: "PUT",
      url: `/v2/${repository}/manifests/${reference}`,
      scopes: [pushScope(repository)],
      headers: { "content-type": mediaType },
      body: bytes,
      expect: [201],
      what,
    });
    await response.body.cancel();
    const answered = response.headers.get("docker-content-digest");
    if (answered && answered !== digest) {
      throw new RegistryError(
        `${what}: the registry stored digest ${answered}, expected ${digest}; check the registry`,
      );
    }
    return digest;
  }

  async deleteManifest(repository: string, digest: string): Promise<void> {
    requireDigest(digest, "deleteManifest");
    const response = await this.request({
      method: "DELETE",
      url: `/v2/${repository}/manifests/${digest}`,
      scopes: [`repository:${repository}:delete`, pushScope(repository)],
      expect: [202],
      what: `DELETE manifest ${repository}@${digest}`,
    });
    await response.body.cancel();
  }

  // ---- blobs ----

  /** Size of a blob in a repository, or undefined if the repository does not have it. */
  async blobSize(repository: string, digest: string): Promise<number | undefined> {
    requireDigest(digest, "blobSize");
    const response = await this.request({
      method: "HEAD",
      url: `/v2/${repository}/blobs/${digest}`,
      scopes: [pullScope(repository)],
      expect: [200, 404],
      what: `HEAD blob ${repository}@${digest}`,
    });
    if (response.status === 404) return undefined;
    const size = Number(response.headers.get("content-length"));
    return Number.isSafeInteger(size) ? size : undefined;
  }

  /**
   * Streams a blob and checks its sha256 (and size, when known) as it goes: the stream
   * throws at its end rather than finish on bytes that do not hash to `digest`.
   */
  async openBlob(
    repository: string,
    digest: string,
    expectedSize?: number,
  ): Promise<AsyncIterable<Uint8Array>> {
    requireDigest(digest, "openBlob");
    const what = `GET blob ${repository}@${digest}`;
    const response = await this.request({
      method: "GET",
      url: `/v2/${repository}/blobs/${digest}`,
      scopes: [pullScope(repository)],
      expect: [200],
      what,
    });
    return verifyStream(response.body, digest, expectedSize, what);
  }

  /** Reads a whole small blob into memory (configs), verified, refusing more than `limit` bytes. */
  async readBlob(repository: string, digest: string, limit: number): Promise<Uint8Array> {
    const parts: Uint8Array[] = [];
    let total = 0;
    for await (const chunk of await this.openBlob(repository, digest)) {
      total += chunk.length;
      if (total > limit) {
        throw new RegistryError(
          `blob ${repository}@${digest} is more than the ${limit}-byte limit for this kind of blob; refusing to read it`,
        );
      }
      parts.push(chunk);
    }
    return concatBytes(parts, total);
  }

  /** Reads `length` bytes at `position` of a blob with one `Range` request (206 expected). */
  async readBlobRange(
    repository: string,
    digest: string,
    position: number,
    length: number,
  ): Promise<Uint8Array> {
    requireDigest(digest, "readBlobRange");
    const what = `GET blob ${repository}@${digest} bytes ${position}-${position + length - 1}`;
    if (length === 0) return new Uint8Array(0);
    const response = await this.request({
      method: "GET",
      url: `/v2/${repository}/blobs/${digest}`,
      scopes: [pullScope(repository)],
      headers: { range: `bytes=${position}-${position + length - 1}` },
      expect: [206, 200],
      what,
    });
    if (response.status !== 206) {
      await response.body.cancel();
      throw new RegistryError(
        `${what}: the registry answered ${response.status} with the whole blob instead of 206 Partial Content; it does not support Range reads, so copy the blob to a file and read that instead`,
        response.status,
      );
    }
    const range = /^bytes (\d+)-(\d+)\//.exec(response.headers.get("content-range") ?? "");
    if (range && (Number(range[1]) !== position || Number(range[2]) !== position + length - 1)) {
      await response.body.cancel();
      throw new RegistryError(
        `${what}: the registry answered range ${range[1]}-${range[2]} instead; it is not safe to use, copy the blob to a file instead`,
      );
    }
    const bytes = await readBounded(response, length, `${what} body`);
    if (bytes.length !== length) {
      throw new RegistryError(
        `${what}: got ${bytes.length} bytes, expected ${length}; the blob is shorter than asked`,
      );
    }
    return bytes;
  }

  async deleteBlob(repository: string, digest: string): Promise<void> {
    requireDigest(digest, "deleteBlob");
    const response = await this.request({
      method: "DELETE",
      url: `/v2/${repository}/blobs/${digest}`,
      scopes: [`repository:${repository}:delete`, pushScope(repository)],
      expect: [202],
      what: `DELETE blob ${repository}@${digest}`,
    });
    await response.body.cancel();
  }

  /**
   * Asks the registry to mount a blob from another repository (no bytes move). True when
   * mounted; false when the registry declined (it then opened an upload, which we cancel).
   */
  async mountBlob(repository: string, digest: string, fromRepository: string): Promise<boolean> {
    requireDigest(digest, "mountBlob");
    const query = `mount=${encodeURIComponent(digest)}&from=${encodeURIComponent(fromRepository)}`;
    const response = await this.request({
      method: "POST",
      url: `/v2/${repository}/blobs/uploads/?${query}`,
      scopes: [pushScope(repository), pullScope(fromRepository)],
      expect: [201, 202],
      what: `mount blob ${digest} from ${fromRepository} into ${repository}`,
    });
    await response.body.cancel();
    if (response.status === 201) return true;
    await this.cancelUpload(repository, this.location(response, "mount"));
    return false;
  }

  /**
   * Uploads a blob from a stream: one PUT when it fits in a chunk, else POST, PATCH per
   * chunk with Content-Range, then PUT `?digest=`. The stream is hashed as it goes; if it
   * does not hash to `expected.digest` (or have `expected.size` bytes) the upload is
   * cancelled and nothing is committed. Without an expected digest the computed one is used.
   * With `expected.verified` (a stream that throws at its end unless it hashes to
   * `expected.digest`, or bytes hashed already) it is not hashed again: the registry checks the
   * digest when the upload is committed either way. Memory is one chunk: PATCHes go one at a
   * time, each to the location the previous one returned, and the next chunk is read once the
   * last is acknowledged (reading it meanwhile into a second chunk cost more memory than time).
   */
  async uploadBlob(
    repository: string,
    source: AsyncIterable<Uint8Array> | Iterable<Uint8Array>,
    expected: { digest?: string; size?: number; verified?: boolean } = {},
  ): Promise<UploadedBlob> {
    const trusted = expected.verified === true && expected.digest !== undefined;
    const hash = trusted ? undefined : createHash("sha256");
    const chunk = new Uint8Array(Math.min(this.chunkSize, expected.size ?? this.chunkSize) || 1);
    let filled = 0;
    let total = 0;
    let location: string | undefined;
    let sent = 0;
    const what = `upload blob ${expected.digest ?? "(digest computed while streaming)"} to ${repository}`;
    try {
      let buffer = chunk;
      for await (const piece of source) {
        hash?.update(piece);
        total += piece.length;
        let at = 0;
        while (at < piece.length) {
          if (filled === buffer.length) {
            if (buffer.length < this.chunkSize) {
              // The blob turned out larger than announced: grow to a full chunk.
              const grown = new Uint8Array(this.chunkSize);
              grown.set(buffer);
              buffer = grown;
              continue;
            }
            location ??= await this.startUpload(repository);
            location = await this.patchChunk(repository, location, buffer, sent, what);
            sent += buffer.length;
            filled = 0;
          }
          const take = Math.min(piece.length - at, buffer.length - filled);
          buffer.set(piece.subarray(at, at + take), filled);
          filled += take;
          at += take;
        }
      }
      const digest = hash !== undefined ? `sha256:${hash.digest("hex")}` : expected.digest!;
      if (expected.digest !== undefined && digest !== expected.digest) {
        throw new RegistryError(
          `${what}: the stream hashes to ${digest}, not ${expected.digest}; nothing was committed, the layer data is corrupt or not the layer it claims to be`,
        );
      }
      if (expected.size !== undefined && total !== expected.size) {
        throw new RegistryError(
          `${what}: the stream has ${total} bytes, expected ${expected.size}; nothing was committed, check the layer's recorded size`,
        );
      }
      const rest = buffer.subarray(0, filled);
      if (location === undefined) {
        location = await this.startUpload(repository);
        location = await this.finishUpload(repository, location, digest, rest, what);
      } else {
        if (rest.length > 0) {
          location = await this.patchChunk(repository, location, rest, sent, what);
          sent += rest.length;
        }
        await this.finishUpload(repository, location, digest, new Uint8Array(0), what);
      }
      location = undefined;
      return { digest, size: total, outcome: "uploaded" };
    } finally {
      if (location !== undefined) await this.cancelUpload(repository, location).catch(() => {});
    }
  }

  /**
   * Uploads a blob that lies in a local file: POST, PATCHes of up to `fileChunkSize` bytes streamed
   * from the file (through one 1 MiB read buffer; a PATCH sent again reads its range again), then PUT
   * `?digest=`. Unless `expected.verified` (bytes this process hashed already), the range is hashed
   * first, and a file that does not match is refused before anything is sent. Blobs that fit in
   * one buffered chunk go up as `uploadBlob` sends them, in one PUT.
   */
  async uploadFile(
    repository: string,
    file: BlobLocation,
    expected: {
      digest: string;
      verified?: boolean;
      /** A file still being written: each PATCH waits until the file holds its range (LocalLayer.written). */
      written?: (end: number) => Promise<void>;
      /** Awaited before the upload is committed (the check of a file still being written). */
      beforeCommit?: () => Promise<void>;
    },
  ): Promise<UploadedBlob> {
    // One read buffer for the whole upload: a PATCH hands each piece to the socket before reading the next.
    const buffer = Buffer.allocUnsafe(FILE_READ_CHUNK);
    const read = async function* (at: number, length: number): AsyncGenerator<Uint8Array> {
      await expected.written?.(at + length);
      yield* readFileRange(file.path, file.offset + at, length, buffer);
    };
    if (file.size <= this.chunkSize) {
      await expected.written?.(file.size);
      await expected.beforeCommit?.();
      return this.uploadBlob(repository, read(0, file.size), {
        digest: expected.digest,
        size: file.size,
        ...(expected.verified !== undefined ? { verified: expected.verified } : {}),
      });
    }
    const what = `upload blob ${expected.digest} to ${repository} from ${file.path}`;
    if (expected.verified !== true) {
      const hash = createHash("sha256");
      for await (const piece of read(0, file.size)) hash.update(piece);
      const digest = `sha256:${hash.digest("hex")}`;
      if (digest !== expected.digest) {
        throw new RegistryError(
          `${what}: the file hashes to ${digest}, not ${expected.digest}; nothing was sent, the layer data is corrupt or not the layer it claims to be`,
        );
      }
    }
    let location: string | undefined = await this.startUpload(repository);
    try {
      for (let at = 0; at < file.size; at += this.fileChunkSize) {
        const length = Math.min(this.fileChunkSize, file.size - at);
        location = await this.patchChunk(
          repository,
          location,
          { length, open: () => read(at, length) },
          at,
          what,
        );
      }
      await expected.beforeCommit?.();
      await this.finishUpload(repository, location, expected.digest, new Uint8Array(0), what);
      location = undefined;
      return { digest: expected.digest, size: file.size, outcome: "uploaded" };
    } finally {
      if (location !== undefined) await this.cancelUpload(repository, location).catch(() => {});
    }
  }

  private async startUpload(repository: string): Promise<string> {
    const response = await this.request({
      method: "POST",
      url: `/v2/${repository}/blobs/uploads/`,
      scopes: [pushScope(repository)],
      expect: [202],
      what: `start blob upload to ${repository}`,
    });
    await response.body.cancel();
    return this.location(response, `start blob upload to ${repository}`);
  }

  private async patchChunk(
    repository: string,
    location: string,
    bytes: Uint8Array | StreamedBody,
    start: number,
    what: string,
  ): Promise<string> {
    const end = start + bytes.length - 1;
    const response = await this.request({
      method: "PATCH",
      url: location,
      scopes: [pushScope(repository)],
      headers: { "content-type": "application/octet-stream", "content-range": `${start}-${end}` },
      body: bytes,
      expect: [202],
      what: `${what}: PATCH bytes ${start}-${end}`,
    });
    await response.body.cancel();
    const range = response.headers.get("range");
    if (range && range !== `0-${end}` && range !== `bytes=0-${end}`) {
      throw new RegistryError(
        `${what}: after PATCH of bytes ${start}-${end} the registry reports range ${range}, expected 0-${end}; restart the upload`,
      );
    }
    return this.location(response, `${what}: PATCH`);
  }

  private async finishUpload(
    repository: string,
    location: string,
    digest: string,
    body: Uint8Array,
    what: string,
  ): Promise<string> {
    const url = new URL(location, this.baseUrl);
    url.searchParams.set("digest", digest);
    const response = await this.request({
      method: "PUT",
      url: url.toString(),
      scopes: [pushScope(repository)],
      headers: { "content-type": "application/octet-stream" },
      body,
      expect: [201],
      what: `${what}: PUT ?digest=`,
    });
    await response.body.cancel();
    const answered = response.headers.get("docker-content-digest");
    if (answered && answered !== digest) {
      throw new RegistryError(
        `${what}: the registry committed ${answered}, expected ${digest}; check the registry`,
      );
    }
    return location;
  }

  private async cancelUpload(repository: string, location: string): Promise<void> {
    const response = await this.request({
      method: "DELETE",
      url: location,
      scopes: [pushScope(repository)],
      expect: [204, 202, 404],
      what: `cancel blob upload to ${repository}`,
    });
    await response.body.cancel();
  }

  private location(response: HttpResponse, what: string): string {
    const location = response.headers.get("location");
    if (!location) {
      throw new RegistryError(`${what}: the registry answered ${response.status} without a Location header`);
    }
    return new URL(location, this.baseUrl).toString();
  }

  // ---- listings ----

  /** Every repository in the registry (`/v2/_catalog`, following `Link` pages). */
  async listRepositories(pageSize = LIST_PAGE_SIZE): Promise<string[]> {
    return this.list(
      `/v2/_catalog?n=${pageSize}`,
      ["registry:catalog:*"],
      "repositories",
      "GET /v2/_catalog",
    );
  }

  /** Every tag of a repository; empty if the repository is unknown. */
  async listTags(repository: string, pageSize = LIST_PAGE_SIZE): Promise<string[]> {
    return this.list(
      `/v2/${repository}/tags/list?n=${pageSize}`,
      [pullScope(repository)],
      "tags",
      `GET tags of ${repository}`,
      true,
    );
  }

  private async list(
    first: string,
    scopes: string[],
    field: "repositories" | "tags",
    what: string,
    emptyOn404 = false,
  ): Promise<string[]> {
    const out: string[] = [];
    let url: string | undefined = first;
    for (let page = 0; url !== undefined; page++) {
      if (page === MAX_LIST_PAGES) {
        throw new RegistryError(
          `${what}: more than ${MAX_LIST_PAGES} pages; the registry's Link headers may loop`,
        );
      }
      const response = await this.request({ method: "GET", url, scopes, expect: [200, 404], what });
      if (response.status === 404) {
        if (emptyOn404) {
          await response.body.cancel();
          return out;
        }
        const body = await describeErrorBody(response);
        throw new RegistryError(`${what} answered 404${body.text}; ${hintForStatus(404)}`, 404, body.codes);
      }
      const bytes = await readBounded(response, MAX_MANIFEST_BYTES, `${what} page`);
      const names = parseJsonObject(bytes, what)[field];
      if (names !== null && names !== undefined && !Array.isArray(names)) {
        throw new RegistryError(
          `${what}: "${field}" is not a list; the registry answered something unexpected`,
        );
      }
      for (const name of names ?? []) out.push(String(name));
      if (out.length > MAX_LIST_ENTRIES) {
        throw new RegistryError(`${what}: more than ${MAX_LIST_ENTRIES} entries; refusing to hold them all`);
      }
      const link = /<([^>]+)>\s*;\s*rel="?next"?/.exec(response.headers.get("link") ?? "");
      url = link ? new URL(link[1]!, this.baseUrl).toString() : undefined;
    }
    return out;
  }

  // ---- the request loop: auth, redirects, errors ----

  private async request(spec: RequestSpec): Promise<HttpResponse> {
    let url = new URL(spec.url, this.baseUrl);
    let authRetried = false;
    let redirects = 0;
    for (;;) {
      const headers: Record<string, string> = { ...spec.headers };
      const sameOrigin = url.origin === new URL(this.baseUrl).origin;
      // Credentials go to the registry only, never to the storage it redirects to.
      if (sameOrigin) {
        const authorization = await this.authorization(spec.scopes);
        if (authorization) headers.authorization = authorization;
      }
      let response: HttpResponse;
      try {
        response = await this.transport.send(url, spec.method, headers, spec.body);
      } catch (error) {
        const cause = (error as Error).message;
        if ((error as Partial<BodyError>).bodyFailed === true) {
          throw new RegistryError(`${spec.what}: reading the bytes to send failed (${cause})`);
        }
        throw new RegistryError(
          `${spec.what}: no answer from ${url.origin} (${cause}); check that the registry runs and the address, port and http/https (option insecure) are right`,
        );
      }
      if (spec.expect.includes(response.status)) {
        // A HEAD answer has no body to read, but it must be read to the end to free the connection.
        if (spec.method === "HEAD") await response.body.cancel();
        return response;
      }
      if (response.status === 401 && sameOrigin && !authRetried) {
        const challenge = parseChallenge(response.headers.get("www-authenticate"));
        if (challenge && (challenge.scheme === "bearer" || this.credentials.username !== undefined)) {
          await response.body.cancel();
          this.challenge = challenge;
          // A token we sent may have been revoked or lack a scope: ask for fresh ones.
          this.tokens.clear();
          authRetried = true;
          continue;
        }
      }
      if (
        [301, 302, 303, 307, 308].includes(response.status) &&
        (spec.method === "GET" || spec.method === "HEAD")
      ) {
        const location = response.headers.get("location");
        await response.body.cancel();
        if (location && redirects < MAX_REDIRECTS) {
          redirects++;
          url = new URL(location, url);
          continue;
        }
      }
      if (spec.method === "HEAD") await response.body.cancel();
      const body = spec.method === "HEAD" ? { text: "", codes: [] } : await describeErrorBody(response);
      const denied = parseChallenge(response.headers.get("www-authenticate"));
      const anonymous = this.credentials.username === undefined && !this.credentials.refreshToken;
      const hint =
        response.status !== 401
          ? hintForStatus(response.status)
          : anonymous
            ? "the registry needs credentials; pass username/password or a refresh token"
            : denied?.error === "insufficient_scope"
              ? `the credentials are valid but do not grant "${denied.scope ?? spec.scopes.join(" ")}"; grant that permission on the repository or use other credentials`
              : hintForStatus(401);
      throw new RegistryError(
        `${spec.what} answered ${response.status} ${response.statusText}${body.text}; ${hint}`,
        response.status,
        body.codes,
      );
    }
  }

  private async authorization(scopes: readonly string[]): Promise<string | undefined> {
    const challenge = this.challenge;
    if (!challenge) return undefined;
    if (challenge.scheme === "basic") {
      const { username, password } = this.credentials;
      return username === undefined ? undefined : basicHeader(username, password ?? "");
    }
    // A challenge's scope names the repository of the request that got it; later requests bring their own.
    const wanted = scopes.length > 0 ? scopes : challenge.scope ? challenge.scope.split(" ") : [];
    return `Bearer ${await this.tokens.token(challenge, [...new Set(wanted)].sort())}`;
  }
}

export function sha256Digest(bytes: Uint8Array): string {
  return `sha256:${createHash("sha256").update(bytes).digest("hex")}`;
}

function requireDigest(digest: string, what: string): void {
  if (!DIGEST_PATTERN.test(digest)) {
    throw new RegistryError(`${what} needs a digest sha256:<64 hex>, got "${digest}"`);
  }
}

function parseJsonObject(bytes: Uint8Array, what: string): Record<string, unknown> {
  try {
    const value = JSON.parse(new TextDecoder().decode(bytes));
    if (value && typeof value === "object" && !Array.isArray(value)) return value as Record<string, unknown>;
  } catch {
    // Reported below.
  }
  throw new RegistryError(`${what}: the registry answered a body that is not a JSON object`);
}

/**
 * The code of a RegistryError for blob bytes that do not hash to their digest: the Distribution
 * spec's name for it, so callers tell a corrupt copy from a failed request.
 */
export const DIGEST_INVALID = "DIGEST_INVALID";

/** Passes a stream through, hashing it; throws at the end if digest or size disagree. */
export async function* verifyStream(
  source: AsyncIterable<Uint8Array>,
  digest: string,
  expectedSize: number | undefined,
  what: string,
  advice = "the registry's copy is corrupt or was tampered with, do not use it (delete the blob and push it again)",
): AsyncGenerator<Uint8Array> {
  const hash = createHash("sha256");
  let total = 0;
  for await (const chunk of source) {
    total += chunk.length;
    if (expectedSize !== undefined && total > expectedSize) {
      throw new RegistryError(
        `${what}: more than the expected ${expectedSize} bytes; the blob is not the one asked for`,
      );
    }
    hash.update(chunk);
    yield chunk;
  }
  const actual = `sha256:${hash.digest("hex")}`;
  if (actual !== digest) {
    throw new RegistryError(
      `${what}: the ${total} bytes received hash to ${actual}, not ${digest}; ${advice}`,
      0,
      [DIGEST_INVALID],
    );
  }
  if (expectedSize !== undefined && total !== expectedSize) {
    throw new RegistryError(`${what}: got ${total} bytes, expected ${expectedSize}; the blob is truncated`);
  }
}
