/**
 * Ed25519 signing of bundle manifests through node:crypto. Keys are PEM (PKCS#8 private,
 * SPKI public) or raw 32-byte keys (hex or base64 text); the key id is the first 8 bytes of
 * sha256 over the raw public key, shown as 16 hex characters.
 */
import {
  createHash,
  createPrivateKey,
  createPublicKey,
  generateKeyPairSync,
  type KeyObject,
  sign,
  verify,
} from "node:crypto";
import {
  BundleError,
  ED25519_SIGNATURE_SIZE,
  KEY_ID_SIZE,
  SIGNATURE_ALGORITHM_ED25519,
  type SignatureBlock,
} from "./format.js";

/** Signatures cover this prefix plus the manifest bytes, so a bundle signature means nothing elsewhere. */
const SIGNING_CONTEXT = new TextEncoder().encode("deltaship bundle v1\0");

// DER prefixes that wrap a raw 32-byte Ed25519 key as PKCS#8 / SPKI (RFC 8410).
const PKCS8_PREFIX = Buffer.from("302e020100300506032b657004220420", "hex");
const SPKI_PREFIX = Buffer.from("302a300506032b6570032100", "hex");

export interface SigningKey {
  readonly privateKey: KeyObject;
  readonly publicKey: KeyObject;
  readonly keyId: string;
}

export interface TrustedKey {
  readonly publicKey: KeyObject;
  readonly keyId: string;
}

export function rawPublicKey(publicKey: KeyObject): Uint8Array {
  const der = publicKey.export({ format: "der", type: "spki" });
  return new Uint8Array(der.subarray(der.length - 32));
}

export function keyIdOf(publicKey: KeyObject): string {
  return createHash("sha256")
    .update(rawPublicKey(publicKey))
    .digest()
    .subarray(0, KEY_ID_SIZE)
    .toString("hex");
}

function rawBytes(text: string): Buffer | undefined {
  const trimmed = text.trim();
  if (/^[0-9a-fA-F]{64}$/.test(trimmed)) return Buffer.from(trimmed, "hex");
  if (/^[A-Za-z0-9+/]{43}=$/.test(trimmed)) return Buffer.from(trimmed, "base64");
  return undefined;
}

function checkEd25519(key: KeyObject, what: string): KeyObject {
  if (key.asymmetricKeyType !== "ed25519") {
    throw new Error(
      `${what} is a ${key.asymmetricKeyType} key; deltaship signs with Ed25519 (make one with 'deltaship keygen')`,
    );
  }
  return key;
}

/** Loads a private key: PKCS#8 PEM, or a raw 32-byte seed as hex/base64 text or bytes. */
export function loadSigningKey(material: string | Uint8Array): SigningKey {
  let privateKey: KeyObject;
  const text = typeof material === "string" ? material : Buffer.from(material).toString("utf8");
  if (text.includes("-----BEGIN")) {
    privateKey = createPrivateKey(text);
  } else {
    const raw =
      typeof material !== "string" && material.length === 32 ? Buffer.from(material) : rawBytes(text);
    if (raw === undefined)
      throw new Error("the signing key is neither PEM nor a raw 32-byte Ed25519 key (hex or base64)");
    privateKey = createPrivateKey({ key: Buffer.concat([PKCS8_PREFIX, raw]), format: "der", type: "pkcs8" });
  }
  checkEd25519(privateKey, "the signing key");
  const publicKey = createPublicKey(privateKey);
  return { privateKey, publicKey, keyId: keyIdOf(publicKey) };
}

/** Loads a public key: SPKI PEM, or a raw 32-byte key as hex/base64 text or bytes. */
export function loadTrustedKey(material: string | Uint8Array): TrustedKey {
  let publicKey: KeyObject;
  const text = typeof material === "string" ? material : Buffer.from(material).toString("utf8");
  if (text.includes("-----BEGIN")) {
    publicKey = createPublicKey(text);
  } else {
    const raw =
      typeof material !== "string" && material.length === 32 ? Buffer.from(material) : rawBytes(text);
    if (raw === undefined)
      throw new Error("the trusted key is neither PEM nor a raw 32-byte Ed25519 key (hex or base64)");
    publicKey = createPublicKey({ key: Buffer.concat([SPKI_PREFIX, raw]), format: "der", type: "spki" });
  }
  checkEd25519(publicKey, "the trusted key");
  return { publicKey, keyId: keyIdOf(publicKey) };
}

export function generateSigningKey(): SigningKey {
  const { privateKey, publicKey } = generateKeyPairSync("ed25519");
  return { privateKey, publicKey, keyId: keyIdOf(publicKey) };
}

export function privateKeyPem(key: SigningKey): string {
  return key.privateKey.export({ format: "pem", type: "pkcs8" }).toString();
}

export function publicKeyPem(key: { publicKey: KeyObject }): string {
  return key.publicKey.export({ format: "pem", type: "spki" }).toString();
}

function signedBytes(manifestBytes: Uint8Array): Buffer {
  return Buffer.concat([SIGNING_CONTEXT, manifestBytes]);
}

export function signManifest(manifestBytes: Uint8Array, key: SigningKey): SignatureBlock {
  const signature = new Uint8Array(sign(null, signedBytes(manifestBytes), key.privateKey));
  return { algorithm: SIGNATURE_ALGORITHM_ED25519, keyId: key.keyId, signature };
}

/** Throws a BundleError unless the signature is by one of `trusted` and covers exactly these manifest bytes. */
export function verifyManifest(
  manifestBytes: Uint8Array,
  block: SignatureBlock,
  trusted: readonly TrustedKey[],
): TrustedKey {
  const key = trusted.find((k) => k.keyId === block.keyId);
  if (key === undefined) {
    const known = trusted.map((k) => k.keyId).join(", ") || "none";
    throw new BundleError(
      "UNTRUSTED_KEY",
      "signature",
      `signed by key ${block.keyId}, which is not trusted here (trusted: ${known}); install the cloud's public key or rebuild the bundle with it`,
    );
  }
  if (
    block.signature.length !== ED25519_SIGNATURE_SIZE ||
    !verify(null, signedBytes(manifestBytes), key.publicKey, block.signature)
  ) {
    throw new BundleError(
      "SIGNATURE",
      "signature",
      `the Ed25519 signature does not verify with key ${block.keyId}; the bundle was altered or damaged, fetch it again`,
    );
  }
  return key;
}
