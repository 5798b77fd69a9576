import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { mkdtemp, readFile, rm, stat, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { before, describe, it } from "node:test";
import { writeBundleFile } from "../../delta/bundle/diff.js";
import {
  BundleError,
  type BundleManifest,
  canonicalJson,
  encodeHeader,
  encodeManifest,
  encodeSignatureBlock,
  HEADER_SIZE,
  MAX_MANIFEST_SIZE,
  parseBundle,
  parseHeader,
  readBundleHead,
  requiredLayers,
  SIGNATURE_BLOCK_SIZE,
} from "../../delta/bundle/format.js";
import {
  generateSigningKey,
  keyIdOf,
  loadSigningKey,
  loadTrustedKey,
  privateKeyPem,
  publicKeyPem,
  rawPublicKey,
  signManifest,
  verifyManifest,
} from "../../delta/bundle/sign.js";

const digestOf = (text: string) => `sha256:${createHash("sha256").update(text).digest("hex")}`;

const payloadA = new TextEncoder().encode("first payload bytes");
const payloadB = new TextEncoder().encode("second");
const config = new TextEncoder().encode('{"architecture":"amd64"}');

function sampleManifest(): BundleManifest {
  return {
    format: 1,
    target: {
      repository: "apps/telemetry",
      tag: "1.4.2",
      manifestDigest: digestOf("manifest"),
      config: Buffer.from(config).toString("base64"),
      configDigest: `sha256:${createHash("sha256").update(config).digest("hex")}`,
      layers: [
        { diffId: digestOf("base"), size: 10240 },
        { diffId: digestOf("app"), size: 2048 },
        { diffId: digestOf("extra"), size: 3072 },
      ],
    },
    sources: [{ diffId: digestOf("old app"), size: 4096 }],
    layers: [
      { present: true },
      {
        offset: 0,
        length: payloadA.length,
        sha256: `sha256:${createHash("sha256").update(payloadA).digest("hex")}`,
        outputSize: 2048,
        diffId: digestOf("app"),
        codec: "vcdiff-zstd",
      },
      {
        offset: payloadA.length,
        length: payloadB.length,
        sha256: `sha256:${createHash("sha256").update(payloadB).digest("hex")}`,
        outputSize: 3072,
        diffId: digestOf("extra"),
        codec: "zstd",
      },
    ],
  };
}

const key = generateSigningKey();

function bundleBytes(manifest = sampleManifest()): Uint8Array {
  const manifestBytes = encodeManifest(manifest);
  const signature = encodeSignatureBlock(signManifest(manifestBytes, key));
  const header = encodeHeader({
    manifestLength: manifestBytes.length,
    signatureLength: SIGNATURE_BLOCK_SIZE,
    payloadsLength: payloadA.length + payloadB.length,
  });
  return Buffer.concat([header, manifestBytes, signature, payloadA, payloadB]);
}

function expectBundleError(fn: () => unknown, code: string, where?: string): void {
  assert.throws(fn, (err: unknown) => {
    assert.ok(err instanceof BundleError, `expected a BundleError, got ${String(err)}`);
    assert.equal(err.code, code, err.message);
    if (where !== undefined) assert.equal(err.where, where, err.message);
    return true;
  });
}

describe("bundle format", () => {
  it("writes canonical JSON with sorted keys and no whitespace", () => {
    assert.equal(
      canonicalJson({ b: 1, a: [true, null, "x"], c: { z: 0, y: -1 } }),
      '{"a":[true,null,"x"],"b":1,"c":{"y":-1,"z":0}}',
    );
  });

  it("round-trips a bundle held in memory", () => {
    const bytes = bundleBytes();
    const head = parseBundle(bytes);
    assert.deepEqual(head.manifest, sampleManifest());
    assert.equal(head.header.totalLength, bytes.length);
    assert.equal(head.payloadsOffset, HEADER_SIZE + head.header.manifestLength + SIGNATURE_BLOCK_SIZE);
    assert.equal(head.signature.keyId, key.keyId);
    assert.deepEqual(requiredLayers(head.manifest), [digestOf("old app"), digestOf("base")]);
    assert.deepEqual(verifyManifest(head.manifestBytes, head.signature, [key]).keyId, key.keyId);
  });

  it("tells a bundle still arriving from a complete one", () => {
    const bytes = bundleBytes();
    expectBundleError(
      () => parseHeader(bytes.subarray(0, HEADER_SIZE), bytes.length - 1),
      "INCOMPLETE",
      `byte ${bytes.length - 1}`,
    );
    expectBundleError(() => parseBundle(bytes.subarray(0, 20)), "TRUNCATED", "byte 20");
    expectBundleError(() => parseBundle(Buffer.concat([bytes, Buffer.from([0])])), "TRUNCATED");
  });

  it("refuses wrong magic, versions and limits with where they were found", () => {
    const bytes = Buffer.from(bundleBytes());
    const badMagic = Buffer.from(bytes);
    badMagic[3] ^= 1;
    expectBundleError(() => parseBundle(badMagic), "BAD_MAGIC", "byte 3");
    const badVersion = Buffer.from(bytes);
    badVersion[9] = 2;
    expectBundleError(() => parseBundle(badVersion), "VERSION", "byte 8");
    const huge = Buffer.from(bytes);
    huge.writeUInt32BE(MAX_MANIFEST_SIZE + 1, 12);
    expectBundleError(() => parseBundle(huge), "LIMIT", "byte 12");
  });

  it("refuses manifests that are not canonical, have unknown fields or misplaced payloads", () => {
    const text = canonicalJson(sampleManifest());
    const spaced = new TextEncoder().encode(text.replace('{"format":1', '{ "format":1'));
    expectBundleError(() => parseBundleFrom(spaced), "MANIFEST", "manifest");
    const extra = JSON.parse(text);
    extra.target.extra = 1;
    expectBundleError(() => parseBundleFrom(encodeManifest(extra)), "MANIFEST", "target.extra");
    const gap = JSON.parse(text);
    gap.layers[2].offset += 1;
    expectBundleError(() => parseBundleFrom(encodeManifest(gap)), "MANIFEST", "layers[2].offset");
    const badDigest = JSON.parse(text);
    badDigest.sources[0].diffId = "sha256:xyz";
    expectBundleError(() => parseBundleFrom(encodeManifest(badDigest)), "MANIFEST", "sources[0].diffId");
    const codec = JSON.parse(text);
    codec.layers[1].codec = "bsdiff";
    expectBundleError(() => parseBundleFrom(encodeManifest(codec)), "MANIFEST", "layers[1].codec");
  });

  it("reads header and manifest of a file without loading payloads, and refuses a truncated file", async () => {
    const dir = await mkdtemp(join(tmpdir(), "bundle-format-"));
    try {
      const path = join(dir, "b.bundle");
      const bytes = bundleBytes();
      await writeFile(path, bytes);
      const head = await readBundleHead(path);
      assert.deepEqual(head.manifest, sampleManifest());
      await writeFile(path, bytes.subarray(0, bytes.length - 3));
      await assert.rejects(
        readBundleHead(path),
        (err: unknown) => err instanceof BundleError && err.code === "INCOMPLETE",
      );
    } finally {
      await rm(dir, { recursive: true });
    }
  });

  it("writes a bundle file atomically with the exact layout", async () => {
    const dir = await mkdtemp(join(tmpdir(), "bundle-format-"));
    try {
      await writeFile(join(dir, "a"), payloadA);
      await writeFile(join(dir, "b"), payloadB);
      const out = join(dir, "out.bundle");
      const size = await writeBundleFile(out, sampleManifest(), key, [
        undefined,
        join(dir, "a"),
        join(dir, "b"),
      ]);
      assert.equal(size, (await stat(out)).size);
      assert.deepEqual(new Uint8Array(await readFile(out)), new Uint8Array(bundleBytes()));
    } finally {
      await rm(dir, { recursive: true });
    }
  });
});

function parseBundleFrom(manifestBytes: Uint8Array): unknown {
  const signature = encodeSignatureBlock(signManifest(manifestBytes, key));
  const header = encodeHeader({
    manifestLength: manifestBytes.length,
    signatureLength: SIGNATURE_BLOCK_SIZE,
    payloadsLength: payloadA.length + payloadB.length,
  });
  return parseBundle(Buffer.concat([header, manifestBytes, signature, payloadA, payloadB]));
}

describe("bundle signatures", () => {
  it("loads keys from PEM and from raw bytes with the same key id", () => {
    const fromPem = loadSigningKey(privateKeyPem(key));
    assert.equal(fromPem.keyId, key.keyId);
    const pub = loadTrustedKey(publicKeyPem(key));
    assert.equal(pub.keyId, key.keyId);
    const raw = loadTrustedKey(Buffer.from(rawPublicKey(key.publicKey)).toString("hex"));
    assert.equal(raw.keyId, key.keyId);
    assert.equal(
      keyIdOf(key.publicKey),
      createHash("sha256").update(rawPublicKey(key.publicKey)).digest("hex").slice(0, 16),
    );
  });

  it("rejects a manifest changed after signing", () => {
    const head = parseBundle(bundleBytes());
    const changed = Buffer.from(head.manifestBytes);
    changed[changed.indexOf("1.4.2") + 4] = 0x33;
    expectBundleError(() => verifyManifest(changed, head.signature, [key]), "SIGNATURE", "signature");
  });

  it("rejects a signature by a key that is not trusted, naming both key ids", () => {
    const head = parseBundle(bundleBytes());
    const other = generateSigningKey();
    assert.throws(
      () => verifyManifest(head.manifestBytes, head.signature, [other]),
      (err: unknown) =>
        err instanceof BundleError &&
        err.code === "UNTRUSTED_KEY" &&
        err.message.includes(key.keyId) &&
        err.message.includes(other.keyId),
    );
  });

  it("rejects a signature made by another key that claims a trusted key id", () => {
    const head = parseBundle(bundleBytes());
    const impostor = generateSigningKey();
    const forged = { ...signManifest(head.manifestBytes, impostor), keyId: key.keyId };
    expectBundleError(() => verifyManifest(head.manifestBytes, forged, [key]), "SIGNATURE");
  });
});

/** A small deterministic PRNG so fuzz failures reproduce. */
function xorshift(seed: number): () => number {
  let x = seed | 0 || 1;
  return () => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return (x >>> 0) / 2 ** 32;
  };
}

