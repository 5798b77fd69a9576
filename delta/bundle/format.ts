/**
 * The bundle file, byte by byte: a fixed header, a canonical JSON manifest, an Ed25519
 * signature block, then the payloads. This module parses and serializes those parts and
 * validates them strictly; it signs nothing and decodes no payload (see sign.ts, apply.ts).
 *
 *   offset  size  field
 *   0       8     magic "\x89DSHIP\r\n"
 *   8       2     format version, big-endian (1)
 *   10      2     flags, must be 0
 *   12      4     manifest length M
 *   16      4     signature block length S
 *   20      4     reserved, must be 0
 *   24      8     payloads length P
 *   32      8     total file length = 40 + M + S + P
 *   40      M     manifest: canonical JSON (sorted keys, no whitespace), UTF-8
 *   40+M    S     signature block: algorithm (1 = Ed25519), key id (8 bytes), signature (64 bytes)
 *   40+M+S  P     payloads, each at its manifest offset (relative to the payloads start)
 */
import { open } from "node:fs/promises";

export const BUNDLE_MAGIC = Uint8Array.of(0x89, 0x44, 0x53, 0x48, 0x49, 0x50, 0x0d, 0x0a);
export const BUNDLE_FORMAT_VERSION = 1;
export const HEADER_SIZE = 40;

export const SIGNATURE_ALGORITHM_ED25519 = 1;
export const KEY_ID_SIZE = 8;
export const ED25519_SIGNATURE_SIZE = 64;
export const SIGNATURE_BLOCK_SIZE = 1 + KEY_ID_SIZE + ED25519_SIGNATURE_SIZE;

/**
 * Payload codecs. `vcdiff-zstd`: zstd frame of an RFC 3284 delta against the virtual source;
 * `zstd`: zstd frame of the tar itself; `ref-zstd`: file-aligned copies plus zstd frames of the
 * rest against the old versions (delta/refzstd/format.ts); `zstd-x86`: a table of executable
 * ranges, then a zstd frame of the tar with those ranges through the x86 branch filter
 * (delta/filters/payload.ts); `brotli` and `brotli-x86`: the same as `zstd` and `zstd-x86` with
 * a Brotli stream (RFC 7932, window at most 16 MiB) instead of the zstd frame; `zstd-gz` and
 * `brotli-gz`: the x86 filter table (maybe empty), then a table of gzip files sent as their text
 * (delta/filters/gzip.ts), then the zstd frame or Brotli stream of the tar so transformed;
 * `zstd-far` and `brotli-far`: a table of far copies (repeats of the layer's own earlier bytes,
 * delta/filters/far.ts) and the x86 and gzip tables (each maybe empty) of the layer without the
 * copied bytes, packed in one Brotli stream, then its zstd frame or Brotli stream.
 */
export const PAYLOAD_CODECS = [
  "vcdiff-zstd",
  "zstd",
  "ref-zstd",
  "zstd-x86",
  "brotli",
  "brotli-x86",
  "zstd-gz",
  "brotli-gz",
  "zstd-far",
  "brotli-far",
] as const;
export type PayloadCodec = (typeof PAYLOAD_CODECS)[number];
/** What compresses a plain (whole-layer) payload. */
export type PlainCompressor = "zstd" | "brotli";
/**
 * The plain codec of `compressor`, with or without the x86 filter table, or with gzip pieces (and
 * the x86 table), or with far copies (and both tables).
 */
export function plainCodecOf(
  compressor: PlainCompressor,
  x86: boolean,
  gzip = false,
  far = false,
): PayloadCodec {
  if (far) return compressor === "brotli" ? "brotli-far" : "zstd-far";
  if (gzip) return compressor === "brotli" ? "brotli-gz" : "zstd-gz";
  if (compressor === "brotli") return x86 ? "brotli-x86" : "brotli";
  return x86 ? "zstd-x86" : "zstd";
}

