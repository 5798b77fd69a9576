/**
 * The diff's worker pool: ref-zstd frames, approximate matching and plain payloads made in
 * worker threads come out byte for byte as in the main thread, whole bundles too; a failing
 * job surfaces as an error that names it, and the pool keeps serving; closing it fails what
 * is still queued and lets the process exit.
 */
import assert from "node:assert/strict";
import { existsSync, readFileSync } from "node:fs";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { CompressPool } from "../../delta/bundle/compress-pool.js";
import { buildBundle } from "../../delta/bundle/diff.js";
import { encodePayload } from "../../delta/bundle/payload.js";
import { generateSigningKey } from "../../delta/bundle/sign.js";
import { openImage } from "../../delta/image/open.js";
import { decodeRefZstd } from "../../delta/refzstd/decoder.js";
import { encodeRefZstd, frameParameters, type RefZstdEncodeOptions } from "../../delta/refzstd/encoder.js";
import { BufferSource } from "../../delta/vcdiff/source.js";
import { hintsFor } from "../refzstd/hints.js";
import { relocate, seededBytes } from "../support/random.js";
import { buildTar, imageOf, patched, realFiles, sha256, writeArchive } from "./fixtures.js";

let dir: string;
let oldTar: Uint8Array;
let newTar: Uint8Array;

before(async () => {
  dir = await mkdtemp(join(tmpdir(), "compress-pool-"));
  // A relinked executable (approximate matching runs on it), patched real binaries and text.
  const exe = new Uint8Array(readFileSync(process.execPath).subarray(0, 1024 * 1024));
  const third = Math.floor(exe.length / 3);
  const relinked = new Uint8Array(
    Buffer.concat([exe.subarray(0, third), seededBytes(3000, 5), exe.subarray(third)]),
  );
  relocate(relinked, third + 3000, 2 * third, 0x28);
  const files = realFiles("/usr/bin", "usr/bin", { limit: 12, maxBytes: 1_500_000 });
  const notes = new TextEncoder().encode("release notes\n".repeat(5000));
  oldTar = await buildTar([
    { path: "usr/local/bin/app", type: "file", content: exe, mode: 0o755 },
    ...files,
    { path: "usr/share/notes", type: "file", content: notes },
  ]);
  newTar = await buildTar([
    { path: "usr/local/bin/app", type: "file", content: relinked, mode: 0o755 },
    ...files.map((f, i) =>
      i % 3 === 0 && f.content !== undefined ? { ...f, content: patched(f.content, i) } : f,
    ),
    { path: "usr/share/notes", type: "file", content: Buffer.concat([notes, Buffer.from("one more\n")]) },
  ]);
});

after(async () => {
  await rm(dir, { recursive: true, force: true });
});

async function refZstd(options: RefZstdEncodeOptions): Promise<Buffer> {
  const parts: Uint8Array[] = [];
  for await (const part of encodeRefZstd(new BufferSource(newTar), new BufferSource(oldTar), {
    ...hintsFor(newTar, [oldTar]),
    level: 19,
    // Small segments, so there are many frames to spread over the workers.
    segmentLiteral: 64 * 1024,
    ...options,
  }))
    parts.push(Buffer.from(part));
  return Buffer.concat(parts);
}

