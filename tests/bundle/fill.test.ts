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
});
