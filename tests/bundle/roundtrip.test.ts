import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import type { ApplyResult } from "../../delta/bundle/apply.js";
import {
  BundleError,
  type BundleErrorCode,
  HEADER_SIZE,
  isPresent,
  type PayloadCodec,
  readBundleHead,
} from "../../delta/bundle/format.js";
import { generateSigningKey, type SigningKey } from "../../delta/bundle/sign.js";
import { whiteout } from "../../delta/tar/writer.js";
import { applyFromImages, assertLayerTars, buildBundleBetween, withImages } from "../support/bundles.js";
import { buildTar, imageOf, patched, realFiles, sha256, withContent, writeArchive } from "./fixtures.js";

/**
 * A device holds v1 (base + app layer); v2 changes the app layer (patched libraries, a new
 * file, a whiteout, hard links, duplicates), moves a file into a new layer and adds an empty
 * layer. Every bundle must rebuild v2's archive byte for byte.
 */
let dir: string;
let key: SigningKey;
let v1Path: string;
let v2Path: string;
let layersV1: Uint8Array[];
let layersV2: Uint8Array[];

before(async () => {
  dir = await mkdtemp(join(tmpdir(), "bundle-roundtrip-"));
  key = generateSigningKey();
  const bins = realFiles("/usr/bin", "usr/bin", { limit: 40, maxBytes: 4_000_000 });
  const libs = realFiles("/usr/lib/x86_64-linux-gnu", "usr/lib", { limit: 30, maxBytes: 3_000_000 });
  const moved = libs[libs.length - 1]!;
  const base = await buildTar([
    { path: "usr", type: "directory" },
    { path: "usr/bin", type: "directory" },
    ...bins,
  ]);
  const app1 = await buildTar([
    { path: "usr/lib", type: "directory" },
    ...libs,
    { path: "usr/lib/copy-of-first", type: "file", content: libs[0]!.content! },
    { path: "usr/lib/link-to-second", type: "hardlink", linkName: libs[1]!.path },
    { path: "usr/lib/sym", type: "symlink", linkName: libs[2]!.path },
  ]);
  const libs2 = libs.slice(0, -1).map((e, i) => (i % 7 === 2 ? withContent(e, patched(e.content!, i)) : e));
  const app2 = await buildTar([
    { path: "usr/lib", type: "directory" },
    ...libs2.filter((_, i) => i !== 5),
    whiteout(libs[5]!.path),
    // Duplicates: the same content twice, once under a new name, and a base binary copied here.
    { path: "usr/lib/copy-of-first", type: "file", content: libs[0]!.content! },
    { path: "usr/lib/from-base", type: "file", content: bins[3]!.content! },
    { path: "usr/lib/link-to-second", type: "hardlink", linkName: libs2[2]!.path },
    {
      path: "usr/lib/new-config.json",
      type: "file",
      content: new TextEncoder().encode('{"feature":true}\n'),
    },
  ]);
  const movedLayer = await buildTar([{ path: "opt/moved/lib.so", type: "file", content: moved.content! }]);
  const empty = await buildTar([]);
  layersV1 = [base, app1];
  layersV2 = [base, app2, movedLayer, empty];
  v1Path = await writeArchive(join(dir, "v1.tar"), imageOf("apps/demo", "1", layersV1));
  v2Path = await writeArchive(join(dir, "v2.tar"), imageOf("apps/demo", "2", layersV2));
});

after(async () => {
  await rm(dir, { recursive: true, force: true });
});

function diff(from: string[], to: string, out: string, codec?: PayloadCodec) {
  return buildBundleBetween(from, to, {
    key,
    out,
    zstdLevel: 3,
    scratchDir: dir,
    ...(codec !== undefined ? { codec } : {}),
  });
}

function apply(bundle: string, from: string[], dest: string, trust = [key]): Promise<ApplyResult> {
  return applyFromImages({ bundle, trust, from, dest: `docker-archive:${dest}`, scratchDir: dir });
}

async function expectRefusal(
  promise: Promise<unknown>,
  code: BundleErrorCode,
  mentions: string[],
  dest: string,
): Promise<void> {
  await assert.rejects(promise, (err: unknown) => {
    assert.ok(err instanceof BundleError, `expected a BundleError, got ${String(err)}`);
    assert.equal(err.code, code, err.message);
    for (const m of mentions) assert.ok(err.message.includes(m), `"${err.message}" should mention ${m}`);
    return true;
  });
  assert.equal(existsSync(dest), false, `${dest} must not exist after a refused bundle`);
}

