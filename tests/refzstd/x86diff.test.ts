import assert from "node:assert/strict";
import { describe, it } from "node:test";
import zstd from "zstd-napi";
import { approximatePieces, pieceStreams } from "../../delta/refzstd/approx.js";
import { decodeRefZstd } from "../../delta/refzstd/decoder.js";
import { encodeRefZstd } from "../../delta/refzstd/encoder.js";
import { REFZSTD_MAGIC, REFZSTD_VERSION, REFZSTD_VERSION_X86 } from "../../delta/refzstd/format.js";
import { applyX86Diff, encodeX86Diff, X86DiffState } from "../../delta/refzstd/x86diff.js";
import { BufferSource } from "../../delta/vcdiff/source.js";
import { buildTar } from "../bundle/fixtures.js";
import { seededBytes } from "../support/random.js";
import { x86Pair } from "../support/x86-pair.js";
import { hintsFor } from "./hints.js";

/** The difference bytes and words of one x86 diff piece, the words as the frame holds them. */
function split(oldBytes: Uint8Array, newBytes: Uint8Array): { diff: Uint8Array; words: Uint8Array } {
  const diff = new Uint8Array(newBytes.length);
  const list: number[] = [];
  encodeX86Diff(oldBytes, 0, newBytes, 0, newBytes.length, diff, 0, list);
  const words = new Uint8Array(4 * list.length);
  const view = new DataView(words.buffer);
  list.forEach((w, i) => view.setUint32(4 * i, w, true));
  return { diff, words };
}

/** Applies a piece in chunks of `chunk` bytes, as the decoder does across its output buffers. */
function apply(oldBytes: Uint8Array, diff: Uint8Array, words: Uint8Array, chunk: number): Uint8Array {
  const out = Uint8Array.from(oldBytes);
  const state = new X86DiffState();
  state.startWords(0, words.length);
  for (let at = 0; at < out.length; at += chunk) {
    const n = Math.min(chunk, out.length - at);
    assert.equal(applyX86Diff(out, at, n, diff, at, out.length - at, words, state), undefined);
  }
  assert.equal(state.wordAt, words.length, "every word is used");
  return out;
}

