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
  const held = await buildTar([
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
  scanner.push(held);
  scanner.finish();
  heldPath = await writeArchive(join(dir, "held.tar"), imageOf("apps/other", "1", [held]));
  newPath = await writeArchive(join(dir, "new.tar"), imageOf("apps/gateway", "1", [next]));
});

after(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe("reference fill", () => {
  it("leaves out of the fill a kind of file the new layer does not have, keeps the rest, and round-trips", async () => {
    const out = join(dir, "gateway.bundle");
    const built = await buildBundleBetween([heldPath], newPath, { key, out, scratchDir: dir });
    assert.equal(built.layers[0]!.codec, "ref-zstd");
    const head = await readBundleHead(out);
    const entry = head.manifest.layers[0]!;
    assert.ok("offset" in entry);
    const bundle = await readFile(out);
    const payload = bundle.subarray(
      head.payloadsOffset + entry.offset,
      head.payloadsOffset + entry.offset + entry.length,
    );
    const extents = firstSegmentExtents(payload);
    const covered = (from: number, to: number) =>
      extents.filter((e) => e.sourceOffset < to && from < e.sourceOffset + e.length).length > 0;
    const maps = heldEntries.filter((e) => e.path.endsWith(".map"));
    const scripts = heldEntries.filter((e) => e.path.endsWith(".js"));
    assert.equal(maps.length, 12);
    for (const e of maps)
      assert.ok(!covered(e.dataOffset, e.dataOffset + e.size), `${e.path} is in the reference`);
    for (const e of scripts)
      assert.ok(covered(e.dataOffset, e.dataOffset + e.size), `${e.path} is not in the reference`);

    const dest = join(dir, "rebuilt.tar");
    await applyFromImages({
      bundle: out,
      trust: [key],
      from: [heldPath],
      dest: `docker-archive:${dest}`,
      scratchDir: dir,
    });
    assert.deepEqual(await readFile(dest), await readFile(newPath));
  });
  it("keeps in an earlier layer's fill a file whose path a later held layer also holds", async () => {
    // The held image's second layer rewrites one of the first layer's scripts (same path). The
    // new layer copies from the first layer only, so the fill is that layer, and its copy of the
    // script belongs in it like every other script.
    const rewritten = "opt/other/lib/part3.js";
    const later = await buildTar([file(rewritten, code(900, 8000))]);
    const first = await buildTar([
      file("opt/other/README.txt", code(1, 3000)),
      ...Array.from({ length: 12 }, (_, i) => [
        file(`opt/other/lib/part${i}.js`, code(100 + i, 8000)),
        file(`opt/other/lib/part${i}.js.map`, seededBytes(40_000, 200 + i)),
      ]).flat(),
    ]);
    const twoLayers = await writeArchive(
      join(dir, "held-two-layers.tar"),
      imageOf("apps/other", "2", [first, later]),
    );
    const out = join(dir, "gateway-two.bundle");
    await buildBundleBetween([twoLayers], newPath, { key, out, scratchDir: dir });
    const head = await readBundleHead(out);
    const entry = head.manifest.layers[0]!;
    assert.ok("offset" in entry);
    const bundle = await readFile(out);
    const extents = firstSegmentExtents(
      bundle.subarray(head.payloadsOffset + entry.offset, head.payloadsOffset + entry.offset + entry.length),
    );
    const inFirst: ScannedEntry[] = [];
    const scanner = new TarScanner({ entry: (e) => inFirst.push(e), data() {}, entryEnd() {} });
    scanner.push(first);
    scanner.finish();
    const script = inFirst.find((e) => e.path === rewritten)!;
    // The first layer starts the virtual source, so its tar offsets are source offsets.
    assert.ok(
      extents.some(
        (e) =>
          e.sourceOffset <= script.dataOffset && script.dataOffset + script.size <= e.sourceOffset + e.length,
      ),
      `${rewritten} of the first layer is not in the reference`,
    );
    for (const e of inFirst.filter((x) => x.path.endsWith(".map")))
      assert.ok(
        !extents.some(
          (x) => x.sourceOffset < e.dataOffset + e.size && e.dataOffset < x.sourceOffset + x.length,
        ),
        `${e.path} is in the reference`,
      );

    const dest = join(dir, "rebuilt-two.tar");
    await applyFromImages({
      bundle: out,
      trust: [key],
      from: [twoLayers],
      dest: `docker-archive:${dest}`,
      scratchDir: dir,
    });
    assert.deepEqual(await readFile(dest), await readFile(newPath));
  });
});
