import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdtemp, readdir, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import type { ApplyResult } from "../../delta/bundle/apply.js";
import { BundleError } from "../../delta/bundle/format.js";
import { InflateError, inflateBrotliFileRange, inflateFileRange } from "../../delta/bundle/inflate.js";
import { generateSigningKey, type SigningKey } from "../../delta/bundle/sign.js";
import { writeImage } from "../../delta/image/open.js";
import {
  applyFromArchive,
  buildTar,
  bundleBetween,
  imageOf,
  patched,
  realFiles,
  sha256,
  withContent,
  writeArchive,
} from "./fixtures.js";

/**
 * Applying with streamToWriter: rebuilt layers are decoded while the docker-archive is written,
 * with no scratch copy. The archive must be the same bytes as through scratch files, and a
 * failed check at a layer's end must leave nothing at the destination.
 */
let dir: string;
let key: SigningKey;
let v1Path: string;
let v2Path: string;
let bundle: string;
let base: Uint8Array;
let app1: Uint8Array;

before(async () => {
  dir = await mkdtemp(join(tmpdir(), "apply-stream-"));
  key = generateSigningKey();
  const bins = realFiles("/usr/bin", "usr/bin", { limit: 30, maxBytes: 3_000_000 });
  const libs = realFiles("/usr/lib/x86_64-linux-gnu", "usr/lib", { limit: 20, maxBytes: 3_000_000 });
  base = await buildTar([
    { path: "usr", type: "directory" },
    { path: "usr/bin", type: "directory" },
    ...bins,
  ]);
  app1 = await buildTar([{ path: "usr/lib", type: "directory" }, ...libs]);
  const app2 = await buildTar([
    { path: "usr/lib", type: "directory" },
    ...libs.map((e, i) => (i % 5 === 1 ? withContent(e, patched(e.content!, i)) : e)),
  ]);
  v1Path = await writeArchive(join(dir, "v1.tar"), imageOf("apps/stream", "1", [base, app1]));
  v2Path = await writeArchive(join(dir, "v2.tar"), imageOf("apps/stream", "2", [base, app2]));
  bundle = join(dir, "v1-to-v2.bundle");
  await bundleBetween(v1Path, v2Path, key, bundle, dir);
});

after(async () => {
  await rm(dir, { recursive: true, force: true });
});

function apply(from: string, dest: string, streamToWriter: boolean): Promise<ApplyResult> {
  return applyFromArchive(from, {
    bundle,
    trust: [key],
    scratchDir: dir,
    streamToWriter,
    write: async (written) => {
      const result = await writeImage(`docker-archive:${dest}`, written);
      return { image: result.path, digest: result.manifestDigest, bytesWritten: 0 };
    },
  });
}

/** Files the writer may have left behind next to `dest` (its temporary name). */
async function leftovers(dest: string): Promise<string[]> {
  const name = dest.slice(dir.length + 1);
  return (await readdir(dir)).filter((f) => f.startsWith(name));
}

/** A copy of v1 with one byte flipped inside `layer`'s bytes. */
async function corruptedV1(layer: Uint8Array, name: string): Promise<string> {
  const archive = await readFile(v1Path);
  const at = archive.indexOf(Buffer.from(layer.subarray(40_000, 40_064)));
  assert.ok(at > 0, "the layer's bytes are in the archive");
  archive[at + 7]! ^= 0xff;
  const path = join(dir, name);
  await writeFile(path, archive);
  return path;
}

describe("apply streaming into a docker-archive", () => {
  it("writes the same archive as through scratch files, byte for byte the target", async () => {
    const streamed = join(dir, "streamed.tar");
    const scratched = join(dir, "scratched.tar");
    const a = await apply(v1Path, streamed, true);
    const b = await apply(v1Path, scratched, false);
    assert.deepEqual(
      a.layers.map((l) => l.from),
      ["device", "bundle"],
    );
    assert.deepEqual(a.layers, b.layers);
    const want = await readFile(v2Path);
    assert.equal(sha256(await readFile(streamed)), sha256(want));
    assert.equal(sha256(await readFile(scratched)), sha256(want));
  });

  it("names a corrupted source layer and leaves nothing at the destination", async () => {
    const from = await corruptedV1(app1, "v1-bad-app.tar");
    const dest = join(dir, "bad-app.tar");
    await assert.rejects(apply(from, dest, true), (err: unknown) => {
      assert.ok(err instanceof BundleError, String(err));
      assert.equal(err.code, "DIGEST");
      assert.match(err.message, new RegExp(`layer ${sha256(app1)} on this device hashes to sha256:`));
      assert.match(err.message, /re-deploy the image that holds it/);
      return true;
    });
    assert.equal(existsSync(dest), false);
    assert.deepEqual(await leftovers(dest), []);
  });

  for (const streamToWriter of [true, false]) {
    it(`refuses a corrupted layer it would copy in from the device (streamToWriter ${streamToWriter})`, async () => {
      const from = await corruptedV1(base, `v1-bad-base-${streamToWriter}.tar`);
      const dest = join(dir, `bad-base-${streamToWriter}.tar`);
      await assert.rejects(apply(from, dest, streamToWriter), (err: unknown) => {
        assert.ok(err instanceof BundleError, String(err));
        assert.equal(err.code, "DIGEST");
        assert.ok(err.message.includes(sha256(base)), err.message);
        assert.match(err.message, /re-deploy the image that holds it/);
        return true;
      });
      assert.equal(existsSync(dest), false);
      assert.deepEqual(await leftovers(dest), []);
    });
  }
});

