import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { describe, it } from "node:test";
import { compress } from "zstd-napi";
import { filterX86, X86Stream } from "../../delta/filters/x86.js";
import { prng } from "../support/random.js";

/** Real x86-64 code from this machine: the C library and the Node.js executable running the test. */
const LIBC = "/usr/lib/x86_64-linux-gnu/libc.so.6";

function filtered(bytes: Uint8Array, direction: "encode" | "decode", position = 0): Uint8Array {
  const copy = Uint8Array.from(bytes);
  filterX86(copy, 0, copy.length, position, direction);
  return copy;
}

/** Runs the streaming filter over `bytes` cut into pieces of the given (cycled) sizes. */
function streamed(input: Uint8Array, direction: "encode" | "decode", sizes: readonly number[]): Uint8Array {
  const bytes = Uint8Array.from(input);
  const stream = new X86Stream(direction, bytes.length);
  const out = new Uint8Array(bytes.length);
  let at = 0;
  let written = 0;
  for (let k = 0; at < bytes.length; k++) {
    const n = Math.min(sizes[k % sizes.length]!, bytes.length - at);
    const result = stream.push(bytes.subarray(at, at + n));
    out.set(result, written);
    written += result.length;
    at += n;
  }
  assert.equal(written, bytes.length);
  return out;
}

/** Seeded bytes, so failures reproduce. */
function randomBytes(n: number, seed: number): Uint8Array {
  const next = prng(seed);
  return Uint8Array.from({ length: n }, () => next() & 0xff);
}

describe("x86 branch filter", () => {
  it("turns small CALL and JMP displacements into absolute positions and leaves the rest", () => {
    const input = Uint8Array.of(
      // 0: CALL +0x10 → target 0x15
      0xe8,
      0x10,
      0x00,
      0x00,
      0x00,
      // 5: NOP
      0x90,
      // 6: JMP −3 → target 6 + 5 − 3 = 8
      0xe9,
      0xfd,
      0xff,
      0xff,
      0xff,
      // 11: CALL with a displacement beyond ±16 MiB: kept
      0xe8,
      0x00,
      0x00,
      0x00,
      0x12,
      // 16: an opcode whose operand would run past the end: kept
      0xe8,
      0x01,
      0x00,
    );
    const expected = Uint8Array.of(
      0xe8,
      0x15,
      0x00,
      0x00,
      0x00,
      0x90,
      0xe9,
      0x08,
      0x00,
      0x00,
      0x00,
      0xe8,
      0x00,
      0x00,
      0x00,
      0x12,
      0xe8,
      0x01,
      0x00,
    );
    assert.deepEqual(filtered(input, "encode"), expected);
    assert.deepEqual(filtered(expected, "decode"), input);
  });

  it("counts positions from the given start, wrapping inside the 25-bit ring with sign extension", () => {
    // Position 0xFFFFF0 + 5 pushes +0x10 past 2^24: the result is sign-extended (top byte 0xFF).
    const input = Uint8Array.of(0xe8, 0x10, 0x00, 0x00, 0x00);
    const out = filtered(input, "encode", 0xfffff0);
    const value = (0x10 + 0xfffff0 + 5) & 0x1ffffff;
    const signed = value & 0x1000000 ? value | ~0x1ffffff : value;
    assert.deepEqual(
      out,
      Uint8Array.of(
        0xe8,
        signed & 0xff,
        (signed >>> 8) & 0xff,
        (signed >>> 16) & 0xff,
        (signed >>> 24) & 0xff,
      ),
    );
    assert.equal(out[4], 0xff);
    assert.deepEqual(filtered(out, "decode", 0xfffff0), input);
  });

  it("round-trips the C library byte for byte, whole and in pieces of any size", () => {
    const libc = new Uint8Array(readFileSync(LIBC));
    const encoded = filtered(libc, "encode");
    assert.notDeepEqual(encoded, libc);
    assert.deepEqual(filtered(encoded, "decode"), libc);
    for (const sizes of [[1], [3, 7, 4096], [65536], [5, 1, 1, 1, 1, 9999]]) {
      // One-byte pieces cost a copy per byte: a 20 KB head is enough to cross every boundary case.
      const head = libc.subarray(0, sizes[0] === 1 ? 20000 : libc.length);
      assert.deepEqual(
        streamed(head, "encode", sizes),
        filtered(head, "encode"),
        `pieces ${sizes.join(",")}`,
      );
      assert.deepEqual(
        streamed(filtered(head, "encode"), "decode", sizes),
        head,
        `pieces ${sizes.join(",")}`,
      );
    }
  });

  it("round-trips random bytes dense in opcodes", () => {
    for (let seed = 1; seed <= 50; seed++) {
      const bytes = randomBytes(3000, seed);
      // Plant opcodes and 0x00/0xFF top bytes so every branch of the transform runs.
      for (let i = 0; i < bytes.length; i += 7) bytes[i] = seed % 2 === 0 ? 0xe8 : 0xe9;
      for (let i = 4; i < bytes.length; i += 11) bytes[i] = seed % 3 === 0 ? 0xff : 0x00;
      const encoded = filtered(bytes, "encode", seed * 1000);
      assert.deepEqual(filtered(encoded, "decode", seed * 1000), bytes, `seed ${seed}`);
      assert.deepEqual(streamed(bytes, "encode", [seed, 13]), filtered(bytes, "encode"), `seed ${seed}`);
    }
  });

  it("makes x86-64 code compress smaller with zstd", () => {
    const libc = readFileSync(LIBC);
    const plain = compress(libc, { compressionLevel: 9 }).length;
    const withFilter = compress(Buffer.from(filtered(libc, "encode")), { compressionLevel: 9 }).length;
    assert.ok(withFilter < plain * 0.97, `filtered ${withFilter} bytes vs plain ${plain} bytes`);
  });

  it("refuses more bytes than the range it was made for", () => {
    const stream = new X86Stream("decode", 4);
    assert.throws(() => stream.push(new Uint8Array(5)), /range of 4 bytes was given 1 more/);
  });
});
