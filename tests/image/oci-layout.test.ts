import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { promisify } from "node:util";
import { DigestError, digestOf } from "../../delta/image/digest.js";
import { ImageFormatError, MediaType } from "../../delta/image/oci.js";
import { openOciLayout, writeOciLayout } from "../../delta/image/oci-layout.js";
import { openImage, writeImage } from "../../delta/image/open.js";
import { assertLayersExact, collect, type FixtureImage, fixtureImage, skopeo } from "./archive-fixture.js";

const run = promisify(execFile);

describe("OCI image layouts", () => {
  let dir: string;
  let one: FixtureImage;
  let two: FixtureImage;
  before(async () => {
    dir = mkdtempSync(join(tmpdir(), "oci-layout-"));
    one = await fixtureImage("apps/telemetry", "1.0", "one");
    two = await fixtureImage("apps/telemetry", "2.0", "two");
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  it("writes uncompressed layouts that read back exactly and that skopeo and umoci read", async () => {
    const layout = join(dir, "plain");
    const written = await writeOciLayout(layout, one);
    const reader = await openOciLayout(layout);
    assert.equal(reader.info.manifestDigest, written.digest);
    assert.equal(reader.info.configDigest, digestOf(one.config));
    assert.deepEqual(reader.info.config, one.config);
    assert.equal(reader.info.tag, "1.0");
    assert.deepEqual(
      reader.info.layers.map((l) => [l.compression, l.mediaType, l.digest]),
      one.layers.map((l) => ["none", MediaType.ociLayer, l.diffId]),
    );
    assert.deepEqual(reader.locateLayerBlob(0), {
      path: join(layout, "blobs", "sha256", one.layers[0]!.diffId.slice(7)),
      offset: 0,
      size: one.tars[0]!.length,
    });
    await assertLayersExact(reader, one);

    const inspected = JSON.parse(await skopeo("inspect", `oci:${layout}:1.0`));
    assert.equal(inspected.Digest, written.digest);
    assert.deepEqual(
      inspected.Layers,
      one.layers.map((l) => l.diffId),
    );
    const { stdout } = await run("umoci", ["ls", "--layout", layout]);
    assert.equal(stdout.trim(), "1.0");
  });

  it("writes the same bytes for the same image", async () => {
    const a = join(dir, "det-a");
    const b = join(dir, "det-b");
    const wa = await writeOciLayout(a, one, { compression: "gzip" });
    const wb = await writeOciLayout(b, one, { compression: "gzip" });
    assert.equal(wa.digest, wb.digest);
    assert.deepEqual(readFileSync(join(a, "index.json")), readFileSync(join(b, "index.json")));
  });

  it("writes gzip layers whose tars are the diff_ids, and skopeo copies them out unchanged", async () => {
    const layout = join(dir, "gzip");
    await writeOciLayout(layout, one, { compression: "gzip" });
    const reader = await openOciLayout(layout, { tag: "1.0" });
    assert.deepEqual(
      reader.info.layers.map((l) => l.compression),
      ["gzip", "gzip", "gzip"],
    );
    assert.notEqual(reader.info.layers[0]!.digest, one.layers[0]!.diffId);
    await assertLayersExact(reader, one);
    const copy = join(dir, "gzip-copy");
    await skopeo("copy", `oci:${layout}:1.0`, `oci:${copy}:copied`);
    await assertLayersExact(await openOciLayout(copy, { tag: "copied" }), one);
  });

  it("closes its files when a reader stops early", async () => {
    const layout = join(dir, "early");
    await writeOciLayout(layout, one, { compression: "gzip" });
    const reader = await openOciLayout(layout);
    const openFiles = () => readdirSync("/proc/self/fd").length;
    const before = openFiles();
    for (let round = 0; round < 20; round++) {
      for await (const _ of await reader.openLayerTar(round % 3)) break;
      for await (const _ of await reader.openLayerBlob(round % 3)) break;
    }
    await new Promise((resolve) => setImmediate(resolve));
    assert.equal(openFiles(), before);
  });

  it("serves uncompressed layers as random-access sources and refuses compressed ones", async () => {
    const plain = await openOciLayout(join(dir, "plain"));
    const source = await plain.openLayerSource(1);
    const into = new Uint8Array(100);
    await source.read(1000, into, 0, 100);
    assert.deepEqual(into, one.tars[1]!.subarray(1000, 1100));
    await source.close();
    const gzip = await openOciLayout(join(dir, "gzip"));
    await assert.rejects(
      gzip.openLayerSource(1),
      /layer 1 is stored gzip-compressed, so it has no random access/,
    );
  });

  it("reads zstd layers that skopeo wrote", async () => {
    const layout = join(dir, "for-zstd");
    await writeOciLayout(layout, one);
    const zstdLayout = join(dir, "zstd");
    await skopeo("copy", "--dest-compress-format", "zstd", `oci:${layout}:1.0`, `oci:${zstdLayout}:z`);
    const reader = await openImage(`${zstdLayout}:z`);
    assert.deepEqual(
      reader.info.layers.map((l) => l.compression),
      ["zstd", "zstd", "zstd"],
    );
    for (const [i, tar] of one.tars.entries())
      assert.deepEqual(await collect(await reader.openLayerTar(i)), tar);
  });

  it("keeps several tags in one layout and chooses by tag, replacing a re-written tag", async () => {
    const layout = join(dir, "multi");
    await writeImage(`oci:${layout}:1.0`, one);
    await writeImage(`oci:${layout}:2.0`, two);
    await writeImage(`oci:${layout}:2.0`, two);
    const index = JSON.parse(readFileSync(join(layout, "index.json"), "utf8"));
    assert.equal(index.manifests.length, 2);
    await assertLayersExact(await openOciLayout(layout, { tag: "2.0" }), two);
    await assertLayersExact(
      (await openImage(`${layout}:1.0`)) as Awaited<ReturnType<typeof openOciLayout>>,
      one,
    );
    await assert.rejects(openOciLayout(layout), (err: Error) => {
      assert.ok(err instanceof ImageFormatError);
      assert.match(err.message, /holds 2 images; choose one by name \(1\.0, 2\.0\)/);
      return true;
    });
    await assert.rejects(
      openOciLayout(layout, { tag: "3.0" }),
      /has no image named "3.0"; it holds 1\.0, 2\.0/,
    );
  });

  it("chooses by platform from an image index, linux/amd64 by default", async () => {
    const layout = join(dir, "platforms");
    const amd = await writeOciLayout(layout, one, { tag: "amd" });
    const arm = await writeOciLayout(layout, two, { tag: "arm" });
    const index = new TextEncoder().encode(
      JSON.stringify({
        schemaVersion: 2,
        mediaType: MediaType.ociIndex,
        manifests: [
          {
            mediaType: amd.mediaType,
            digest: arm.digest,
            size: arm.size,
            platform: { os: "linux", architecture: "arm64", variant: "v8" },
          },
          {
            mediaType: amd.mediaType,
            digest: amd.digest,
            size: amd.size,
            platform: { os: "linux", architecture: "amd64" },
          },
        ],
      }),
    );
    const indexDigest = digestOf(index);
    writeFileSync(join(layout, "blobs", "sha256", indexDigest.slice(7)), index);
    writeFileSync(
      join(layout, "index.json"),
      JSON.stringify({
        schemaVersion: 2,
        manifests: [
          {
            mediaType: MediaType.ociIndex,
            digest: indexDigest,
            size: index.length,
            annotations: { "org.opencontainers.image.ref.name": "multi" },
          },
        ],
      }),
    );
    const byDefault = await openOciLayout(layout);
    assert.equal(byDefault.info.manifestDigest, amd.digest);
    const onArm = await openImage(`oci:${layout}:multi`, { platform: "linux/arm64" });
    assert.equal(onArm.info.manifestDigest, arm.digest);
    await assertLayersExact(onArm as Awaited<ReturnType<typeof openOciLayout>>, two);
    // The same arm64 manifest alone in a layout: taken by default, refused when amd64 is asked for.
    const lone = join(dir, "lone-arm");
    await writeOciLayout(lone, two);
    const loneIndex = JSON.parse(readFileSync(join(lone, "index.json"), "utf8"));
    loneIndex.manifests[0].platform = { os: "linux", architecture: "arm64" };
    writeFileSync(join(lone, "index.json"), JSON.stringify(loneIndex));
    assert.equal((await openOciLayout(lone)).info.manifestDigest, arm.digest);
    await assert.rejects(
      openOciLayout(lone, { platform: "linux/amd64" }),
      /has no image for linux\/amd64; it offers linux\/arm64/,
    );
    await assert.rejects(
      openOciLayout(layout, { platform: "linux/s390x" }),
      /has no image for linux\/s390x; it offers linux\/arm64\/v8, linux\/amd64/,
    );
  });

  it("refuses a config blob that does not match its digest", async () => {
    const layout = join(dir, "tampered");
    await writeOciLayout(layout, one);
    const configPath = join(layout, "blobs", "sha256", digestOf(one.config).slice(7));
    const bytes = readFileSync(configPath);
    bytes[bytes.length - 2] ^= 1;
    writeFileSync(configPath, bytes);
    await assert.rejects(
      openOciLayout(layout),
      /config sha256:[0-9a-f]{64} should have digest .* but has sha256:/,
    );
  });

  it("fails reading a layer whose blob was altered", async () => {
    const layout = join(dir, "bad-layer");
    await writeOciLayout(layout, one);
    const reader = await openOciLayout(layout);
    const { path } = reader.locateLayerBlob(1);
    const bytes = readFileSync(path);
    bytes[700] ^= 0xff;
    writeFileSync(path, bytes);
    await assert.rejects(collect(await reader.openLayerBlob(1)), (err: Error) => {
      assert.ok(err instanceof DigestError);
      assert.match(err.message, /layer 1 blob sha256:.* should be sha256:.* but is sha256:/);
      return true;
    });
  });

  it("refuses to write an image whose layers are not its config's diff_ids", async () => {
    const swapped = { ...one, layers: [one.layers[1]!, one.layers[0]!, one.layers[2]!] };
    await assert.rejects(
      writeOciLayout(join(dir, "swapped"), swapped),
      /are not the config's rootfs.diff_ids/,
    );
  });

  it("checks a compressed layer's tar against its diff_id", async () => {
    const layout = join(dir, "wrong-diff-id");
    await writeOciLayout(layout, one, { compression: "gzip" });
    // Rewrite the config (and so the manifest and index) with a wrong diff_id for layer 2.
    const blob = (d: string) => join(layout, "blobs", "sha256", d.slice(7));
    const index = JSON.parse(readFileSync(join(layout, "index.json"), "utf8"));
    const manifest = JSON.parse(readFileSync(blob(index.manifests[0].digest), "utf8"));
    const config = JSON.parse(new TextDecoder().decode(one.config));
    config.rootfs.diff_ids[2] = digestOf(new Uint8Array([1, 2, 3]));
    const configBytes = new TextEncoder().encode(JSON.stringify(config));
    writeFileSync(blob(digestOf(configBytes)), configBytes);
    manifest.config = { ...manifest.config, digest: digestOf(configBytes), size: configBytes.length };
    const manifestBytes = new TextEncoder().encode(JSON.stringify(manifest));
    writeFileSync(blob(digestOf(manifestBytes)), manifestBytes);
    index.manifests[0] = {
      ...index.manifests[0],
      digest: digestOf(manifestBytes),
      size: manifestBytes.length,
    };
    writeFileSync(join(layout, "index.json"), JSON.stringify(index));

    const reader = await openOciLayout(layout);
    assert.deepEqual(await collect(await reader.openLayerTar(1)), one.tars[1]);
    await assert.rejects(
      collect(await reader.openLayerTar(2)),
      /layer 2 uncompressed tar \(diff_id\) should be sha256:039058c6f2c0cb492c533b0a4d14ef77cc0f78abccced5287d84a1a2011cfb81 but is sha256:/,
    );
  });

  it("refuses an index whose digest is a path, not a digest", async () => {
    const layout = join(dir, "traversal");
    await writeOciLayout(layout, one);
    writeFileSync(
      join(layout, "index.json"),
      JSON.stringify({
        schemaVersion: 2,
        manifests: [{ mediaType: MediaType.ociManifest, digest: "sha256:../../../etc/passwd", size: 10 }],
      }),
    );
    await assert.rejects(openOciLayout(layout), DigestError);
  });

  it("refuses a folder that is not an OCI layout", async () => {
    await assert.rejects(
      openOciLayout(join(dir, "nowhere")),
      /is not an OCI image layout: it has no oci-layout file/,
    );
  });
});