// Limits that guard the parser against hostile input.
/** A manifest larger than this is refused: it is read into memory whole before the signature check. */
export const MAX_MANIFEST_SIZE = 4 * 1024 * 1024;
/** Docker caps an image at 127 layers; anything far beyond is not an image. */
export const MAX_LAYERS = 1000;
/** Source layers can come from several held images, still a bounded list. */
export const MAX_SOURCE_LAYERS = 4000;
/** An image config larger than this is refused: it travels inside the manifest. */
export const MAX_CONFIG_SIZE = 1024 * 1024;
/** Repository names, tags and digests are short; longer strings are refused. */
export const MAX_STRING_LENGTH = 1024;
/** A signature block is fixed size in version 1; anything else is refused before reading it. */
export const MAX_SIGNATURE_BLOCK_SIZE = 1024;
/** Sizes stay exact JavaScript integers (2^53 bytes is far beyond any layer). */
export const MAX_SIZE = Number.MAX_SAFE_INTEGER;

export type BundleErrorCode =
  | "BAD_MAGIC"
  | "VERSION"
  | "TRUNCATED"
  | "INCOMPLETE"
  | "LIMIT"
  | "MANIFEST"
  | "SIGNATURE"
  | "UNTRUSTED_KEY"
  | "MISSING_SOURCE"
  | "PAYLOAD"
  | "DIGEST"
  | "IO";

/** Every malformed, truncated, unsigned or unverifiable bundle ends in this error: what failed and where. */
export class BundleError extends Error {
  readonly code: BundleErrorCode;
  /** Where: a byte offset (`byte 12`) or a manifest field (`layers[2].sha256`). */
  readonly where: string;
  constructor(code: BundleErrorCode, where: string, message: string) {
    super(`bundle ${code.toLowerCase().replace(/_/g, " ")} at ${where}: ${message}`);
    this.name = "BundleError";
    this.code = code;
    this.where = where;
  }
}

export interface BundleHeader {
  readonly version: number;
  readonly manifestLength: number;
  readonly signatureLength: number;
  readonly payloadsLength: number;
  readonly totalLength: number;
}

export interface LayerRef {
  /** `sha256:…` of the uncompressed tar. */
  readonly diffId: string;
  /** Uncompressed tar size in bytes. */
  readonly size: number;
}

export interface TargetImage {
  readonly repository: string;
  readonly tag: string;
  /** Digest of the registry manifest the target was read from; empty when it came from an archive without one. */
  readonly manifestDigest: string;
  /** The exact config JSON bytes, base64. */
  readonly config: string;
  readonly configDigest: string;
  readonly layers: readonly LayerRef[];
}

/** The target layer is already on the device (it holds a layer with this diff_id). */
export interface PresentLayer {
  readonly present: true;
}

export interface LayerPayload {
  /** Offset of the payload from the start of the payloads section. */
  readonly offset: number;
  readonly length: number;
  /** `sha256:…` of the payload bytes. */
  readonly sha256: string;
  /** Size of the decoded layer tar. */
  readonly outputSize: number;
  /** Expected diff_id of the decoded tar. */
  readonly diffId: string;
  readonly codec: PayloadCodec;
}

export type LayerEntry = PresentLayer | LayerPayload;

export interface BundleManifest {
  readonly format: number;
  readonly target: TargetImage;
  /** Layers the device must hold, in the order they form the virtual source. */
  readonly sources: readonly LayerRef[];
  /** One entry per target layer, same order as target.layers. */
  readonly layers: readonly LayerEntry[];
}

export interface SignatureBlock {
  readonly algorithm: number;
  /** 16 hex characters. */
  readonly keyId: string;
  readonly signature: Uint8Array;
}

export function isPresent(entry: LayerEntry): entry is PresentLayer {
  return (entry as PresentLayer).present === true;
}