describe("bundle parser fuzzing", () => {
  let valid: Uint8Array;
  before(() => {
    valid = bundleBytes();
  });

  it("answers every mutated bundle with a parse, a BundleError, or a failed signature, never another error", () => {
    const random = xorshift(20261128);
    let parsed = 0;
    let refused = 0;
    for (let round = 0; round < 3000; round++) {
      const bytes = Buffer.from(valid);
      const edits = 1 + Math.floor(random() * 4);
      for (let e = 0; e < edits; e++) {
        const at = Math.floor(random() * bytes.length);
        const kind = random();
        if (kind < 0.6) bytes[at] = Math.floor(random() * 256);
        else if (kind < 0.8) bytes[at] ^= 1 << Math.floor(random() * 8);
        else bytes.copyWithin(at, Math.floor(random() * bytes.length));
      }
      const cut = random() < 0.2 ? Math.floor(random() * bytes.length) : bytes.length;
      try {
        const head = parseBundle(bytes.subarray(0, cut));
        parsed++;
        // Whatever parses must still fail the signature unless the signed bytes are intact.
        const intact =
          Buffer.compare(Buffer.from(head.manifestBytes), Buffer.from(parseBundle(valid).manifestBytes)) ===
          0;
        if (!intact)
          expectBundleError(
            () => verifyManifest(head.manifestBytes, head.signature, [key]),
            head.signature.keyId === key.keyId ? "SIGNATURE" : "UNTRUSTED_KEY",
          );
      } catch (err) {
        assert.ok(err instanceof BundleError, `round ${round}: ${String(err)}`);
        refused++;
      }
    }
    assert.equal(parsed + refused, 3000);
    assert.ok(refused > 2000, `only ${refused} of 3000 mutations were refused`);
  });

  it("refuses random bytes as a bundle", () => {
    const random = xorshift(7);
    for (let round = 0; round < 1000; round++) {
      const length = Math.floor(random() * 200);
      const bytes = new Uint8Array(length).map(() => Math.floor(random() * 256));
      if (round % 2 === 0 && length >= 8) bytes.set(valid.subarray(0, 8));
      assert.throws(() => parseBundle(bytes), BundleError);
    }
  });
});
