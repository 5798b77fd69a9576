import assert from "node:assert/strict";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import type { ApplyResult, ImageWriter } from "../../delta/bundle/apply.js";
import { BundleError } from "../../delta/bundle/format.js";
import { generateSigningKey, type SigningKey } from "../../delta/bundle/sign.js";
import { writeImage } from "../../delta/image/open.js";
import { openRegistryImage, pushImage, RegistryClient } from "../../delta/image/registry.js";
import { startRegistry, type TestRegistry } from "../support/registry.js";
import {
  applyFromArchive,
  bundleBetween,
  imageOf,
  sha256,
  twoLayerUpdate,
  writeArchive,
} from "./fixtures.js";

/**
 * Applying with writeWhileDecoding: the writer starts at once and gets each rebuilt layer when it
 * is decoded and checked, so an upload overlaps the next layer's decode. Two rebuilt layers here
 * (a base update and an app update). The output must be the target byte for byte, and a layer
 * that fails its check must keep the image from being made (no archive, no manifest), with every
 * blob placed before it a verified one.
 */
let dir: string;
let registry: TestRegistry;
let key: SigningKey;
let v1Path: string;
let v2Path: string;
let bundle: string;
let base1: Uint8Array;
let base2: Uint8Array;
let app1: Uint8Array;
let app2: Uint8Array;

before(async () => {
  dir = await mkdtemp(join(tmpdir(), "apply-overlap-"));
  registry = await startRegistry();
  key = generateSigningKey();
  ({
    v1: [base1, app1],
    v2: [base2, app2],
  } = await twoLayerUpdate());
  v1Path = await writeArchive(join(dir, "v1.tar"), imageOf("apps/overlap", "1", [base1, app1]));
  v2Path = await writeArchive(join(dir, "v2.tar"), imageOf("apps/overlap", "2", [base2, app2]));
  bundle = join(dir, "v1-to-v2.bundle");
  await bundleBetween(v1Path, v2Path, key, bundle, dir);
});

after(async () => {
  await registry?.stop();
  await rm(dir, { recursive: true, force: true });
});

/** Applies the bundle from `from` (a docker-archive: its layers are read in place, unhashed). */
function apply(from: string, write: ImageWriter): Promise<ApplyResult> {
  return applyFromArchive(from, {
    bundle,
    trust: [key],
    scratchDir: dir,
    writeWhileDecoding: true,
    write,
  });
}

/**
 * The rebuilt layers in the order they decode: the largest first (its upload, the longest, then
 * starts first), then by layer order.
 */
function decodeOrder<T extends { size: number }>(layers: readonly T[]): T[] {
  return [...layers].sort((a, b) => b.size - a.size);
}

/** A copy of v1 with bytes flipped inside one of its layers: in place, so only the decode notices. */
async function v1WithBad(layer: Uint8Array): Promise<string> {
  const archive = await readFile(v1Path);
  const at = archive.indexOf(Buffer.from(layer.subarray(40_000, 40_064)));
  assert.ok(at > 0, "the layer's bytes are in the archive");
  for (let i = 0; i < 200_000; i += 4096) archive[at + i]! ^= 0xff;
  const path = join(dir, `v1-bad-${sha256(layer).slice(7, 19)}.tar`);
  await writeFile(path, archive);
  return path;
}