/** JSON with object keys sorted by code unit and no whitespace: one byte string per value, so signatures are stable. */
export function canonicalJson(value: unknown): string {
  if (value === null || typeof value === "boolean" || typeof value === "string") return JSON.stringify(value);
  if (typeof value === "number") {
    if (!Number.isFinite(value)) throw new TypeError(`canonical JSON has no form for ${value}`);
    return JSON.stringify(value);
  }
  if (Array.isArray(value)) return `[${value.map(canonicalJson).join(",")}]`;
  if (typeof value === "object") {
    const entries = Object.entries(value as Record<string, unknown>)
      .filter(([, v]) => v !== undefined)
      .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
    return `{${entries.map(([k, v]) => `${JSON.stringify(k)}:${canonicalJson(v)}`).join(",")}}`;
  }
  throw new TypeError(`canonical JSON has no form for a ${typeof value}`);
}

export function encodeManifest(manifest: BundleManifest): Uint8Array {
  return new TextEncoder().encode(canonicalJson(manifest));
}

export function encodeHeader(header: Omit<BundleHeader, "version" | "totalLength">): Uint8Array {
  const bytes = new Uint8Array(HEADER_SIZE);
  const view = new DataView(bytes.buffer);
  bytes.set(BUNDLE_MAGIC, 0);
  view.setUint16(8, BUNDLE_FORMAT_VERSION);
  view.setUint32(12, header.manifestLength);
  view.setUint32(16, header.signatureLength);
  view.setBigUint64(24, BigInt(header.payloadsLength));
  const total = HEADER_SIZE + header.manifestLength + header.signatureLength + header.payloadsLength;
  view.setBigUint64(32, BigInt(total));
  return bytes;
}

/** Parses and validates the 40-byte header; `available` (the bytes present so far) tells a complete file from one still arriving. */
export function parseHeader(bytes: Uint8Array, available?: number): BundleHeader {
  if (bytes.length < HEADER_SIZE) {
    throw new BundleError(
      "TRUNCATED",
      `byte ${bytes.length}`,
      `expected a ${HEADER_SIZE}-byte header, found ${bytes.length} bytes`,
    );
  }
  for (let i = 0; i < BUNDLE_MAGIC.length; i++) {
    if (bytes[i] !== BUNDLE_MAGIC[i]) {
      throw new BundleError("BAD_MAGIC", `byte ${i}`, "this is not a Deltaship bundle (magic bytes differ)");
    }
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, HEADER_SIZE);
  const version = view.getUint16(8);
  if (version !== BUNDLE_FORMAT_VERSION) {
    throw new BundleError(
      "VERSION",
      "byte 8",
      `format version ${version} is not supported (this build reads ${BUNDLE_FORMAT_VERSION}); update deltaship`,
    );
  }
  if (view.getUint16(10) !== 0 || view.getUint32(20) !== 0) {
    throw new BundleError(
      "VERSION",
      "byte 10",
      "flags or reserved bytes are set; this bundle needs a newer reader",
    );
  }
  const manifestLength = view.getUint32(12);
  const signatureLength = view.getUint32(16);
  const payloadsLength = bigToSize(view.getBigUint64(24), "byte 24");
  const totalLength = bigToSize(view.getBigUint64(32), "byte 32");
  if (manifestLength === 0 || manifestLength > MAX_MANIFEST_SIZE) {
    throw new BundleError(
      "LIMIT",
      "byte 12",
      `manifest length ${manifestLength} is outside 1..${MAX_MANIFEST_SIZE}`,
    );
  }
  if (signatureLength !== SIGNATURE_BLOCK_SIZE) {
    throw new BundleError(
      "LIMIT",
      "byte 16",
      `signature block length ${signatureLength}, expected ${SIGNATURE_BLOCK_SIZE}`,
    );
  }
  if (totalLength !== HEADER_SIZE + manifestLength + signatureLength + payloadsLength) {
    throw new BundleError(
      "MANIFEST",
      "byte 32",
      `total length ${totalLength} differs from header + manifest + signature + payloads = ${HEADER_SIZE + manifestLength + signatureLength + payloadsLength}`,
    );
  }
  if (available !== undefined && available !== totalLength) {
    throw new BundleError(
      available < totalLength ? "INCOMPLETE" : "TRUNCATED",
      `byte ${available}`,
      available < totalLength
        ? `the file has ${available} of ${totalLength} bytes; it is still arriving or was cut short`
        : `the file has ${available} bytes but the header says ${totalLength}; extra bytes follow the bundle`,
    );
  }
  return { version, manifestLength, signatureLength, payloadsLength, totalLength };
}

