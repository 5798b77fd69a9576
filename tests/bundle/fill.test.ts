import assert from "node:assert/strict";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { readBundleHead } from "../../delta/bundle/format.js";
import { generateSigningKey, type SigningKey } from "../../delta/bundle/sign.js";
import { type ScannedEntry, TarScanner } from "../../delta/index/tar-scan.js";
import type { TarWriterEntry } from "../../delta/tar/writer.js";
import { applyFromImages, buildBundleBetween } from "../support/bundles.js";
import { seededBytes } from "../support/random.js";
import { firstSegmentExtents } from "../support/refzstd-tables.js";
import { buildTar, imageOf, writeArchive } from "./fixtures.js";

/**
 * The device holds another app whose layer is mostly source maps; the new app's layer shares
 * one file with it and is otherwise new JavaScript. The reference fill (the other app's layer)
 * must leave the source maps out, a kind of file the new layer does not have, and keep the code.
 */
let dir: string;
let key: SigningKey;
let heldPath: string;
let newPath: string;
let heldEntries: ScannedEntry[];
/** The other app's layer: a README, and twelve scripts each with its source map. */
let heldTar: Uint8Array;

/** Text that looks like code: words from a small vocabulary, seeded. */
function code(seed: number, length: number): Uint8Array {
  const words = ["const", "return", "function", "module", "exports", "require", "await", "this", "value"];
  const noise = seededBytes(length, seed);
  let text = "";
  for (let i = 0; text.length < length; i++)
    text += `${words[noise[i % length]! % words.length]} x${noise[i % length]! % 17};\n`;
  return new TextEncoder().encode(text.slice(0, length));
}

const file = (path: string, content: Uint8Array): TarWriterEntry => ({ path, type: "file", content });

before(async () => {
  dir = await mkdtemp(join(tmpdir(), "bundle-fill-"));
  key = generateSigningKey();
  const shared = file("opt/other/README.txt", code(1, 3000));
  heldTar = await buildTar([
    shared,
    ...Array.from({ length: 12 }, (_, i) => [
      file(`opt/other/lib/part${i}.js`, code(100 + i, 8000)),
      file(`opt/other/lib/part${i}.js.map`, seededBytes(40_000, 200 + i)),
    ]).flat(),
  ]);
  const next = await buildTar([
    shared,
    ...Array.from({ length: 10 }, (_, i) =>
      file(`srv/gateway/handler-${"abcdefghij"[i]}.js`, code(300 + i, 9000)),
    ),
  ]);
  heldEntries = [];
  const scanner = new TarScanner({ entry: (e) => heldEntries.push(e), data() {}, entryEnd() {} });
  scanner.push(heldTar);
  scanner.finish();
  heldPath = await writeArchive(join(dir, "held.tar"), imageOf("apps/other", "1", [heldTar]));
  newPath = await writeArchive(join(dir, "new.tar"), imageOf("apps/gateway", "1", [next]));
});

after(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** The reference extents of the first segment of the bundle's one payload. */
async function referenceExtents(bundlePath: string) {
  const head = await readBundleHead(bundlePath);
  const entry = head.manifest.layers[0]!;
  assert.ok("offset" in entry);
  assert.equal(entry.codec, "ref-zstd");
  const bundle = await readFile(bundlePath);
  const start = head.payloadsOffset + entry.offset;
  return firstSegmentExtents(bundle.subarray(start, start + entry.length));
}

/** Applies the bundle on a device holding `from` and checks the image it writes is the new app's. */
async function assertRebuildsNewApp(bundlePath: string, from: string, dest: string): Promise<void> {
  await applyFromImages({
    bundle: bundlePath,
    trust: [key],
    from: [from],
    dest: `docker-archive:${dest}`,
    scratchDir: dir,
  });
  assert.deepEqual(await readFile(dest), await readFile(newPath));
}

describe("reference fill", () => {
  it("leaves out of the fill a kind of file the new layer does not have, keeps the rest, and round-trips", async () => {
    const out = join(dir, "gateway.bundle");
    await buildBundleBetween([heldPath], newPath, { key, out, scratchDir: dir });
    const extents = await referenceExtents(out);
    const covered = (from: number, to: number) =>
      extents.filter((e) => e.sourceOffset < to && from < e.sourceOffset + e.length).length > 0;
    const maps = heldEntries.filter((e) => e.path.endsWith(".map"));
    const scripts = heldEntries.filter((e) => e.path.endsWith(".js"));
    assert.equal(maps.length, 12);
    for (const e of maps)
      assert.ok(!covered(e.dataOffset, e.dataOffset + e.size), `${e.path} is in the reference`);
    for (const e of scripts)
      assert.ok(covered(e.dataOffset, e.dataOffset + e.size), `${e.path} is not in the reference`);

    await assertRebuildsNewApp(out, heldPath, join(dir, "rebuilt.tar"));
  });

  it("keeps in an earlier layer's fill a file whose path a later held layer also holds", async () => {
    // The held image's second layer rewrites one of the first layer's scripts (same path). The
    // new layer copies from the first layer only, so the fill is that layer, and its copy of the
    // script belongs in it like every other script.
    const rewritten = "opt/other/lib/part3.js";
    const later = await buildTar([file(rewritten, code(900, 8000))]);
    const twoLayers = await writeArchive(
      join(dir, "held-two-layers.tar"),
      imageOf("apps/other", "2", [heldTar, later]),
    );
    const out = join(dir, "gateway-two.bundle");
    await buildBundleBetween([twoLayers], newPath, { key, out, scratchDir: dir });
    const extents = await referenceExtents(out);
    const script = heldEntries.find((e) => e.path === rewritten)!;
    // The first layer starts the virtual source, so its tar offsets are source offsets.
    assert.ok(
      extents.some(
        (e) =>
          e.sourceOffset <= script.dataOffset && script.dataOffset + script.size <= e.sourceOffset + e.length,
      ),
      `${rewritten} of the first layer is not in the reference`,
    );
    for (const e of heldEntries.filter((x) => x.path.endsWith(".map")))
      assert.ok(
        !extents.some(
          (x) => x.sourceOffset < e.dataOffset + e.size && e.dataOffset < x.sourceOffset + x.length,
        ),
        `${e.path} is in the reference`,
      );

    await assertRebuildsNewApp(out, twoLayers, join(dir, "rebuilt-two.tar"));
  });
});
