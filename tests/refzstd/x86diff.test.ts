import assert from "node:assert/strict";
import { describe, it } from "node:test";
import zstd from "zstd-napi";
import { approximatePieces, pieceStreams } from "../../delta/refzstd/approx.js";
import { decodeRefZstd } from "../../delta/refzstd/decoder.js";
import { encodeRefZstd } from "../../delta/refzstd/encoder.js";
import { REFZSTD_MAGIC, REFZSTD_VERSION, REFZSTD_VERSION_X86 } from "../../delta/refzstd/format.js";
import {
  applyX86Diff,
  emptyX86Words,
  encodeX86Diff,
  writeX86Words,
  X86_ABSOLUTE,
  X86_KINDS,
  X86_RELATIVE,
  X86DiffState,
  x86PieceStreams,
  x86WordCount,
} from "../../delta/refzstd/x86diff.js";
import { BufferSource } from "../../delta/vcdiff/source.js";
import { buildTar } from "../bundle/fixtures.js";
import { collect } from "../support/collect.js";
import { seededBytes } from "../support/random.js";
import { x86Pair } from "../support/x86-pair.js";
import { hintsFor } from "./hints.js";

/** Words by kind as a segment's frame holds them: kind after kind; `starts` has each kind's start and the end. */
function pack(words: readonly number[][]): { bytes: Uint8Array; starts: number[] } {
  const bytes = new Uint8Array(4 * x86WordCount(words));
  writeX86Words(words, bytes, 0);
  const starts = [0];
  for (const list of words) starts.push(starts[starts.length - 1]! + 4 * list.length);
  return { bytes, starts };
}

/** The difference bytes and words of one x86 diff piece. */
function split(
  oldBytes: Uint8Array,
  newBytes: Uint8Array,
  mode = X86_RELATIVE,
): { diff: Uint8Array; words: number[][] } {
  const diff = new Uint8Array(newBytes.length);
  const words = emptyX86Words();
  encodeX86Diff(mode, oldBytes, 0, newBytes, 0, newBytes.length, diff, 0, words);
  return { diff, words };
}

/** Applies a piece in chunks of `chunk` bytes, as the decoder does across its output buffers. */
function apply(
  oldBytes: Uint8Array,
  diff: Uint8Array,
  words: readonly number[][],
  chunk: number,
  mode = X86_RELATIVE,
): Uint8Array {
  const out = Uint8Array.from(oldBytes);
  const { bytes, starts } = pack(words);
  const state = new X86DiffState();
  state.startWords(starts);
  state.startPiece(mode);
  for (let at = 0; at < out.length; at += chunk) {
    const n = Math.min(chunk, out.length - at);
    assert.equal(applyX86Diff(out, at, n, diff, at, out.length - at, bytes, state), undefined);
  }
  for (let k = 0; k < X86_KINDS; k++)
    assert.equal(state.wordAt[k], starts[k + 1], `every word of kind ${k} is used`);
  return out;
}