function bigToSize(value: bigint, where: string): number {
  if (value > BigInt(MAX_SIZE)) throw new BundleError("LIMIT", where, `length ${value} exceeds ${MAX_SIZE}`);
  return Number(value);
}

export function encodeSignatureBlock(block: SignatureBlock): Uint8Array {
  const bytes = new Uint8Array(SIGNATURE_BLOCK_SIZE);
  bytes[0] = block.algorithm;
  bytes.set(Buffer.from(block.keyId, "hex"), 1);
  bytes.set(block.signature, 1 + KEY_ID_SIZE);
  return bytes;
}

export function parseSignatureBlock(bytes: Uint8Array, offset: number): SignatureBlock {
  if (bytes.length !== SIGNATURE_BLOCK_SIZE) {
    throw new BundleError(
      "TRUNCATED",
      `byte ${offset}`,
      `signature block has ${bytes.length} bytes, expected ${SIGNATURE_BLOCK_SIZE}`,
    );
  }
  if (bytes[0] !== SIGNATURE_ALGORITHM_ED25519) {
    throw new BundleError(
      "SIGNATURE",
      `byte ${offset}`,
      `signature algorithm ${bytes[0]} is unknown (1 = Ed25519)`,
    );
  }
  return {
    algorithm: bytes[0],
    keyId: Buffer.from(bytes.subarray(1, 1 + KEY_ID_SIZE)).toString("hex"),
    signature: bytes.slice(1 + KEY_ID_SIZE),
  };
}

// ---- manifest validation -------------------------------------------------------------------

const DIGEST_PATTERN = /^sha256:[0-9a-f]{64}$/;

type Json = Record<string, unknown>;

function fail(where: string, message: string): never {
  throw new BundleError("MANIFEST", where, message);
}

function object(value: unknown, where: string, keys: readonly string[]): Json {
  if (value === null || typeof value !== "object" || Array.isArray(value)) fail(where, "expected an object");
  const obj = value as Json;
  for (const key of Object.keys(obj)) {
    if (!keys.includes(key)) fail(`${where}.${key}`, `unknown field (expected one of ${keys.join(", ")})`);
  }
  return obj;
}

function string(obj: Json, key: string, where: string, max = MAX_STRING_LENGTH): string {
  const value = obj[key];
  if (typeof value !== "string") fail(`${where}.${key}`, `expected a string, found ${typeof value}`);
  if (value.length > max)
    throw new BundleError("LIMIT", `${where}.${key}`, `${value.length} characters exceed ${max}`);
  return value;
}

function digest(obj: Json, key: string, where: string, allowEmpty = false): string {
  const value = string(obj, key, where);
  if (allowEmpty && value === "") return value;
  if (!DIGEST_PATTERN.test(value))
    fail(`${where}.${key}`, `expected sha256:<64 hex>, found ${JSON.stringify(value.slice(0, 80))}`);
  return value;
}

function size(obj: Json, key: string, where: string): number {
  const value = obj[key];
  if (typeof value !== "number" || !Number.isSafeInteger(value) || value < 0) {
    fail(`${where}.${key}`, `expected a non-negative integer, found ${JSON.stringify(value)}`);
  }
  return value;
}

