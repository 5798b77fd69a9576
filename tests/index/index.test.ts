import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import { describe, it } from "node:test";
import { Chunker, MAX_CHUNK, MIN_CHUNK } from "../../delta/index/chunker.js";
import { CHUNKED_FILE_MIN, indexLayerTar } from "../../delta/index/index.js";
import { buildTar } from "../../delta/tar/writer.js";

const hex = (bytes: Uint8Array) => createHash("sha256").update(bytes).digest("hex");

async function* pieces(bytes: Uint8Array, size: number): AsyncGenerator<Uint8Array> {
  for (let at = 0; at < bytes.length; at += size) yield bytes.subarray(at, at + size);
}

function chunksOf(bytes: Uint8Array): (readonly [string, number])[] {
  const chunker = new Chunker();
  chunker.push(bytes.subarray(0, 1000));
  chunker.push(bytes.subarray(1000));
  return chunker.finish();
}

describe("image index", () => {
  const big = readFileSync("/usr/bin/zstd");
  const small = new TextEncoder().encode("hello, layer\n");
  const longName = `opt/${"deep/".repeat(30)}file.txt`;

  it("lists regular files with size and sha256, skipping links and directories", async () => {
    const tar = await buildTar([
      { path: "usr", type: "directory" },
      { path: "usr/bin/zstd", type: "file", content: big },
      { path: "etc/motd", type: "file", content: small },
      { path: "usr/bin/unzstd", type: "hardlink", linkName: "usr/bin/zstd" },
      { path: "usr/bin/zcat", type: "symlink", linkName: "zstd" },
      { path: longName, type: "file", content: small },
      { path: "empty", type: "file", content: new Uint8Array(0) },
    ]);
    const index = await indexLayerTar(pieces(tar, 7777));
    assert.equal(index.size, tar.length);
    assert.equal(index.entries, 7);
    assert.equal(index.headers.length, 7);
    assert.deepEqual(
      index.files.map((f) => [f.path, f.size, f.sha256, f.chunks !== undefined]),
      [
        ["usr/bin/zstd", big.length, hex(big), big.length >= CHUNKED_FILE_MIN],
        ["etc/motd", small.length, hex(small), false],
        [longName, small.length, hex(small), false],
        ["empty", 0, hex(new Uint8Array(0)), false],
      ],
    );
    assert.equal(
      index.files[0]!.chunks!.reduce((n, [, length]) => n + length, 0),
      big.length,
    );
    assert.ok(index.files[0]!.z > 0 && index.files[0]!.z < big.length, `estimate ${index.files[0]!.z}`);
  });

  it("gives identical header hashes to identical entries and different ones when metadata changes", async () => {
    const a = await indexLayerTar(pieces(await buildTar([{ path: "x", type: "file", content: small }]), 512));
    const b = await indexLayerTar(pieces(await buildTar([{ path: "x", type: "file", content: small }]), 100));
    const c = await indexLayerTar(
      pieces(await buildTar([{ path: "x", type: "file", content: small, mtime: 1 }]), 512),
    );
    assert.deepEqual(a.headers, b.headers);
    assert.notDeepEqual(a.headers, c.headers);
  });

  it("cuts content-defined chunks that survive an insertion near the start", () => {
    const original = chunksOf(big);
    const shifted = chunksOf(Buffer.concat([Buffer.from("inserted bytes that shift everything"), big]));
    for (const [, length] of original.slice(0, -1)) assert.ok(length >= MIN_CHUNK && length <= MAX_CHUNK);
    const before = new Set(original.map(([h]) => h));
    const kept = shifted.filter(([h]) => before.has(h)).length;
    assert.ok(kept >= original.length - 2, `${kept} of ${original.length} chunks survived the insertion`);
  });

  it("cuts the same chunks however the bytes are split", () => {
    const whole = new Chunker();
    whole.push(big);
    const split = new Chunker();
    for (let at = 0; at < big.length; at += 333) split.push(big.subarray(at, at + 333));
    assert.deepEqual(split.finish(), whole.finish());
  });
});