describe("compress pool", () => {
  it("makes ref-zstd payloads in workers byte for byte as in this thread, and they decode", async () => {
    const inThread = await refZstd({});
    const pool = new CompressPool(2);
    try {
      const pooled = await refZstd({
        compressFrame: pool.compressFrame,
        matchBinary: pool.matchBinary,
        framesAhead: 2,
      });
      assert.equal(pooled.length, inThread.length);
      assert.ok(pooled.equals(inThread), "the pooled payload differs from the in-thread one");
    } finally {
      await pool.close();
    }
    const decoded: Uint8Array[] = [];
    for await (const part of decodeRefZstd(new BufferSource(inThread), {
      source: new BufferSource(oldTar),
      expectedSize: newTar.length,
    }))
      decoded.push(Buffer.from(part));
    assert.equal(sha256(Buffer.concat(decoded)), sha256(newTar));
  });

  for (const compressor of ["zstd", "brotli"] as const)
    it(`builds a plain ${compressor}-x86 payload in a worker byte for byte as in this thread`, async () => {
      const tarPath = join(dir, "layer.tar");
      await writeFile(tarPath, newTar);
      // The executable's content starts after its 512-byte header.
      const settings = {
        level: 9,
        windowLog: 20,
        searchWholeSource: false,
        x86: [{ offset: 512, length: 1024 * 1024 }],
        compressor,
      };
      const here = await encodePayload(
        tarPath,
        undefined,
        undefined,
        settings,
        join(dir, `here.${compressor}`),
        () => {},
      );
      const pool = new CompressPool(1);
      const seen: number[] = [];
      try {
        const there = await pool.encodePlainPayload(
          { targetPath: tarPath, out: join(dir, `there.${compressor}`), ...settings },
          (done) => seen.push(done),
        );
        assert.deepEqual(there, here);
      } finally {
        await pool.close();
      }
      assert.ok(
        (await readFile(join(dir, `there.${compressor}`))).equals(
          await readFile(join(dir, `here.${compressor}`)),
        ),
      );
      assert.equal(seen[seen.length - 1], newTar.length, "progress ends at the tar's size");
    });

  it("reports a failing job as an error that names it, and serves the next job", async () => {
    const pool = new CompressPool(1);
    try {
      await assert.rejects(
        pool.compressFrame(new Uint8Array(100), new Uint8Array(10), { ...frameParameters(3), windowLog: 99 }),
        /^Error: compress worker failed on a frame job: .*/,
      );
      const frame = await pool.compressFrame(new Uint8Array(100), new Uint8Array(10), frameParameters(3));
      assert.equal(frame[0], 0x28, "a zstd frame starts with its magic 28 B5 2F FD");
    } finally {
      await pool.close();
    }
  });

  it("fails queued jobs when closed", async () => {
    const pool = new CompressPool(1);
    const jobs = [1, 2, 3].map(() =>
      pool.compressFrame(seededBytes(1 << 20, 9), new Uint8Array(10), frameParameters(19)),
    );
    const outcomes = Promise.allSettled(jobs);
    await pool.close();
    assert.deepEqual(
      (await outcomes).map((o) => (o.status === "rejected" ? String(o.reason) : "fulfilled")),
      Array(3).fill("Error: the compress pool was closed before a frame job finished"),
    );
    await assert.rejects(
      pool.compressFrame(new Uint8Array(1), new Uint8Array(1), frameParameters(3)),
      /closed/,
    );
  });

  it("builds the same bundle with two workers as with none", async () => {
    const key = generateSigningKey();
    const base = await buildTar(
      realFiles("/usr/bin", "usr/bin", { limit: 8, maxBytes: 1_000_000, skip: 20 }),
    );
    const v1 = await writeArchive(join(dir, "v1.tar"), imageOf("apps/tool", "1", [base, oldTar]));
    const v2 = await writeArchive(join(dir, "v2.tar"), imageOf("apps/tool", "2", [base, newTar]));
    const first = await writeArchive(join(dir, "first.tar"), imageOf("apps/first", "1", [newTar, oldTar]));
    const build = async (
      to: string,
      from: string[],
      out: string,
      compressWorkers: number,
      searchWholeSource?: boolean,
    ) => {
      const target = await openImage(to);
      const sources = await Promise.all(from.map((p) => openImage(p)));
      try {
        // Low levels and a small window keep the test quick; the pool passes them on like any others.
        return await buildBundle({
          target,
          sources,
          key,
          out,
          scratchDir: dir,
          compressWorkers,
          zstdLevel: 9,
          zstdWindowLog: 20,
          refZstdLevel: 9,
          ...(searchWholeSource !== undefined ? { searchWholeSource } : {}),
        });
      } finally {
        await target.close();
        await Promise.all(sources.map((s) => s.close()));
      }
    };
    // An update (ref-zstd with diff pieces; layers start as they are scanned, or after all of them
    // without whole-source search) and a first image (two plain payloads at once).
    for (const [to, from, whole] of [
      [v2, [v1], undefined],
      [v2, [v1], false],
      [first, [], undefined],
    ] as const) {
      const serial = await build(to, [...from], join(dir, "serial.dsb"), 0, whole);
      const pooled = await build(to, [...from], join(dir, "pooled.dsb"), 2, whole);
      assert.deepEqual(
        pooled.layers.map((l) => [l.codec, l.payloadBytes]),
        serial.layers.map((l) => [l.codec, l.payloadBytes]),
      );
      assert.ok(
        (await readFile(join(dir, "pooled.dsb"))).equals(await readFile(join(dir, "serial.dsb"))),
        `the bundle for ${to} differs with workers`,
      );
    }
    // A job that fails in a worker fails the build with the worker's reason, and no bundle is left.
    const target = await openImage(first);
    try {
      await assert.rejects(
        buildBundle({
          target,
          sources: [],
          key,
          out: join(dir, "bad.dsb"),
          scratchDir: dir,
          plainCompressor: "zstd",
          zstdWindowLog: 40,
        }),
        /^Error: compress worker failed on a payload job: Parameter is out of bound$/,
      );
    } finally {
      await target.close();
    }
    assert.equal(existsSync(join(dir, "bad.dsb")), false);
  });
});
