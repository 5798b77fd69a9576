import assert from "node:assert/strict";
import { mkdtemp, readdir, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import {
  type ApplyResult,
  applyBundle,
  copyError,
  ImageLayerProvider,
  scratchNeeded,
} from "../../delta/bundle/apply.js";
import {
  BundleError,
  encodeHeader,
  encodeManifest,
  encodeSignatureBlock,
  HEADER_SIZE,
  parseBundle,
} from "../../delta/bundle/format.js";
import { ArrivingFileSource, WrittenSoFar } from "../../delta/bundle/scratch.js";
import { generateSigningKey, type SigningKey, signManifest } from "../../delta/bundle/sign.js";
import { openImage } from "../../delta/image/open.js";
import { openRegistryImage, pushImage, RegistryClient } from "../../delta/image/registry.js";
import type { ImageReader } from "../../delta/image/types.js";
import { BufferSource, ConcatSource } from "../../delta/vcdiff/source.js";
import { assertLayerTars } from "../support/bundles.js";
import { startRegistry, type TestRegistry } from "../support/registry.js";
import { bundleBetween, imageOf, sha256, twoLayerUpdate, writeArchive } from "./fixtures.js";

/**
 * Held layers that must be copied to this device's scratch first (registry blobs, compressed
 * layers) are read as they arrive: decoding and the writer start before the copies end, and the
 * image is made only once every source has arrived whole and intact. The device's image is in a
 * real local registry with gzip layers; one layer's copy is held back by the test (a reader that
 * pauses the registry's stream: the only stand-in here, for timing).
 */
let dir: string;
let registry: TestRegistry;
let key: SigningKey;
let bundle: string;
let v1Path: string;
let v1: Uint8Array[];
let v2: Uint8Array[];
const held = () => `${registry.host}/apps/held:1`;

before(async () => {
  dir = await mkdtemp(join(tmpdir(), "apply-arriving-"));
  registry = await startRegistry();
  key = generateSigningKey();
  ({ v1, v2 } = await twoLayerUpdate());
  v1Path = await writeArchive(join(dir, "v1.tar"), imageOf("apps/held", "1", v1));
  const v2Path = await writeArchive(join(dir, "v2.tar"), imageOf("apps/held", "2", v2));
  bundle = join(dir, "v1-to-v2.bundle");
  await bundleBetween(v1Path, v2Path, key, bundle, dir);
  await pushImage(held(), imageOf("apps/held", "1", v1), { compression: "gzip" });
});

after(async () => {
  await registry?.stop();
  await rm(dir, { recursive: true, force: true });
});

/**
 * A gate: `wait()` resolves once `open()` was called, or after 5 s at the latest, so that code
 * that waited for the whole copy before going on fails these tests instead of hanging them.
 */
function gate(): { wait: () => Promise<void>; open: () => void; isOpen: () => boolean } {
  let opened = false;
  let resolve!: () => void;
  const done = new Promise<void>((r) => {
    resolve = r;
  });
  const open = () => {
    opened = true;
    resolve();
  };
  setTimeout(open, 5000).unref();
  return { wait: () => done, open, isOpen: () => opened };
}

/**
 * The registry image, with layer `index`'s tar stream paused after its first `first` bytes until
 * `release` resolves (the copy of that layer is then still running), or failing there if it rejects.
 */
async function heldBack(index: number, first: number, release: Promise<void>): Promise<ImageReader> {
  const image = await openRegistryImage(held());
  const paused: ImageReader = Object.create(image);
  paused.openLayerTar = async (i: number) => {
    const stream = await image.openLayerTar(i);
    if (i !== index) return stream;
    return (async function* () {
      let sent = 0;
      for await (const chunk of stream) {
        if (sent < first && sent + chunk.length >= first) {
          yield chunk.subarray(0, first - sent);
          await release;
          yield chunk.subarray(first - sent);
        } else {
          yield chunk;
        }
        sent += chunk.length;
      }
    })();
  };
  return paused;
}

/** Applies `path` with the device's layers from `provider`, pushing into the test registry as `ref`; `beforePush` runs first. */
function applyIntoRegistry(
  path: string,
  provider: ImageLayerProvider,
  ref: string,
  beforePush?: () => Promise<void>,
): Promise<ApplyResult> {
  return applyBundle({
    bundle: path,
    trust: [key],
    layers: provider,
    scratchDir: dir,
    skipDiskCheck: true,
    writeWhileDecoding: true,
    write: async (target) => {
      await beforePush?.();
      const pushed = await pushImage(`${registry.host}/${ref}`, target);
      return { image: pushed.reference, digest: pushed.manifestDigest, bytesWritten: 0 };
    },
  });
}

/**
 * Applies `path` from `image` into the test registry as `repository:2`, expects it refused with a
 * BundleError of `code` whose message matches `message`, and no tag in `repository`; closes `image`.
 */
async function assertRefused(
  path: string,
  image: ImageReader,
  repository: string,
  code: string,
  message: RegExp,
): Promise<void> {
  const provider = new ImageLayerProvider([image], dir);
  try {
    await assert.rejects(applyIntoRegistry(path, provider, `${repository}:2`), (err: unknown) => {
      assert.ok(err instanceof BundleError, String(err));
      assert.equal(err.code, code);
      assert.match(err.message, message);
      return true;
    });
  } finally {
    await provider.close();
    await image.close();
  }
  const client = new RegistryClient(registry.host);
  try {
    assert.deepEqual(await client.listTags(repository), []);
  } finally {
    client.close();
  }
}

describe("held layers read as they arrive", () => {
  it("ArrivingFileSource: ranges there are read at once, others waited for; a copy that fails fails the wait", async () => {
    const path = join(dir, "arriving.bin");
    const bytes = Buffer.from(Array.from({ length: 10_000 }, (_, i) => i % 251));
    await writeFile(path, bytes.subarray(0, 4000));
    const progress = new WrittenSoFar("the test copy");
    progress.advance(4000);
    const source = await ArrivingFileSource.follow(path, bytes.length, progress);
    try {
      assert.equal(source.whenReadable(0, 4000), undefined);
      const into = new Uint8Array(100);
      source.readSync(3900, into, 0, 100);
      assert.deepEqual(Buffer.from(into), bytes.subarray(3900, 4000));
      assert.throws(() => source.readSync(3950, into, 0, 100), /before they were copied there/);
      assert.throws(() => source.whenReadable(9950, 100), /past the end/);
      // A concatenation forwards the wait to the part that still arrives.
      const concat = new ConcatSource([new BufferSource(new Uint8Array(50)), source]);
      assert.equal(concat.whenReadable!(0, 4050), undefined);
      const waiting = concat.whenReadable!(4000, 1000);
      assert.ok(waiting instanceof Promise);
      const read = source.read(5000, into, 0, 100);
      await writeFile(path, bytes);
      progress.advance(bytes.length);
      await waiting;
      await read;
      assert.deepEqual(Buffer.from(into), bytes.subarray(5000, 5100));
    } finally {
      await source.close();
    }
    const failing = new WrittenSoFar("the failing copy");
    const partial = await ArrivingFileSource.follow(path, bytes.length, failing);
    try {
      const wait = partial.whenReadable(0, 10);
      failing.end(new Error("the registry went away"));
      await assert.rejects(wait!, /the registry went away/);
      await assert.rejects(partial.read(0, new Uint8Array(1), 0, 1), /the registry went away/);
    } finally {
      await partial.close();
    }
  });

  it("two opens of one layer at once share one copy; closing the provider stops a copy and removes it", async () => {
    const release = gate();
    const image = await heldBack(1, 100_000, release.wait());
    const scratch = await mkdtemp(join(dir, "shared-"));
    const provider = new ImageLayerProvider([image], scratch);
    try {
      const id = sha256(v1[1]!);
      const [a, b] = await Promise.all([provider.open(id, v1[1]!.length), provider.open(id, v1[1]!.length)]);
      const copies = (await readdir(scratch, { recursive: true })).filter((f) => f.endsWith("held.tar"));
      assert.equal(copies.length, 1, copies.join(", "));
      // The copy has got to the point where it is held back.
      await a.whenReadable?.(0, 100_000);
      await a.close?.();
      await b.close?.();
      // The copy is still held back: closing does not wait for it, and clears scratch.
      await provider.close();
      assert.equal(release.isOpen(), false, "close waited for the held-back copy");
      release.open();
      assert.deepEqual(await readdir(scratch), []);
      assert.equal(await provider.locate(id), undefined);
    } finally {
      release.open();
      await provider.close();
      await image.close();
    }
  });

  it("the provider returns a layer still being copied, readable up to where the copy has got", async () => {
    const release = gate();
    const image = await heldBack(1, 100_000, release.wait());
    const provider = new ImageLayerProvider([image], dir);
    try {
      const base = await provider.open(sha256(v1[0]!), v1[0]!.length);
      const app = await provider.open(sha256(v1[1]!), v1[1]!.length);
      assert.equal(app.size, v1[1]!.length);
      await app.whenReadable?.(0, 100_000);
      const start = new Uint8Array(1000);
      app.readSync!(99_000, start, 0, 1000);
      assert.deepEqual(start, v1[1]!.subarray(99_000, 100_000));
      // The rest waits for the copy, which waits for the test.
      let arrived = false;
      const rest = app.whenReadable!(100_000, v1[1]!.length - 100_000)!.then(() => {
        arrived = true;
      });
      await new Promise((resolve) => setTimeout(resolve, 50));
      assert.equal(arrived, false);
      release.open();
      await rest;
      const end = new Uint8Array(4096);
      await app.read(v1[1]!.length - 4096, end, 0, 4096);
      assert.deepEqual(end, v1[1]!.subarray(v1[1]!.length - 4096));
      // Whole and checked: the copy is a verified local file now.
      const local = await provider.locate(sha256(v1[1]!));
      assert.equal(local?.verified, true);
      assert.equal(local?.location.size, v1[1]!.length);
      assert.equal(await provider.digest(sha256(v1[1]!)), sha256(v1[1]!));
      await base.close?.();
      await app.close?.();
    } finally {
      await provider.close();
      await image.close();
    }
  });

  it("into a registry, the writer starts while a source is still being copied; the image comes out byte for byte", async () => {
    const release = gate();
    const image = await heldBack(1, 100_000, release.wait());
    const provider = new ImageLayerProvider([image], dir);
    let copiedWhenWriterCalled: boolean | undefined;
    try {
      const result = await applyIntoRegistry(bundle, provider, "apps/arrived:2", async () => {
        copiedWhenWriterCalled = (await Promise.race([
          provider.locate(sha256(v1[1]!)).then(() => true),
          new Promise((resolve) => setTimeout(() => resolve(false), 50)),
        ])) as boolean;
        release.open();
      });
      assert.equal(copiedWhenWriterCalled, false);
      assert.deepEqual(
        result.layers.map((l) => l.from),
        ["bundle", "bundle"],
      );
    } finally {
      await provider.close();
      await image.close();
    }
    const written = await openRegistryImage(`${registry.host}/apps/arrived:2`);
    try {
      await assertLayerTars(written, v2);
    } finally {
      await written.close();
    }
  });

  it("the free-space check counts the held layers the provider copies to scratch, not those read in place", async () => {
    const { manifest } = parseBundle(await readFile(bundle));
    const rebuilt = manifest.layers.reduce((sum, l) => sum + ("outputSize" in l ? l.outputSize : 0), 0);
    const sources = manifest.sources.reduce((sum, l) => sum + l.size, 0);
    assert.ok(sources > 0 && rebuilt > 0);
    const fromRegistry = await openRegistryImage(held());
    const registryProvider = new ImageLayerProvider([fromRegistry], dir);
    const fromArchive = await openImage(v1Path);
    const archiveProvider = new ImageLayerProvider([fromArchive], dir);
    try {
      assert.deepEqual(await scratchNeeded(manifest, registryProvider), { rebuilt, held: sources });
      assert.deepEqual(await scratchNeeded(manifest, archiveProvider), { rebuilt, held: 0 });
      // The check runs (no skipDiskCheck) and passes with this machine's free space.
      const result = await applyBundle({
        bundle,
        trust: [key],
        layers: registryProvider,
        scratchDir: dir,
        writeWhileDecoding: true,
        write: async (target) => {
          const pushed = await pushImage(`${registry.host}/apps/checked:2`, target);
          return { image: pushed.reference, digest: pushed.manifestDigest, bytesWritten: 0 };
        },
      });
      assert.equal(result.layers.length, 2);
    } finally {
      await registryProvider.close();
      await archiveProvider.close();
      await fromRegistry.close();
      await fromArchive.close();
    }
  });

  it("a failed copy is named for what failed: the scratch disk, the layer's data, or the reading", () => {
    const id = sha256(v1[0]!);
    const full = copyError(
      id,
      Object.assign(new Error("ENOSPC: no space left on device, write"), { code: "ENOSPC" }),
    );
    assert.equal(full.code, "IO");
    assert.match(
      full.message,
      /the scratch disk filled up while layer sha256:\w+ on this device was copied there .*; free some disk space$/,
    );
    const damaged = copyError(
      id,
      Object.assign(new Error("tar hashes to sha256:00"), { name: "DigestError" }),
    );
    assert.equal(damaged.code, "DIGEST");
    assert.match(damaged.message, /could not be read intact .*re-deploy the image that holds it$/);
    const lost = copyError(id, new Error("socket hang up"));
    assert.equal(lost.code, "IO");
    assert.match(lost.message, /could not be read \(socket hang up\); re-deploy the image that holds it$/);
  });

  it("a source whose copy breaks off while the bundle decodes stops the image: IO naming the layer, no manifest", async () => {
    const broken = Promise.reject(new Error("connection reset by the registry"));
    broken.catch(() => {});
    const image = await heldBack(1, 100_000, broken);
    await assertRefused(
      bundle,
      image,
      "apps/broken",
      "IO",
      new RegExp(
        `layer ${sha256(v1[1]!)} on this device could not be read \\(connection reset by the registry\\); re-deploy the image that holds it$`,
      ),
    );
  });

  it("a source that arrives with another size than the bundle says stops the image: DIGEST, no manifest", async () => {
    // The same bundle, re-signed with the last source 1 KiB longer than the device's layer.
    const bytes = await readFile(bundle);
    const head = parseBundle(bytes);
    const sources = head.manifest.sources.map((s, i, all) =>
      i === all.length - 1 ? { ...s, size: s.size + 1024 } : s,
    );
    assert.equal(sources.at(-1)!.diffId, sha256(v1[1]!), "the app layer is the last source");
    const manifestBytes = encodeManifest({ ...head.manifest, sources });
    const payloads = bytes.subarray(HEADER_SIZE + head.header.manifestLength + head.header.signatureLength);
    const signature = encodeSignatureBlock(signManifest(manifestBytes, key));
    const longer = join(dir, "longer-source.bundle");
    await writeFile(
      longer,
      Buffer.concat([
        encodeHeader({
          manifestLength: manifestBytes.length,
          signatureLength: signature.length,
          payloadsLength: payloads.length,
        }),
        manifestBytes,
        signature,
        payloads,
      ]),
    );
    await assertRefused(
      longer,
      await openRegistryImage(held()),
      "apps/longer",
      "DIGEST",
      new RegExp(
        `layer ${sha256(v1[1]!)} on this device has ${v1[1]!.length} bytes, the bundle expects ${v1[1]!.length + 1024}$`,
      ),
    );
  });
});