function array(value: unknown, where: string, max: number): unknown[] {
  if (!Array.isArray(value)) fail(where, "expected an array");
  if (value.length > max) throw new BundleError("LIMIT", where, `${value.length} entries exceed ${max}`);
  return value;
}

function layerRef(value: unknown, where: string): LayerRef {
  const obj = object(value, where, ["diffId", "size"]);
  return { diffId: digest(obj, "diffId", where), size: size(obj, "size", where) };
}

/**
 * Parses manifest bytes: exact canonical form (re-serializing must give the same bytes),
 * known fields only, digests well formed, payloads tiling the payloads section in order.
 */
export function parseManifest(bytes: Uint8Array, payloadsLength: number): BundleManifest {
  if (bytes.length > MAX_MANIFEST_SIZE) {
    throw new BundleError("LIMIT", "manifest", `${bytes.length} bytes exceed ${MAX_MANIFEST_SIZE}`);
  }
  let text: string;
  let raw: unknown;
  try {
    text = new TextDecoder("utf-8", { fatal: true }).decode(bytes);
    raw = JSON.parse(text);
  } catch (err) {
    fail("manifest", `not valid UTF-8 JSON: ${(err as Error).message}`);
  }
  const top = object(raw, "manifest", ["format", "target", "sources", "layers"]);
  if (top.format !== BUNDLE_FORMAT_VERSION)
    fail("manifest.format", `expected ${BUNDLE_FORMAT_VERSION}, found ${JSON.stringify(top.format)}`);

  const t = object(top.target, "target", [
    "repository",
    "tag",
    "manifestDigest",
    "config",
    "configDigest",
    "layers",
  ]);
  const config = string(t, "config", "target", Math.ceil((MAX_CONFIG_SIZE * 4) / 3) + 4);
  if (!/^[A-Za-z0-9+/]*={0,2}$/.test(config) || config.length % 4 !== 0)
    fail("target.config", "expected base64");
  const targetLayers = array(t.layers, "target.layers", MAX_LAYERS).map((l, i) =>
    layerRef(l, `target.layers[${i}]`),
  );
  const target: TargetImage = {
    repository: string(t, "repository", "target"),
    tag: string(t, "tag", "target"),
    manifestDigest: digest(t, "manifestDigest", "target", true),
    config,
    configDigest: digest(t, "configDigest", "target"),
    layers: targetLayers,
  };
  const sources = array(top.sources, "sources", MAX_SOURCE_LAYERS).map((l, i) =>
    layerRef(l, `sources[${i}]`),
  );
  const entries = array(top.layers, "layers", MAX_LAYERS);
  if (entries.length !== targetLayers.length) {
    fail("layers", `${entries.length} entries for ${targetLayers.length} target layers`);
  }
  let expectedOffset = 0;
  const layers = entries.map((value, i): LayerEntry => {
    const where = `layers[${i}]`;
    if (value !== null && typeof value === "object" && "present" in value) {
      const obj = object(value, where, ["present"]);
      if (obj.present !== true) fail(`${where}.present`, "expected true");
      return { present: true };
    }
    const obj = object(value, where, ["offset", "length", "sha256", "outputSize", "diffId", "codec"]);
    const codec = string(obj, "codec", where) as PayloadCodec;
    if (!PAYLOAD_CODECS.includes(codec))
      fail(`${where}.codec`, `unknown codec ${JSON.stringify(codec)} (known: ${PAYLOAD_CODECS.join(", ")})`);
    const payload: LayerPayload = {
      offset: size(obj, "offset", where),
      length: size(obj, "length", where),
      sha256: digest(obj, "sha256", where),
      outputSize: size(obj, "outputSize", where),
      diffId: digest(obj, "diffId", where),
      codec,
    };
    if (payload.offset !== expectedOffset)
      fail(
        `${where}.offset`,
        `expected ${expectedOffset} (payloads follow each other), found ${payload.offset}`,
      );
    expectedOffset += payload.length;
    if (expectedOffset > payloadsLength)
      fail(
        `${where}.length`,
        `payload ends at ${expectedOffset}, past the ${payloadsLength}-byte payloads section`,
      );
    if (payload.diffId !== targetLayers[i].diffId)
      fail(`${where}.diffId`, `differs from target.layers[${i}].diffId`);
    if (payload.outputSize !== targetLayers[i].size)
      fail(`${where}.outputSize`, `differs from target.layers[${i}].size`);
    return payload;
  });
  if (expectedOffset !== payloadsLength)
    fail("layers", `payloads cover ${expectedOffset} bytes, the section has ${payloadsLength}`);
  const manifest: BundleManifest = { format: BUNDLE_FORMAT_VERSION, target, sources, layers };
  if (canonicalJson(raw) !== text) fail("manifest", "not in canonical form (sorted keys, no whitespace)");
  return manifest;
}

