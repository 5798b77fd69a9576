/**
 * ref-zstd through the bundle: a real npm application update (packages bumped one version)
 * built with buildBundle and rebuilt with applyBundle byte for byte; smaller than the VCDIFF
 * codec on the same layer; a signed but malformed payload is refused with its byte offset.
 */
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { applyBundle, ImageLayerProvider } from "../../delta/bundle/apply.js";
import { buildBundle, writeBundleFile } from "../../delta/bundle/diff.js";
import { BundleError, isPresent, type PayloadCodec, readBundleHead } from "../../delta/bundle/format.js";
import { generateSigningKey } from "../../delta/bundle/sign.js";
import { openImage, writeImage } from "../../delta/image/open.js";
import type { ImageReader } from "../../delta/image/types.js";
import { PREAMBLE_SIZE, REFZSTD_VERSION_SPLIT } from "../../delta/refzstd/format.js";
import {
  appLayerEntries,
  buildTar,
  imageOf,
  realFiles,
  sha256,
  treeFiles,
  writeArchive,
} from "../bundle/fixtures.js";

const key = generateSigningKey();
let dir: string;
let v1: string;
let v2: string;
/** A new app (a package v1 does not hold, 446 files) on v1's base. */
let other: string;

before(async () => {
  dir = await mkdtemp(join(tmpdir(), "refzstd-bundle-"));
  const base = await buildTar(realFiles("/usr/bin", "usr/bin", { limit: 20, maxBytes: 2_000_000 }));
  const app1 = await buildTar(appLayerEntries("older", ["yaml"]));
  const app2 = await buildTar(appLayerEntries("newer", ["yaml"]));
  v1 = await writeArchive(join(dir, "v1.tar"), imageOf("apps/web", "1", [base, app1]));
  v2 = await writeArchive(join(dir, "v2.tar"), imageOf("apps/web", "2", [base, app2]));
  const newApp = await buildTar(
    treeFiles("node_modules/durable-functions", "app/node_modules/durable-functions"),
  );
  other = await writeArchive(join(dir, "other.tar"), imageOf("apps/other", "1", [base, newApp]));
});

after(async () => {
  await rm(dir, { recursive: true, force: true });
});

async function opened<T>(paths: string[], fn: (images: ImageReader[]) => Promise<T>): Promise<T> {
  const images = await Promise.all(paths.map((p) => openImage(p)));
  try {
    return await fn(images);
  } finally {
    await Promise.all(images.map((i) => i.close()));
  }
}

async function build(out: string, codec?: PayloadCodec, to = v2) {
  return opened([to, v1], ([target, source]) =>
    buildBundle({
      target: target!,
      sources: [source!],
      key,
      out,
      scratchDir: dir,
      ...(codec !== undefined ? { codec } : {}),
    }),
  );
}

async function apply(bundle: string, dest: string) {
  return opened([v1], async (images) => {
    const provider = new ImageLayerProvider(images, dir);
    try {
      return await applyBundle({
        bundle,
        trust: [key],
        layers: provider,
        scratchDir: dir,
        skipDiskCheck: true,
        write: async (image) => {
          const written = await writeImage(`docker-archive:${dest}`, image);
          return { image: written.path, digest: written.manifestDigest, bytesWritten: 0 };
        },
      });
    } finally {
      await provider.close();
    }
  });
}

describe("ref-zstd bundles", () => {
  let bundle: string;
  before(async () => {
    bundle = join(dir, "default.bundle");
    await build(bundle);
  });

  it("is the default codec for a layer with a source and rebuilds the archive byte for byte", async () => {
    const head = await readBundleHead(bundle);
    assert.deepEqual(
      head.manifest.layers.map((l) => (isPresent(l) ? "present" : l.codec)),
      ["present", "ref-zstd"],
    );
    const dest = join(dir, "rebuilt.tar");
    const result = await apply(bundle, dest);
    assert.deepEqual(
      result.layers.map((l) => l.from),
      ["device", "bundle"],
    );
    assert.equal(sha256(await readFile(dest)), sha256(await readFile(v2)));
  });

  it("sends fewer bytes than the VCDIFF codec for an npm update", async () => {
    const vcdiff = await build(join(dir, "vcdiff.bundle"), "vcdiff-zstd");
    const head = await readBundleHead(bundle);
    const ours = head.manifest.layers[1]!;
    assert.ok(!isPresent(ours));
    assert.equal(vcdiff.layers[1]!.codec, "vcdiff-zstd");
    assert.ok(
      ours.length < vcdiff.layers[1]!.payloadBytes,
      `ref-zstd ${ours.length} bytes, vcdiff-zstd ${vcdiff.layers[1]!.payloadBytes}`,
    );
  });

  it("sends a new app's tar headers apart (payload version 4) and rebuilds it byte for byte", async () => {
    const out = join(dir, "other.bundle");
    // Asked for by name: against so small a source, Brotli of the whole layer may come out smaller.
    await build(out, "ref-zstd", other);
    const head = await readBundleHead(out);
    const entry = head.manifest.layers[1]!;
    assert.ok(!isPresent(entry));
    assert.equal(entry.codec, "ref-zstd");
    const bytes = await readFile(out);
    assert.equal(bytes[head.payloadsOffset + entry.offset + PREAMBLE_SIZE - 1], REFZSTD_VERSION_SPLIT);
    const dest = join(dir, "other-rebuilt.tar");
    await apply(out, dest);
    assert.equal(sha256(await readFile(dest)), sha256(await readFile(other)));
  });

  it("refuses a signed payload that is malformed, naming the layer and the payload byte", async () => {
    const head = await readBundleHead(bundle);
    const entry = head.manifest.layers[1]!;
    assert.ok(!isPresent(entry));
    const bytes = await readFile(bundle);
    const payload = Buffer.from(
      bytes.subarray(head.payloadsOffset + entry.offset, head.payloadsOffset + entry.offset + entry.length),
    );
    payload[4] = 9; // the payload version
    const payloadPath = join(dir, "bad.payload");
    await writeFile(payloadPath, payload);
    const bad = join(dir, "bad.bundle");
    const manifest = {
      ...head.manifest,
      layers: [head.manifest.layers[0]!, { ...entry, sha256: sha256(payload) }],
    };
    await writeBundleFile(bad, manifest, key, [undefined, payloadPath]);
    const dest = join(dir, "never.tar");
    await assert.rejects(apply(bad, dest), (err: unknown) => {
      assert.ok(err instanceof BundleError, String(err));
      assert.equal(err.code, "PAYLOAD");
      assert.equal(err.where, `layer ${entry.diffId} payload byte 4`);
      assert.match(err.message, /payload version 9/);
      return true;
    });
    assert.equal(existsSync(dest), false);
  });
});
