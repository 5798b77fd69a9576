import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { mkdtemp, readdir, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { generateSigningKey, type SigningKey } from "../../delta/bundle/sign.js";
import { openImage, writeImage } from "../../delta/image/open.js";
import {
  buildTar,
  bundleBetween,
  imageOf,
  patched,
  realFiles,
  withContent,
  writeArchive,
} from "./fixtures.js";

/**
 * A diff copies each target layer (and each source layer it cannot read in place) to scratch and
 * leaves the diff_id check to the reader's stream. A damaged layer must still stop the diff with
 * an error that names the layer and the image, and leave no bundle behind.
 */
let dir: string;
let key: SigningKey;
let base: Uint8Array;
let app1: Uint8Array;
let app2: Uint8Array;

before(async () => {
  dir = await mkdtemp(join(tmpdir(), "diff-damaged-"));
  key = generateSigningKey();
  base = await buildTar([
    { path: "usr", type: "directory" },
    { path: "usr/bin", type: "directory" },
    ...realFiles("/usr/bin", "usr/bin", { limit: 10, maxBytes: 1_000_000 }),
  ]);
  const libs = realFiles("/usr/lib/x86_64-linux-gnu", "usr/lib", { limit: 10, maxBytes: 1_000_000 });
  app1 = await buildTar([{ path: "usr/lib", type: "directory" }, ...libs]);
  app2 = await buildTar([
    { path: "usr/lib", type: "directory" },
    ...libs.map((e, i) => (i % 3 === 0 ? withContent(e, patched(e.content!, i)) : e)),
  ]);
});

after(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** Flips one byte of `file` at `at` (a negative `at` counts from the end). */
async function flipByte(file: string, at: number): Promise<void> {
  const bytes = await readFile(file);
  bytes[at < 0 ? bytes.length + at : at]! ^= 0xff;
  await writeFile(file, bytes);
}

describe("diff of a damaged image", () => {
  it("names a damaged target layer and writes no bundle", async () => {
    const from = await writeArchive(join(dir, "v1.tar"), imageOf("apps/damaged", "1", [base, app1]));
    const to = await writeArchive(join(dir, "v2-bad.tar"), imageOf("apps/damaged", "2", [base, app2]));
    const archive = await readFile(to);
    const at = archive.indexOf(Buffer.from(app2.subarray(20_000, 20_064)));
    assert.ok(at > 0, "the layer's bytes are in the archive");
    await flipByte(to, at + 5);
    const out = join(dir, "bad-target.bundle");
    await assert.rejects(bundleBetween(from, to, key, out, dir), (err: unknown) => {
      assert.ok(err instanceof Error);
      assert.match(
        err.message,
        /^target layer 1 of apps\/damaged:2 is damaged: .*should be sha256:[0-9a-f]{64}/,
      );
      return true;
    });
    assert.equal(existsSync(out), false);
  });

  it("names a damaged gzip source layer and writes no bundle", async () => {
    // An OCI layout with gzip layers: the diff inflates each source layer to scratch.
    const layout = join(dir, "v1-gzip");
    await writeImage(`oci:${layout}`, imageOf("apps/damaged", "1", [base, app1]), { compression: "gzip" });
    const reader = await openImage(`oci:${layout}`);
    const blob = join(layout, "blobs", "sha256", reader.info.layers[1]!.digest.slice("sha256:".length));
    await reader.close();
    // A byte of the gzip trailer: the blob no longer hashes to its digest.
    await flipByte(blob, -6);
    const to = await writeArchive(join(dir, "v2.tar"), imageOf("apps/damaged", "2", [base, app2]));
    const out = join(dir, "bad-source.bundle");
    await assert.rejects(bundleBetween(`oci:${layout}`, to, key, out, dir), (err: unknown) => {
      assert.ok(err instanceof Error);
      assert.match(
        err.message,
        /^source layer 1 of sha256:[0-9a-f]{64} is damaged: .*blob is corrupt.*; fetch the source image again$/,
      );
      return true;
    });
    assert.equal(existsSync(out), false);
    assert.deepEqual(
      (await readdir(dir)).filter((f) => f.endsWith(".bundle") || f.startsWith("deltaship-")),
      [],
    );
  });
});