describe("x86 diff pieces", () => {
  it("rebuild a relocated executable in any chunking, a field split between chunks included", () => {
    const { oldFile, newFile } = x86Pair(256 * 1024);
    const oldBytes = oldFile.subarray(0, 200_000);
    const newBytes = newFile.subarray(0, 200_000);
    const { diff, words } = split(oldBytes, newBytes);
    assert.ok(words.length / 4 > 200, `${words.length / 4} fields`);
    for (const chunk of [1, 3, 7, 4096, 65_537, oldBytes.length])
      assert.deepEqual(apply(oldBytes, diff, words, chunk), newBytes, `chunks of ${chunk}`);
  });

  it("carry from byte to byte of an operand, and start no field in a piece's last four bytes", () => {
    const oldBytes = Uint8Array.of(0xe8, 0xff, 0xff, 0x00, 0x00, 0x90, 0xe9, 1, 2, 3);
    const newBytes = Uint8Array.of(0xe8, 0x01, 0x00, 0x01, 0x00, 0x90, 0xe9, 1, 2, 4);
    const { diff, words } = split(oldBytes, newBytes);
    // One field (0x0000ffff → 0x00010001: +2); the E9 has three bytes after it, so none there.
    assert.deepEqual([...words], [2, 0, 0, 0]);
    assert.deepEqual([...diff], [0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    assert.deepEqual(apply(oldBytes, diff, words, 2), newBytes);
  });

  it("refuse a piece that needs more words than there are, or a difference byte inside an operand", () => {
    const oldBytes = Uint8Array.of(0xe8, 1, 2, 3, 4, 0xe8, 5, 6, 7, 8);
    const newBytes = Uint8Array.of(0xe8, 2, 2, 3, 4, 0xe8, 6, 6, 7, 8);
    const { diff, words } = split(oldBytes, newBytes);
    const short = new X86DiffState();
    short.startWords(0, 4);
    assert.equal(applyX86Diff(Uint8Array.from(oldBytes), 0, 10, diff, 0, 10, words, short), "words");
    const bad = Uint8Array.from(diff);
    bad[2] = 1;
    const state = new X86DiffState();
    state.startWords(0, words.length);
    assert.equal(applyX86Diff(Uint8Array.from(oldBytes), 0, 10, bad, 0, 10, words, state), "field");
  });

  it("compress better than byte differences on a relinked executable", () => {
    const { oldFile, newFile, moved } = x86Pair(3 * 1024 * 1024, 4096);
    assert.ok(moved > 1000, `${moved} calls cross the insertion`);
    const pieces = approximatePieces(oldFile, newFile);
    const bytewise = pieceStreams(oldFile, newFile, pieces).diff;
    // The same diff pieces as x86 diff pieces: difference bytes, then the words.
    const diff = new Uint8Array(bytewise.length);
    const list: number[] = [];
    let at = 0;
    let d = 0;
    for (const p of pieces) {
      if (p.kind === "diff") {
        encodeX86Diff(oldFile, p.oldOffset, newFile, at, p.length, diff, d, list);
        d += p.length;
      }
      at += p.length;
    }
    const words = new Uint8Array(4 * list.length);
    list.forEach((w, i) => new DataView(words.buffer).setUint32(4 * i, w, true));
    const size = (b: Uint8Array) => zstd.compress(Buffer.from(b), { compressionLevel: 19 }).length;
    const x86 = size(Buffer.concat([diff, words]));
    const plain = size(bytewise);
    assert.ok(x86 < plain * 0.9, `x86 diff pieces take ${x86} bytes, byte differences ${plain}`);
  });

  it("leave data without CALL or JMP bytes as plain differences", () => {
    const oldBytes = seededBytes(10_000, 3).map((b) => (b === 0xe8 || b === 0xe9 ? 0 : b));
    const newBytes = seededBytes(10_000, 4);
    const { diff, words } = split(oldBytes, newBytes);
    assert.equal(words.length, 0);
    for (let i = 0; i < diff.length; i++) assert.equal(diff[i], (newBytes[i]! - oldBytes[i]!) & 0xff);
  });
});

async function collect(parts: AsyncIterable<Uint8Array>): Promise<Buffer> {
  const chunks: Uint8Array[] = [];
  for await (const part of parts) chunks.push(Buffer.from(part));
  return Buffer.concat(chunks);
}

/** A layer holding one executable (with e_machine set to `machine`) and a text file. */
async function layerWith(executable: Uint8Array, machine: number): Promise<Uint8Array> {
  const content = Uint8Array.from(executable);
  new DataView(content.buffer).setUint16(18, machine, true);
  return buildTar([
    { path: "usr/bin/app", type: "file", content },
    { path: "usr/share/doc/app/README", type: "file", content: new TextEncoder().encode("an app\n") },
  ]);
}

describe("ref-zstd payloads with x86 diff pieces", () => {
  const { oldFile, newFile } = x86Pair(1536 * 1024, 256);

  for (const segmentLiteral of [65_536, undefined]) {
    it(`round-trip a changed x86-64 executable as version 3 (segments of ${segmentLiteral ?? "default"} literal bytes)`, async () => {
      const old = await layerWith(oldFile, 62);
      const next = await layerWith(newFile, 62);
      const payload = await collect(
        encodeRefZstd(new BufferSource(next), new BufferSource(old), {
          ...hintsFor(next, [old]),
          level: 3,
          ...(segmentLiteral !== undefined ? { segmentLiteral, reference: 2 * segmentLiteral } : {}),
        }),
      );
      assert.equal(payload[REFZSTD_MAGIC.length], REFZSTD_VERSION_X86);
      assert.ok(payload.length < 20_000, `${payload.length} bytes for a relinked 1.5 MiB executable`);
      const rebuilt = await collect(
        decodeRefZstd(new BufferSource(payload), { source: new BufferSource(old) }),
      );
      assert.deepEqual(rebuilt, Buffer.from(next));
    });
  }

  it("keep byte differences for an executable of another machine (AArch64)", async () => {
    const old = await layerWith(oldFile, 183);
    const next = await layerWith(newFile, 183);
    const payload = await collect(
      encodeRefZstd(new BufferSource(next), new BufferSource(old), { ...hintsFor(next, [old]), level: 3 }),
    );
    assert.equal(payload[REFZSTD_MAGIC.length], REFZSTD_VERSION);
    const rebuilt = await collect(
      decodeRefZstd(new BufferSource(payload), { source: new BufferSource(old) }),
    );
    assert.deepEqual(rebuilt, Buffer.from(next));
  });
});