describe("bundle round trips", () => {
  let bundle: string;
  before(async () => {
    bundle = join(dir, "v1-to-v2.bundle");
    await diff([v1Path], v2Path, bundle);
  });

  it("rebuilds the target archive byte for byte from an older image", async () => {
    const dest = join(dir, "rebuilt.tar");
    const result = await apply(bundle, [v1Path], dest);
    assert.deepEqual(
      result.layers.map((l) => [l.diffId, l.from]),
      [
        [sha256(layersV2[0]!), "device"],
        [sha256(layersV2[1]!), "bundle"],
        [sha256(layersV2[2]!), "bundle"],
        [sha256(layersV2[3]!), "bundle"],
      ],
    );
    assert.deepEqual(await readFile(dest), await readFile(v2Path));
  });

  it("rebuilds into an OCI layout whose layers hash to the target's diff_ids", async () => {
    const layout = join(dir, "layout");
    const result = await applyFromImages({
      bundle,
      trust: [key],
      from: [v1Path],
      dest: `oci:${layout}`,
      scratchDir: dir,
    });
    await withImages([layout], async ([rebuilt]) => {
      assert.equal(rebuilt!.info.manifestDigest, result.digest);
      assert.equal(rebuilt!.info.configDigest, result.configDigest);
      await assertLayerTars(rebuilt!, layersV2);
    });
  });

  it("lists the held layers as sources and sends only what is new", async () => {
    const head = await readBundleHead(bundle);
    assert.deepEqual(
      head.manifest.sources.map((s) => s.diffId),
      [sha256(layersV1[0]!), sha256(layersV1[1]!)],
    );
    const codecs = head.manifest.layers.map((l) => (isPresent(l) ? "present" : l.codec));
    assert.deepEqual(codecs, ["present", "ref-zstd", "ref-zstd", "brotli"]);
    // The Brotli payload is a standard stream: Debian's brotli decodes it to the layer.
    const last = head.manifest.layers[3]!;
    assert.ok(!isPresent(last));
    const bytes = await readFile(bundle);
    const payload = bytes.subarray(
      head.payloadsOffset + last.offset,
      head.payloadsOffset + last.offset + last.length,
    );
    const layer = execFileSync("brotli", ["-d", "-c"], { input: payload, maxBuffer: 1 << 30 });
    assert.equal(sha256(layer), sha256(layersV2[3]!));
    // The moved library is one COPY; the patched ones are small diffs: far below zstd of the new layers.
    const newBytes = layersV2[1]!.length + layersV2[2]!.length;
    assert.ok(
      head.header.payloadsLength < newBytes / 50,
      `payloads ${head.header.payloadsLength} bytes for ${newBytes} new bytes`,
    );
  });

  it("writes payloads that xdelta3 decodes given the same virtual source", async () => {
    const forced = join(dir, "vcdiff.bundle");
    await diff([v1Path], v2Path, forced, "vcdiff-zstd");
    const head = await readBundleHead(forced);
    const entry = head.manifest.layers[1]!;
    assert.ok(!isPresent(entry));
    assert.equal(entry.codec, "vcdiff-zstd");
    const bytes = await readFile(forced);
    const payload = bytes.subarray(
      head.payloadsOffset + entry.offset,
      head.payloadsOffset + entry.offset + entry.length,
    );
    const vcdiff = execFileSync("zstd", ["-d", "-c"], { input: payload, maxBuffer: 1 << 30 });
    await writeFile(join(dir, "payload.vcdiff"), vcdiff);
    await writeFile(join(dir, "virtual-source"), Buffer.concat(layersV1));
    const decoded = execFileSync(
      "xdelta3",
      ["-d", "-c", "-s", join(dir, "virtual-source"), join(dir, "payload.vcdiff")],
      {
        maxBuffer: 1 << 30,
      },
    );
    assert.equal(sha256(decoded), sha256(layersV2[1]!));
  });

  it("ships a first image to an empty device as Brotli payloads, executables through the x86 filter, and rebuilds it", async () => {
    const first = join(dir, "first.bundle");
    const built = await diff([], v1Path, first);
    // Both layers hold x86-64 executables and libraries from this machine.
    assert.deepEqual(
      built.layers.map((l) => [l.present, l.codec]),
      [
        [false, "brotli-x86"],
        [false, "brotli-x86"],
      ],
    );
    const dest = join(dir, "first.tar");
    await apply(first, [], dest);
    assert.deepEqual(await readFile(dest), await readFile(v1Path));

    // With a codec asked for: every layer has it, and the image is rebuilt.
    const firstAs = async (codec: PayloadCodec) => {
      const out = join(dir, `first-${codec}.bundle`);
      const asked = await diff([], v1Path, out, codec);
      assert.deepEqual(
        asked.layers.map((l) => l.codec),
        [codec, codec],
      );
      const rebuilt = join(dir, `first-${codec}.tar`);
      await apply(out, [], rebuilt);
      assert.deepEqual(await readFile(rebuilt), await readFile(v1Path));
      return asked;
    };
    // zstd, with the filter: what bundles held before Brotli, and what devices still decode.
    const zstdBuilt = await firstAs("zstd-x86");
    const plainBuilt = await firstAs("zstd");
    // Layers over brotliMaxLayer go as zstd (Brotli's cloud time grows with the layer, on one core).
    const smaller = Math.min(...built.layers.map((l) => l.size));
    const capped = await buildBundleBetween([], v1Path, {
      key,
      out: join(dir, "first-capped.bundle"),
      zstdLevel: 3,
      scratchDir: dir,
      brotliMaxLayer: smaller,
    });
    assert.deepEqual(
      capped.layers.map((l) => l.codec),
      built.layers.map((l) => (l.size <= smaller ? "brotli-x86" : "zstd-x86")),
    );
    assert.ok(
      capped.layers.some((l) => l.codec === "zstd-x86"),
      "the two layers differ in size",
    );
    // Past the bundle's Brotli budget, in layer order, layers go as zstd (a large first image
    // would otherwise outgrow the activity's timeout).
    const budgeted = await buildBundleBetween([], v1Path, {
      key,
      out: join(dir, "first-budget.bundle"),
      zstdLevel: 3,
      scratchDir: dir,
      brotliBudget: built.layers[0]!.size,
    });
    assert.deepEqual(
      budgeted.layers.map((l) => l.codec),
      ["brotli-x86", "zstd-x86"],
    );
    const budgetedTar = join(dir, "first-budget.tar");
    await apply(join(dir, "first-budget.bundle"), [], budgetedTar);
    assert.deepEqual(await readFile(budgetedTar), await readFile(v1Path));
    const size = (b: typeof built) => b.layers.reduce((n, l) => n + l.payloadBytes, 0);
    assert.ok(
      size(zstdBuilt) < size(plainBuilt),
      `zstd-x86 ${size(zstdBuilt)} bytes vs zstd ${size(plainBuilt)} bytes`,
    );
    assert.ok(
      size(built) < size(zstdBuilt),
      `brotli-x86 ${size(built)} bytes vs zstd-x86 ${size(zstdBuilt)} bytes`,
    );
  });

  it("makes an empty bundle payload section when the device holds every layer", async () => {
    const same = join(dir, "same.bundle");
    const built = await diff([v2Path], v2Path, same);
    assert.deepEqual(
      built.layers.map((l) => l.present),
      [true, true, true, true],
    );
    assert.equal(built.manifest.sources.length, 0);
    const dest = join(dir, "same.tar");
    await apply(same, [v2Path], dest);
    assert.deepEqual(await readFile(dest), await readFile(v2Path));
  });
});

