import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { randomBytes } from "node:crypto";
import { describe, it } from "node:test";
import {
  CompressionError,
  compressGzip,
  decompress,
  detectCompression,
  peekCompression,
} from "../../delta/image/compression.js";
import { DigestError, digestOf, digestStream, verifyingStream } from "../../delta/image/digest.js";
import { bytesStream, collect } from "./archive-fixture.js";

// Compressible but not trivial: repeated text with random runs, 3 MiB.
const plain = (() => {
  const parts: Buffer[] = [];
  for (let i = 0; i < 3 * 1024; i++) parts.push(Buffer.from(`line ${i} `.padEnd(512, "x")), randomBytes(512));
  return new Uint8Array(Buffer.concat(parts));
})();

function tool(cmd: string, args: string[], input: Uint8Array): Uint8Array {
  return new Uint8Array(execFileSync(cmd, args, { input, maxBuffer: 64 * 1024 * 1024 }));
}

describe("layer compression", () => {
  it("detects gzip, zstd and plain tars from their first bytes", () => {
    assert.equal(detectCompression(tool("gzip", ["-c"], plain)), "gzip");
    assert.equal(detectCompression(tool("zstd", ["-q", "-c"], plain)), "zstd");
    assert.equal(detectCompression(plain), "none");
    assert.equal(detectCompression(new Uint8Array([0x28, 0xb5])), "none");
  });

  it("inflates what the gzip tool wrote, including several members, in any chunking", async () => {
    const gz = tool("gzip", ["-c", "-6"], plain);
    for (const chunk of [1000, 1 << 20]) {
      const out = await collect(decompress(bytesStream(gz, chunk)));
      assert.equal(digestOf(out), digestOf(plain), `chunk ${chunk}`);
    }
    const twoMembers = Buffer.concat([
      tool("gzip", ["-c"], plain.subarray(0, 1000)),
      tool("gzip", ["-c"], plain.subarray(1000)),
    ]);
    assert.equal(digestOf(await collect(decompress(bytesStream(twoMembers, 65536)))), digestOf(plain));
  });

  it("decompresses what the zstd tool wrote, including several frames", async () => {
    const zst = tool("zstd", ["-q", "-c", "-9"], plain);
    assert.equal(digestOf(await collect(decompress(bytesStream(zst, 777)))), digestOf(plain));
    const frames = Buffer.concat([
      tool("zstd", ["-q", "-c"], plain.subarray(0, 5)),
      tool("zstd", ["-q", "-c"], plain.subarray(5)),
    ]);
    assert.equal(digestOf(await collect(decompress(bytesStream(frames, 65536), "zstd"))), digestOf(plain));
  });

  it("compresses gzip that the gzip tool inflates, the same bytes every time", async () => {
    const gz = await collect(compressGzip(bytesStream(plain, 10000)));
    assert.deepEqual(await collect(compressGzip(bytesStream(plain, 333333))), gz);
    assert.equal(digestOf(tool("gzip", ["-dc"], gz)), digestOf(plain));
  });

  it("passes an uncompressed stream through untouched", async () => {
    async function* smallFirst(): AsyncGenerator<Uint8Array> {
      yield plain.subarray(0, 1);
      yield plain.subarray(1, 3);
      yield* bytesStream(plain.subarray(3), 65536);
    }
    const { compression, stream } = await peekCompression(smallFirst());
    assert.equal(compression, "none");
    assert.deepEqual(await collect(stream), plain);
  });

  it("refuses a truncated zstd stream", async () => {
    const zst = tool("zstd", ["-q", "-c"], plain);
    await assert.rejects(
      collect(decompress(bytesStream(zst.subarray(0, zst.length - 10), 4096))),
      (err: Error) => {
        assert.ok(err instanceof CompressionError);
        assert.match(err.message, /zstd stream is truncated/);
        return true;
      },
    );
  });

  it("refuses a zstd frame that asks for a window above the limit", async () => {
    const big = tool("sh", ["-c", "zstd -q --long=30 -c"], plain.subarray(0, 100000));
    await assert.rejects(
      collect(decompress(bytesStream(big, 4096))),
      /zstd stream is corrupt: .*(memory|window)/i,
    );
  });

  it("refuses a truncated or corrupt gzip stream", async () => {
    const gz = tool("gzip", ["-c"], plain);
    await assert.rejects(
      collect(decompress(bytesStream(gz.subarray(0, gz.length / 2), 4096))),
      CompressionError,
    );
    const bad = gz.slice();
    bad[3] = 0xff; // reserved flag bits
    await assert.rejects(collect(decompress(bytesStream(bad, 4096))), CompressionError);
  });
});

describe("digests", () => {
  it("hashes streams like sha256sum", async () => {
    const expected = execFileSync("sha256sum", { input: plain }).toString().split(" ")[0];
    assert.deepEqual(await digestStream(bytesStream(plain, 1000)), {
      digest: `sha256:${expected}`,
      size: plain.length,
    });
  });

  it("passes a matching stream and refuses one that differs or is longer", async () => {
    const digest = digestOf(plain);
    assert.deepEqual(
      await collect(verifyingStream(bytesStream(plain), { digest, size: plain.length }, "blob")),
      plain,
    );
    const other = plain.slice();
    other[5] ^= 1;
    await assert.rejects(collect(verifyingStream(bytesStream(other), { digest }, "blob x")), (err: Error) => {
      assert.ok(err instanceof DigestError);
      assert.match(
        err.message,
        /^blob x should be sha256:[0-9a-f]{64} but is sha256:[0-9a-f]{64} \(3145728 bytes\)/,
      );
      return true;
    });
    await assert.rejects(
      collect(verifyingStream(bytesStream(plain), { digest, size: 10 }, "blob y")),
      /blob y is longer than the expected 10 bytes/,
    );
  });
});