describe("x86 diff pieces", () => {
  it("rebuild a relocated executable in any chunking, a field split between chunks included", () => {
    const { oldFile, newFile } = x86Pair(256 * 1024);
    const oldBytes = oldFile.subarray(0, 200_000);
    const newBytes = newFile.subarray(0, 200_000);
    const { diff, words } = split(oldBytes, newBytes);
    assert.ok(words.flat().length > 200, `${words.flat().length} operands`);
    for (const chunk of [1, 3, 7, 4096, 65_537, oldBytes.length])
      assert.deepEqual(apply(oldBytes, diff, words, chunk), newBytes, `chunks of ${chunk}`);
  });

  it("carry from byte to byte of an operand, and start none in a piece's last four bytes", () => {
    const oldBytes = Uint8Array.of(0xe8, 0xff, 0xff, 0x00, 0x00, 0x90, 0xe9, 1, 2, 3);
    const newBytes = Uint8Array.of(0xe8, 0x01, 0x00, 0x01, 0x00, 0x90, 0xe9, 1, 2, 4);
    const { diff, words } = split(oldBytes, newBytes);
    // One CALL operand (0x0000ffff → 0x00010001: +2); the E9 has three bytes after it, so none there.
    assert.deepEqual(words, [[2], [], [], [], []]);
    assert.deepEqual([...diff], [0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    assert.deepEqual(apply(oldBytes, diff, words, 2), newBytes);
  });

  it("find JMP, Jcc and RIP-relative operands (after one- and two-byte opcodes), each kind in its own stream", () => {
    const oldBytes = Uint8Array.of(
      ...[0xe9, 1, 0, 0, 0], // JMP rel32
      ...[0x0f, 0x84, 2, 0, 0, 0], // JE rel32
      ...[0x48, 0x8b, 0x05, 3, 0, 0, 0], // MOV rax, [rip+3]
      ...[0x8d, 0x04, 9, 9, 9, 9], // LEA with another ModRM: no operand
      ...[0xe8, 0x0f, 0x85, 0, 0], // a CALL whose operand holds 0F 85: no Jcc inside it
      ...[0x0f, 0xe8, 4, 0, 0, 0], // 0F then E8: no Jcc, but the E8 is a CALL
      ...[0x0f, 0x10, 0x05, 5, 0, 0, 0], // MOVUPS xmm0, [rip+5]: a two-byte opcode
      ...[0x0f, 0x10, 0x04, 6, 0, 0, 0], // MOVUPS with another ModRM: no operand
      ...[0x90, 0x90, 0x90, 0x90, 0x90],
    );
    const newBytes = Uint8Array.from(oldBytes);
    const bump = (at: number, by: number) =>
      new DataView(newBytes.buffer).setUint32(
        at,
        new DataView(oldBytes.buffer).getUint32(at, true) + by,
        true,
      );
    bump(1, 0x10); // JMP
    bump(7, 0x20); // JE
    bump(14, 0x30); // RIP-relative
    bump(20, 0x40); // inside the LEA's bytes: plain differences
    bump(25, 0x50); // the CALL's operand
    bump(31, 0x60); // the CALL after 0F
    bump(38, 0x70); // MOVUPS's RIP-relative operand
    bump(45, 0x80); // inside the other MOVUPS's bytes: plain differences
    const { diff, words } = split(oldBytes, newBytes);
    assert.deepEqual(words, [[0x50, 0x60], [0x10], [0x20], [0x30, 0x70], []]);
    assert.equal(diff[20], 0x40, "the LEA's bytes stay differences");
    assert.equal(diff[45], 0x80, "the second MOVUPS's bytes stay differences");
    for (const chunk of [1, 2, 5, oldBytes.length])
      assert.deepEqual(apply(oldBytes, diff, words, chunk), newBytes, `chunks of ${chunk}`);
  });

  it("send MOV r32, imm32 operands as words only in a position-dependent executable's pieces", () => {
    const oldBytes = Uint8Array.of(0xbf, 0x00, 0x10, 0x40, 0x00, 0xe8, 1, 0, 0, 0, 0x90, 0x90, 0x90, 0x90);
    const newBytes = Uint8Array.of(0xbf, 0x40, 0x10, 0x40, 0x00, 0xe8, 2, 0, 0, 0, 0x90, 0x90, 0x90, 0x90);
    const absolute = split(oldBytes, newBytes, X86_ABSOLUTE);
    assert.deepEqual(absolute.words, [[1], [], [], [], [0x40]]);
    assert.deepEqual(apply(oldBytes, absolute.diff, absolute.words, 3, X86_ABSOLUTE), newBytes);
    const relative = split(oldBytes, newBytes, X86_RELATIVE);
    assert.deepEqual(relative.words, [[1], [], [], [], []]);
    assert.equal(relative.diff[1], 0x40);
    assert.deepEqual(apply(oldBytes, relative.diff, relative.words, 3, X86_RELATIVE), newBytes);
  });

  it("refuse a piece that needs more words than there are, or a difference byte inside an operand", () => {
    const oldBytes = Uint8Array.of(0xe8, 1, 2, 3, 4, 0xe8, 5, 6, 7, 8);
    const newBytes = Uint8Array.of(0xe8, 2, 2, 3, 4, 0xe8, 6, 6, 7, 8);
    const { diff, words } = split(oldBytes, newBytes);
    const { bytes, starts } = pack(words);
    const short = new X86DiffState();
    short.startWords([0, 4, 8, 8, 8, 8]);
    assert.equal(applyX86Diff(Uint8Array.from(oldBytes), 0, 10, diff, 0, 10, bytes, short), "words");
    const bad = Uint8Array.from(diff);
    bad[2] = 1;
    const state = new X86DiffState();
    state.startWords(starts);
    assert.equal(applyX86Diff(Uint8Array.from(oldBytes), 0, 10, bad, 0, 10, bytes, state), "field");
  });

  it("compress better than byte differences on a relinked executable", () => {
    const { oldFile, newFile, moved } = x86Pair(3 * 1024 * 1024, 4096);
    assert.ok(moved > 1000, `${moved} calls cross the insertion`);
    const pieces = approximatePieces(oldFile, newFile);
    const bytewise = pieceStreams(oldFile, newFile, pieces).diff;
    // The same diff pieces as x86 diff pieces: difference bytes, then the words.
    const { diff, words } = x86PieceStreams(X86_RELATIVE, oldFile, newFile, pieces);
    const size = (b: Uint8Array) => zstd.compress(Buffer.from(b), { compressionLevel: 19 }).length;
    const x86 = size(Buffer.concat([diff, pack(words).bytes]));
    const plain = size(bytewise);
    assert.ok(x86 < plain * 0.9, `x86 diff pieces take ${x86} bytes, byte differences ${plain}`);
  });

  it("leave data without CALL, JMP, 0F or RIP opcode bytes as plain differences", () => {
    const starts = new Set([0xe8, 0xe9, 0x0f, 0x03, 0x0b, 0x23, 0x2b, 0x33, 0x38, 0x39, 0x3a, 0x3b, 0x63]);
    for (const op of [0x80, 0x81, 0x83, 0x85, 0x88, 0x89, 0x8b, 0x8d, 0xc6, 0xc7, 0xf6, 0xff]) starts.add(op);
    const oldBytes = seededBytes(10_000, 3).map((b) => (starts.has(b) ? 0 : b));
    const newBytes = seededBytes(10_000, 4);
    const { diff, words } = split(oldBytes, newBytes);
    assert.deepEqual(words, [[], [], [], [], []]);
    for (let i = 0; i < diff.length; i++) assert.equal(diff[i], (newBytes[i]! - oldBytes[i]!) & 0xff);
  });
});

/** A layer holding one executable (with e_machine set to `machine`, e_type to `type`) and a text file. */
async function layerWith(executable: Uint8Array, machine: number, type = 2): Promise<Uint8Array> {
  const content = Uint8Array.from(executable);
  new DataView(content.buffer).setUint16(16, type, true);
  new DataView(content.buffer).setUint16(18, machine, true);
  return buildTar([
    { path: "usr/bin/app", type: "file", content },
    { path: "usr/share/doc/app/README", type: "file", content: new TextEncoder().encode("an app\n") },
  ]);
}

describe("ref-zstd payloads with x86 diff pieces", () => {
  const { oldFile, newFile } = x86Pair(1536 * 1024, 256);

  for (const [segmentLiteral, type] of [
    [65_536, 2],
    [undefined, 2],
    [65_536, 3],
  ] as const) {
    const kind = type === 2 ? "executable" : "shared object";
    it(`round-trip a changed x86-64 ${kind} as version 3 (segments of ${segmentLiteral ?? "default"} literal bytes)`, async () => {
      const old = await layerWith(oldFile, 62, type);
      const next = await layerWith(newFile, 62, type);
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