/** The target's exact config bytes. */
export function manifestConfig(manifest: BundleManifest): Uint8Array {
  return new Uint8Array(Buffer.from(manifest.target.config, "base64"));
}

/** Every diff_id the device must hold: the listed sources plus the target layers marked present. */
export function requiredLayers(manifest: BundleManifest): string[] {
  const needed = new Set(manifest.sources.map((s) => s.diffId));
  manifest.layers.forEach((entry, i) => {
    if (isPresent(entry)) needed.add(manifest.target.layers[i].diffId);
  });
  return [...needed];
}

/** A bundle whose header, manifest and signature block were read; payloads stay on disk. */
export interface BundleHead {
  readonly header: BundleHeader;
  readonly manifest: BundleManifest;
  readonly manifestBytes: Uint8Array;
  readonly signature: SignatureBlock;
  /** Absolute file offset of the payloads section. */
  readonly payloadsOffset: number;
}

/** Parses a whole bundle held in memory (tests, fuzzing, small bundles). */
export function parseBundle(bytes: Uint8Array): BundleHead {
  const header = parseHeader(bytes.subarray(0, HEADER_SIZE), bytes.length);
  const manifestBytes = bytes.subarray(HEADER_SIZE, HEADER_SIZE + header.manifestLength);
  const manifest = parseManifest(manifestBytes, header.payloadsLength);
  const sigStart = HEADER_SIZE + header.manifestLength;
  const signature = parseSignatureBlock(
    bytes.subarray(sigStart, sigStart + header.signatureLength),
    sigStart,
  );
  return { header, manifest, manifestBytes, signature, payloadsOffset: sigStart + header.signatureLength };
}

/** Reads header, manifest and signature block of a bundle file without touching its payloads. */
export async function readBundleHead(path: string): Promise<BundleHead> {
  let handle: Awaited<ReturnType<typeof open>>;
  try {
    handle = await open(path, "r");
  } catch (err) {
    throw new BundleError("IO", path, `cannot open the bundle: ${(err as Error).message}`);
  }
  try {
    const { size: fileSize } = await handle.stat();
    const headBytes = new Uint8Array(HEADER_SIZE);
    const { bytesRead } = await handle.read(headBytes, 0, HEADER_SIZE, 0);
    const header = parseHeader(headBytes.subarray(0, bytesRead), fileSize);
    const rest = new Uint8Array(header.manifestLength + header.signatureLength);
    await handle.read(rest, 0, rest.length, HEADER_SIZE);
    const manifestBytes = rest.subarray(0, header.manifestLength);
    const manifest = parseManifest(manifestBytes, header.payloadsLength);
    const sigStart = HEADER_SIZE + header.manifestLength;
    const signature = parseSignatureBlock(rest.subarray(header.manifestLength), sigStart);
    return { header, manifest, manifestBytes, signature, payloadsOffset: sigStart + header.signatureLength };
  } finally {
    await handle.close();
  }
}