describe("bundle refusals", () => {
  let bundle: string;
  let bytes: Buffer;
  before(async () => {
    bundle = join(dir, "refuse.bundle");
    await diff([v1Path], v2Path, bundle);
    bytes = await readFile(bundle);
  });

  it("refuses a bundle whose payload was altered", async () => {
    const tampered = Buffer.from(bytes);
    tampered[tampered.length - 10]! ^= 0x40;
    await writeFile(join(dir, "t1.bundle"), tampered);
    const dest = join(dir, "t1.tar");
    await expectRefusal(apply(join(dir, "t1.bundle"), [v1Path], dest), "PAYLOAD", ["fetch it again"], dest);
  });

  it("refuses a bundle whose manifest was altered after signing", async () => {
    const tampered = Buffer.from(bytes);
    const at = tampered.indexOf('"tag":"2"', HEADER_SIZE) + 7;
    tampered[at] = 0x33;
    await writeFile(join(dir, "t2.bundle"), tampered);
    const dest = join(dir, "t2.tar");
    await expectRefusal(apply(join(dir, "t2.bundle"), [v1Path], dest), "SIGNATURE", [key.keyId], dest);
  });

  it("refuses a bundle signed by a key that is not trusted", async () => {
    const dest = join(dir, "t3.tar");
    const other = generateSigningKey();
    await expectRefusal(
      apply(bundle, [v1Path], dest, [other]),
      "UNTRUSTED_KEY",
      [key.keyId, other.keyId],
      dest,
    );
  });

  it("refuses a bundle that is still arriving", async () => {
    await writeFile(join(dir, "t4.bundle"), bytes.subarray(0, bytes.length - 100));
    const dest = join(dir, "t4.tar");
    await expectRefusal(
      apply(join(dir, "t4.bundle"), [v1Path], dest),
      "INCOMPLETE",
      [`${bytes.length - 100} of ${bytes.length}`],
      dest,
    );
  });

  it("names the missing source layer and says to deploy the base image first", async () => {
    const dest = join(dir, "t5.tar");
    await expectRefusal(
      apply(bundle, [], dest),
      "MISSING_SOURCE",
      [sha256(layersV1[1]!), "deploy the base image first"],
      dest,
    );
  });

  it("refuses a corrupted source layer on the device and writes nothing", async () => {
    // A v1 whose app layer has one byte changed inside a file: same config, wrong content.
    const archive = await readFile(v1Path);
    const libs = realFiles("/usr/lib/x86_64-linux-gnu", "usr/lib", { limit: 30, maxBytes: 3_000_000 });
    const content = libs[3]!.content!;
    const at = archive.indexOf(
      Buffer.from(content.subarray(content.length >> 1, (content.length >> 1) + 64)),
    );
    assert.ok(at > 0);
    archive[at + 10]! ^= 0xff;
    await writeFile(join(dir, "v1-corrupt.tar"), archive);
    const dest = join(dir, "t6.tar");
    await expectRefusal(
      apply(bundle, [join(dir, "v1-corrupt.tar")], dest),
      "DIGEST",
      [sha256(layersV1[1]!), "re-deploy the image that holds it"],
      dest,
    );
  });
});
