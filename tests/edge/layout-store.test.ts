/**
 * The edge module's OCI layout store (DELTASHIP_IMAGE_LAYOUT): the real engine reads held layers
 * from a layout folder and writes the rebuilt image into it, named `repository:tag`.
 */
import assert from "node:assert/strict";
import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { digestOf } from "../../delta/image/digest.js";
import { openOciLayout, writeOciLayout } from "../../delta/image/oci-layout.js";
import { createDeltaEngine } from "../../edge-module/engine-delta.js";
import { LocalLayout } from "../../edge-module/local-layout.js";
import { type EdgeImages, makeBundle, makeImages, newSigner, type Signer } from "./fixtures.js";

let dir: string;
let images: EdgeImages;
let signer: Signer;
let bundlePath: string;

before(async () => {
  dir = await mkdtemp(join(tmpdir(), "deltaship-layout-store-"));
  images = await makeImages(4);
  signer = newSigner();
  bundlePath = join(dir, "update.bundle");
  await writeFile(bundlePath, await makeBundle(dir, "update", images.update("1.1"), [images.base], signer));
});

after(() => rm(dir, { recursive: true, force: true }));

describe("edge module OCI layout store", () => {
  it("an absent index.json is an empty store, and every source layer is missing from it", async () => {
    const store = new LocalLayout(join(dir, "empty"));
    assert.deepEqual(await store.inventory(), []);
    const engine = createDeltaEngine(store);
    const head = await engine.readHead(bundlePath);
    assert.deepEqual(
      await engine.missingSourceLayers(head),
      images.base.layers.map((l) => l.diffId),
    );
  });

  it("rebuilds an update from gzip layers it holds and stores it under repository:tag, layers checked", async () => {
    const layout = join(dir, "device");
    // The device got 1.0 the ordinary way: gzip layers, as a pull stores them.
    const held = await writeOciLayout(layout, images.base, {
      tag: "apps/telemetry:1.0",
      compression: "gzip",
    });
    const store = new LocalLayout(layout);
    assert.deepEqual(await store.inventory(), [{ image: "apps/telemetry:1.0", digest: held.digest }]);

    const engine = createDeltaEngine(store);
    const head = await engine.readHead(bundlePath);
    assert.deepEqual(await engine.missingSourceLayers(head), []);
    await mkdir(join(dir, "scratch"));
    let verifiedBeforeStore = false;
    const rebuilt = await engine.rebuild(
      bundlePath,
      { cloud: signer.publicPem },
      join(dir, "scratch"),
      () => {
        verifiedBeforeStore = true;
      },
    );
    assert.equal(verifiedBeforeStore, true);
    assert.equal(await store.digestOf("apps/telemetry", "1.1"), rebuilt.digest);
    assert.deepEqual(await store.inventory(), [
      { image: "apps/telemetry:1.0", digest: held.digest },
      { image: "apps/telemetry:1.1", digest: rebuilt.digest },
    ]);

    const update = images.update("1.1");
    const image = await openOciLayout(layout, { tag: "apps/telemetry:1.1" });
    assert.equal(image.info.configDigest, digestOf(update.config));
    assert.deepEqual(
      image.info.layers.map((l) => [l.diffId, l.compression]),
      update.layers.map((l) => [l.diffId, "none"]),
    );
    // Streaming each layer checks it against its diff_id.
    for (let i = 0; i < image.info.layers.length; i++) for await (const _ of await image.openLayerTar(i));
    await image.close();
  });
});
