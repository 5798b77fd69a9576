import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it, type TestContext } from "node:test";
import { generateSigningKey } from "../../delta/bundle/sign.js";
import { openImage } from "../../delta/image/open.js";
import { type FileIndex, type ImageIndex, indexImage, type LayerIndex } from "../../delta/index/index.js";
import { planSources, type SourcePlan } from "../../delta/index/plan.js";
import { appLayerEntries, buildTar, imageOf, realFiles, sha256, writeArchive } from "../bundle/fixtures.js";
import { buildBundleBetween } from "../support/bundles.js";

/**
 * Realistic pairs: a base of real binaries, an application layer of real npm packages, and its
 * update to the next real versions of those packages. Planning must estimate each bundle within
 * 25% of the bundle actually built with the default settings.
 */
let dir: string;
const paths: Record<string, string> = {};
const indexes: Record<string, ImageIndex> = {};
const layers: Record<string, Uint8Array> = {};

before(async () => {
  dir = await mkdtemp(join(tmpdir(), "plan-"));
  layers.base = await buildTar(realFiles("/usr/bin", "usr/bin", { limit: 40, maxBytes: 3_000_000 }));
  layers.other = await buildTar(
    realFiles("/usr/bin", "usr/bin", { limit: 20, maxBytes: 1_000_000, skip: 200 }),
  );
  layers.app1 = await buildTar(appLayerEntries("older", ["yaml"]));
  layers.app2 = await buildTar(appLayerEntries("newer", ["yaml"]));
  const images = {
    base: imageOf("apps/base", "1", [layers.base]),
    other: imageOf("apps/other", "1", [layers.other]),
    v1: imageOf("apps/node", "1", [layers.base, layers.app1]),
    v2: imageOf("apps/node", "2", [layers.base, layers.app2]),
  };
  for (const [name, image] of Object.entries(images)) {
    paths[name] = await writeArchive(join(dir, `${name}.tar`), image);
    const reader = await openImage(paths[name]!);
    try {
      indexes[name] = await indexImage(reader);
    } finally {
      await reader.close();
    }
  }
});

after(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** Builds the bundle from the held images to the target with the source layers the plan chose. */
async function realBundleBytes(from: string[], to: string, plan: SourcePlan): Promise<number> {
  const built = await buildBundleBetween(
    from.map((f) => paths[f]!),
    paths[to]!,
    {
      key: generateSigningKey(),
      out: join(dir, `${to}.bundle`),
      sourceLayers: plan.sources.map((s) => s.diffId),
      scratchDir: dir,
    },
  );
  return built.bytes;
}

function assertWithin25Percent(t: TestContext, estimate: number, real: number, what: string): void {
  const ratio = estimate / real;
  t.diagnostic(`${what}: estimated ${estimate} bytes, built ${real} (ratio ${ratio.toFixed(3)})`);
  assert.ok(
    ratio >= 0.75 && ratio <= 1.25,
    `${what}: estimated ${estimate} bytes, built ${real} (ratio ${ratio.toFixed(3)})`,
  );
}

/** A layer index by hand: one header group per file, sizes as given. */
function layerOf(diffId: string, files: FileIndex[]): LayerIndex {
  const size = files.reduce((n, f) => n + 512 + f.size, 1024);
  return {
    diffId,
    size,
    blobDigest: diffId,
    blobSize: size,
    entries: files.length,
    headers: files.map((f) => `${f.sha256.slice(0, 6)}${f.path.length}`),
    files,
  };
}

function imageWith(tag: string, layerIndexes: LayerIndex[]): ImageIndex {
  return { version: 1, repository: "apps/plan", tag, configDigest: `sha256:${tag}`, layers: layerIndexes };
}

describe("planning", () => {
  it("prices a layer that the sources make more expensive as whole-layer zstd, as the diff sends it", () => {
    // The held layer is worth listing for the first target layer (a 2 MB library it holds), but
    // its old archive makes the changed archive of the second one cost its full size as a delta.
    const library = { path: "usr/lib/libbig.so", size: 2_000_000, sha256: "a".repeat(64), z: 1_000_000 };
    const oldArchive = { path: "srv/data.zip", size: 1_000_000, sha256: "b".repeat(64), z: 1_000_000 };
    const newArchive = { ...oldArchive, sha256: "c".repeat(64) };
    const held = imageWith("held", [layerOf("sha256:held", [library, oldArchive])]);
    const second = layerOf("sha256:second", [newArchive]);
    const target = imageWith("target", [layerOf("sha256:first", [library]), second]);
    const plan = planSources(target, [held]);
    assert.deepEqual(plan.sources, [{ diffId: "sha256:held", size: held.layers[0]!.size }]);
    const alone = planSources(imageWith("alone", [second]), []);
    assert.equal(plan.layers[1]!.estimatedBytes, alone.layers[0]!.estimatedBytes);
    assert.ok(plan.layers[1]!.estimatedBytes < newArchive.size, "below the archive's full size");
  });

  it("marks held layers present, lists only useful source layers, and counts what a pull would send", () => {
    const plan = planSources(indexes.v2!, [indexes.other!, indexes.v1!]);
    assert.deepEqual(
      plan.layers.map((l) => [l.diffId, l.present]),
      [
        [sha256(layers.base!), true],
        [sha256(layers.app2!), false],
      ],
    );
    // The unrelated image's layer and the base (nothing of app2 is in it) are not worth listing.
    assert.deepEqual(plan.sources, [{ diffId: sha256(layers.app1!), size: layers.app1!.length }]);
    assert.equal(plan.fullImageBytes, indexes.v2!.layers[1]!.blobSize);
    assert.equal(plan.layers[0]!.estimatedBytes, 0);
  });

  it("estimates a first image within 25% of the real bundle", async (t) => {
    const plan = planSources(indexes.v1!, []);
    assert.deepEqual(plan.sources, []);
    assertWithin25Percent(t, plan.estimatedBundleBytes, await realBundleBytes([], "v1", plan), "first image");
  });

  it("estimates a new application on a held base within 25% of the real bundle", async (t) => {
    const plan = planSources(indexes.v1!, [indexes.base!]);
    const real = await realBundleBytes(["base"], "v1", plan);
    assertWithin25Percent(t, plan.estimatedBundleBytes, real, "new application");
  });

  it("estimates an application update within 25% of the real bundle, far below a pull", async (t) => {
    const plan = planSources(indexes.v2!, [indexes.v1!]);
    const real = await realBundleBytes(["v1"], "v2", plan);
    assertWithin25Percent(t, plan.estimatedBundleBytes, real, "application update");
    assert.ok(real < plan.fullImageBytes / 10, `bundle ${real} bytes vs pull ${plan.fullImageBytes}`);
  });
});
