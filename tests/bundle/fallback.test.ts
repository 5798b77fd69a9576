import assert from "node:assert/strict";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { PLAIN_CHECK_SHARE } from "../../delta/bundle/diff.js";
import type { PayloadCodec } from "../../delta/bundle/format.js";
import { generateSigningKey, type SigningKey } from "../../delta/bundle/sign.js";
import { applyFromImages, buildBundleBetween } from "../support/bundles.js";
import { buildTar, imageOf, realFiles, writeArchive } from "./fixtures.js";

/**
 * The device holds an image whose only layer shares one small file with the target's layer; the
 * rest of the target layer is executables the device has never seen. `ref-zstd` is chosen on
 * hints, so its payload is almost all literal data, and whole-layer zstd through the x86 filter
 * is smaller: the diff must notice and send that instead.
 */
let dir: string;
let key: SigningKey;
let oldPath: string;
let newPath: string;
let layerSize: number;

before(async () => {
  dir = await mkdtemp(join(tmpdir(), "bundle-fallback-"));
  key = generateSigningKey();
  const shared = {
    path: "etc/app.conf",
    type: "file" as const,
    content: new TextEncoder().encode("listen = 0.0.0.0:8080\nlog = info\n".repeat(60)),
  };
  const oldLayer = await buildTar([
    shared,
    ...realFiles("/usr/share/common-licenses", "usr/share/licenses", { limit: 5 }),
  ]);
  const newLayer = await buildTar([
    shared,
    ...realFiles("/usr/bin", "usr/bin", { limit: 30, skip: 40, maxBytes: 3_000_000 }),
  ]);
  layerSize = newLayer.length;
  oldPath = await writeArchive(join(dir, "old.tar"), imageOf("apps/fallback", "1", [oldLayer]));
  newPath = await writeArchive(join(dir, "new.tar"), imageOf("apps/fallback", "2", [newLayer]));
});

after(async () => {
  await rm(dir, { recursive: true, force: true });
});

async function diff(name: string, codec?: PayloadCodec) {
  const out = join(dir, `${name}.bundle`);
  const built = await buildBundleBetween([oldPath], newPath, {
    key,
    out,
    // The same zstd level on both sides, so the comparison is about the codec alone.
    zstdLevel: 19,
    refZstdLevel: 19,
    scratchDir: dir,
    ...(codec !== undefined ? { codec } : {}),
  });
  assert.equal(built.layers.length, 1);
  return { out, layer: built.layers[0]!, sources: built.manifest.sources.length };
}

describe("codec fallback", () => {
  it("sends a whole-layer payload when a ref-zstd payload is mostly literal data and the whole layer is smaller", async () => {
    const asked = await diff("ref-zstd", "ref-zstd");
    const plain = await diff("brotli-x86", "brotli-x86");
    const chosen = await diff("default");
    // An explicit codec is kept as asked.
    assert.equal(asked.layer.codec, "ref-zstd");
    assert.equal(plain.layer.codec, "brotli-x86");
    assert.ok(
      asked.layer.payloadBytes > layerSize * PLAIN_CHECK_SHARE,
      `ref-zstd sends ${asked.layer.payloadBytes} of ${layerSize} bytes: the check must apply`,
    );
    assert.ok(
      plain.layer.payloadBytes < asked.layer.payloadBytes,
      `brotli-x86 ${plain.layer.payloadBytes} bytes, ref-zstd ${asked.layer.payloadBytes}`,
    );
    assert.equal(chosen.layer.codec, "brotli-x86");
    assert.equal(chosen.layer.payloadBytes, plain.layer.payloadBytes);
    // No payload reads the source any more, so the bundle lists none and needs nothing on the device.
    assert.equal(chosen.sources, 0);
    assert.equal(asked.sources, 1);

    const dest = join(dir, "rebuilt.tar");
    await applyFromImages({
      bundle: chosen.out,
      trust: [key],
      from: [],
      dest: `docker-archive:${dest}`,
      scratchDir: dir,
    });
    assert.deepEqual(await readFile(dest), await readFile(newPath));
  });
});