describe("inflateFileRange", () => {
  let packed: string;
  let plain: Buffer;
  let prefix: number;
  before(async () => {
    // Two frames (as a concatenation of two zstd runs), behind a prefix as in a bundle.
    plain = Buffer.concat([await readFile(v1Path), Buffer.alloc(3_000_000, 7)]);
    const half = plain.length >> 1;
    const frames = Buffer.concat([
      execFileSync("zstd", ["-3", "-c", "-q"], { input: plain.subarray(0, half), maxBuffer: 1 << 28 }),
      execFileSync("zstd", ["-3", "-c", "-q"], { input: plain.subarray(half), maxBuffer: 1 << 28 }),
    ]);
    prefix = 1000;
    packed = join(dir, "frames.bin");
    await writeFile(packed, Buffer.concat([Buffer.alloc(prefix, 1), frames, Buffer.alloc(50, 2)]));
  });

  for (const reuseOutput of [true, false]) {
    it(`inflates every frame of a file range, in bounded chunks (reuseOutput ${reuseOutput})`, async () => {
      const size = (await readFile(packed)).length - prefix - 50;
      const parts: Buffer[] = [];
      let largest = 0;
      for await (const chunk of inflateFileRange(packed, prefix, size, { windowLogMax: 23, reuseOutput })) {
        largest = Math.max(largest, chunk.length);
        parts.push(Buffer.from(chunk));
      }
      assert.equal(sha256(Buffer.concat(parts)), sha256(plain));
      assert.ok(largest <= 1024 * 1024, `chunks stay at most 1 MiB, found ${largest}`);
    });
  }

  it("refuses a payload that ends inside a frame", async () => {
    const size = (await readFile(packed)).length - prefix - 50;
    await assert.rejects(
      (async () => {
        for await (const _ of inflateFileRange(packed, prefix, size - 100, {
          windowLogMax: 23,
          reuseOutput: true,
        })) {
        }
      })(),
      (err: unknown) => err instanceof InflateError && /ends in the middle of a frame/.test(err.message),
    );
  });

  it("refuses a frame whose window is larger than allowed", async () => {
    const big = execFileSync("zstd", ["-3", "--long=27", "-c", "-q"], { input: Buffer.alloc(1 << 20, 3) });
    const path = join(dir, "big-window.zst");
    await writeFile(path, big);
    await assert.rejects(
      (async () => {
        for await (const _ of inflateFileRange(path, 0, big.length, {
          windowLogMax: 23,
          reuseOutput: true,
        })) {
        }
      })(),
      InflateError,
    );
  });
});

describe("inflateBrotliFileRange", () => {
  let packed: string;
  let plain: Buffer;
  let stream: Buffer;
  const prefix = 777;
  before(async () => {
    // Debian's brotli tool writes the stream: an encoder independent of the one bundles use.
    plain = Buffer.concat([await readFile(v1Path), Buffer.alloc(2_000_000, 9)]);
    stream = execFileSync("brotli", ["-c", "-q", "5", "-w", "24"], { input: plain, maxBuffer: 1 << 28 });
    packed = join(dir, "brotli.bin");
    await writeFile(packed, Buffer.concat([Buffer.alloc(prefix, 1), stream, Buffer.alloc(40, 2)]));
  });

  const drain = async (path: string, start: number, length: number) => {
    const parts: Buffer[] = [];
    for await (const chunk of inflateBrotliFileRange(path, start, length)) parts.push(Buffer.from(chunk));
    return Buffer.concat(parts);
  };

  it("inflates a Brotli stream from a file range", async () => {
    assert.equal(sha256(await drain(packed, prefix, stream.length)), sha256(plain));
  });

  it("refuses a large-window stream (its window could exceed the 16 MiB a device allows)", async () => {
    const large = execFileSync("brotli", ["-c", "-q", "3", "--large_window=26"], {
      input: plain,
      maxBuffer: 1 << 28,
    });
    const path = join(dir, "brotli-large.bin");
    await writeFile(path, large);
    await assert.rejects(drain(path, 0, large.length), InflateError);
  });

  it("refuses a truncated stream and a corrupted one", async () => {
    await assert.rejects(drain(packed, prefix, stream.length - 100), InflateError);
    const damaged = Buffer.from(stream);
    for (let i = 0; i < 64; i++) damaged[(i * 7919) % damaged.length]! ^= 0x5a;
    const path = join(dir, "brotli-damaged.bin");
    await writeFile(path, damaged);
    await assert.rejects(drain(path, 0, damaged.length), InflateError);
  });
});