describe("apply with writeWhileDecoding", () => {
  it("gives the writer the first layer decoded while the other still decodes, and writes the target byte for byte", async () => {
    let otherWhenFirstReady: boolean | undefined;
    let order: number[] = [];
    const dest = join(dir, "overlap.tar");
    const result = await apply(v1Path, async (image) => {
      const [first, other] = decodeOrder(image.layers);
      order = [first!, other!].map((l) => image.layers.indexOf(l));
      let otherSettled = false;
      other!.ready!().then(() => {
        otherSettled = true;
      });
      await first!.ready!();
      // The other layer starts decoding only once the first is done, and takes many turns of file
      // I/O: one turn of the event loop later it is still decoding, unless the writer had been
      // called after every layer was decoded.
      await new Promise((resolve) => setImmediate(resolve));
      otherWhenFirstReady = otherSettled;
      await other!.ready!();
      const written = await writeImage(`docker-archive:${dest}`, image);
      return { image: written.path, digest: written.manifestDigest, bytesWritten: 0 };
    });
    assert.equal(otherWhenFirstReady, false);
    // The larger layer went first (the app layer here: its libraries outweigh the base's tools).
    assert.deepEqual(order, app2.length > base2.length ? [1, 0] : [0, 1]);
    assert.deepEqual(
      result.layers.map((l) => l.from),
      ["bundle", "bundle"],
    );
    assert.equal(sha256(await readFile(dest)), sha256(await readFile(v2Path)));
  });

  it("into a registry: layers read back identical, uploaded in small PATCHes from their scratch files", async () => {
    // Small PATCHes, so each layer takes several, following its scratch file while it is written
    // (tests/image/registry.test.ts shows the following step by step).
    const result = await apply(v1Path, async (image) => {
      const pushed = await pushImage(`${registry.host}/apps/overlap:2`, image, {
        chunkSize: 64 * 1024,
        fileChunkSize: 256 * 1024,
      });
      return { image: pushed.reference, digest: pushed.manifestDigest, bytesWritten: 0 };
    });
    const read = await openRegistryImage(`${registry.host}/apps/overlap:2`);
    try {
      assert.equal(read.info.manifestDigest, result.digest);
      for (const [i, tar] of [base2, app2].entries()) {
        const parts: Buffer[] = [];
        for await (const chunk of await read.openLayerTar(i)) parts.push(Buffer.from(chunk));
        assert.equal(sha256(Buffer.concat(parts)), sha256(tar));
      }
    } finally {
      await read.close();
    }
  });

  it("a later layer that fails its check stops the writer: no manifest, only verified blobs placed", async () => {
    // The layer decoded second reads a corrupted source; the one decoded first is intact.
    const [goodTar, badTar] = decodeOrder([base2, app2].map((tar, i) => ({ size: tar.length, i }))).map(
      (l) => l.i,
    );
    const good = [base2, app2][goodTar!]!;
    const bad = [base2, app2][badTar!]!;
    const from = await v1WithBad([base1, app1][badTar!]!);
    const seen: string[] = [];
    await assert.rejects(
      apply(from, async (image) => {
        await image.layers[goodTar!]!.ready!();
        seen.push("first ready");
        await image.layers[badTar!]!.ready!().catch((error: unknown) => {
          seen.push("second refused");
          throw error;
        });
        throw new Error("the writer must not get here");
      }),
      (err: unknown) => {
        assert.ok(err instanceof BundleError, String(err));
        assert.equal(err.code, "DIGEST");
        assert.match(
          err.message,
          new RegExp(`layer ${sha256([base1, app1][badTar!]!)} on this device hashes to sha256:`),
        );
        return true;
      },
    );
    assert.deepEqual(seen, ["first ready", "second refused"]);

    // The same into a registry: the layer rebuilt first (checked) may be there, the bad one and
    // the manifest are not.
    await assert.rejects(
      apply(from, async (image) => {
        const pushed = await pushImage(`${registry.host}/apps/overlap-bad:2`, image);
        return { image: pushed.reference, digest: pushed.manifestDigest, bytesWritten: 0 };
      }),
      (err: unknown) => err instanceof BundleError && err.code === "DIGEST",
    );
    const client = new RegistryClient(registry.host);
    try {
      assert.deepEqual(await client.listTags("apps/overlap-bad"), []);
      assert.equal(await client.blobSize("apps/overlap-bad", sha256(bad)), undefined);
      const placed = await client.blobSize("apps/overlap-bad", sha256(good));
      if (placed !== undefined) {
        const parts: Buffer[] = [];
        for await (const chunk of await client.openBlob("apps/overlap-bad", sha256(good)))
          parts.push(Buffer.from(chunk));
        assert.equal(sha256(Buffer.concat(parts)), sha256(good));
      }
    } finally {
      client.close();
    }
  });
});
