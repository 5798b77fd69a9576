import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { closeSync, existsSync, openSync, readSync, statSync } from "node:fs";
import { describe, it } from "node:test";
import {
  ELF_HEAD,
  encodeFilterTable,
  executableRanges,
  FilterTableError,
  filterRanges,
  isX86Elf,
  MAX_FILTER_RANGES,
  parseFilterTable,
} from "../../delta/filters/payload.js";
import { filterX86 } from "../../delta/filters/x86.js";
import { prng, randomOrMutated } from "../support/random.js";

async function collect(chunks: AsyncIterable<Uint8Array>): Promise<Uint8Array> {
  const parts: Uint8Array[] = [];
  for await (const c of chunks) parts.push(Uint8Array.from(c));
  return new Uint8Array(Buffer.concat(parts));
}

async function* pieces(bytes: Uint8Array, size: number): AsyncGenerator<Uint8Array> {
  for (let at = 0; at < bytes.length; at += size) yield Uint8Array.from(bytes.subarray(at, at + size));
}

describe("zstd-x86 filter table", () => {
  it("encodes ranges as gaps and lengths and parses them back", () => {
    const ranges = [
      { offset: 512, length: 4096 },
      { offset: 5120, length: 1 },
      { offset: 300_000, length: 70_000 },
    ];
    const table = encodeFilterTable(ranges);
    // count 3; gap 512 (80 04), length 4096 (80 20); gap 512 (80 04), length 1; gap 294879, length 70000.
    assert.deepEqual([...table.subarray(0, 8)], [3, 0x80, 0x04, 0x80, 0x20, 0x80, 0x04, 0x01]);
    const parsed = parseFilterTable(Buffer.concat([table, Uint8Array.of(9, 9, 9)]), 400_000);
    assert.deepEqual(parsed, { ranges, tableLength: table.length });
  });

  it("refuses a range past the layer's end, a truncated table and an oversized count, naming the byte", () => {
    const table = encodeFilterTable([{ offset: 10, length: 100 }]);
    assert.throws(
      () => parseFilterTable(table, 50),
      (err: unknown) => {
        assert.ok(err instanceof FilterTableError);
        assert.match(err.message, /range 0 \(100 bytes at 10\) is empty or ends past the layer's 50 bytes/);
        assert.equal(err.offset, 1);
        return true;
      },
    );
    assert.throws(() => parseFilterTable(table.subarray(0, 2), 1000), /ends inside range 0's length/);
    assert.throws(
      () => parseFilterTable(Uint8Array.of(0xff, 0xff, 0xff, 0x7f), 1000),
      new RegExp(`at most ${MAX_FILTER_RANGES}`),
    );
  });

  it("ends every random or mutated table in a result or a FilterTableError", () => {
    const valid = encodeFilterTable([
      { offset: 0, length: 5000 },
      { offset: 9000, length: 123_456 },
    ]);
    for (const [n, bytes] of randomOrMutated(7, valid, 3000)) {
      try {
        const { ranges, tableLength } = parseFilterTable(bytes, 200_000);
        assert.ok(tableLength <= bytes.length);
        let end = 0;
        for (const r of ranges) {
          assert.ok(r.offset >= end && r.length > 0 && r.offset + r.length <= 200_000);
          end = r.offset + r.length;
        }
      } catch (err) {
        assert.ok(err instanceof FilterTableError, `case ${n}: ${String(err)}`);
      }
    }
  });
});

describe("filtering ranges of a stream", () => {
  it("filters exactly the named ranges, each from its own position 0, whatever the chunking", async () => {
    const next = prng(11);
    const bytes = Uint8Array.from({ length: 20_000 }, () => (next() % 4 === 0 ? 0xe8 : next() & 0xff));
    for (let i = 4; i < bytes.length; i += 9) bytes[i] = 0;
    const ranges = [
      { offset: 100, length: 3000 },
      { offset: 3100, length: 7 },
      { offset: 9000, length: 11_000 },
    ];
    const expected = Uint8Array.from(bytes);
    for (const r of ranges) {
      const part = expected.subarray(r.offset, r.offset + r.length);
      filterX86(part, 0, part.length, 0, "encode");
    }
    for (const size of [1, 3, 4096, 20_000]) {
      const encoded = await collect(filterRanges(pieces(bytes, size), ranges, "encode"));
      assert.deepEqual(encoded, expected, `chunks of ${size}`);
      assert.deepEqual(await collect(filterRanges(pieces(encoded, size), ranges, "decode")), bytes);
    }
  });

  it("keeps held bytes when the producer reuses one Buffer for every chunk", async () => {
    const next = prng(5);
    const bytes = Uint8Array.from({ length: 50_000 }, () => (next() % 3 === 0 ? 0xe9 : next() & 0xff));
    for (let i = 4; i < bytes.length; i += 7) bytes[i] = 0xff;
    const ranges = [{ offset: 0, length: bytes.length }];
    const encoded = await collect(filterRanges(pieces(bytes, 4096), ranges, "encode"));
    for (const size of [4093, 4096, 65536]) {
      // Like the zstd inflater with reuseOutput: each chunk overwrites the one before.
      const shared = Buffer.alloc(size);
      async function* reused(): AsyncGenerator<Uint8Array> {
        for (let at = 0; at < encoded.length; at += size) {
          const n = Math.min(size, encoded.length - at);
          shared.set(encoded.subarray(at, at + n));
          yield shared.subarray(0, n);
        }
      }
      assert.deepEqual(await collect(filterRanges(reused(), ranges, "decode")), bytes, `chunks of ${size}`);
    }
  });

  it("recognises x86 and x86-64 ELF headers only", () => {
    const head = new Uint8Array(20);
    head.set([0x7f, 0x45, 0x4c, 0x46, 2, 1]);
    head[18] = 0x3e;
    assert.equal(isX86Elf(head), true);
    head[18] = 0x03;
    assert.equal(isX86Elf(head), true);
    head[18] = 0xb7; // aarch64
    assert.equal(isX86Elf(head), false);
    assert.equal(isX86Elf(head.subarray(0, 19)), false);
  });
});

/** The first ELF_HEAD bytes of a file. */
function headOf(path: string): Uint8Array {
  const head = new Uint8Array(ELF_HEAD);
  const fd = openSync(path, "r");
  try {
    return head.subarray(0, readSync(fd, head, 0, ELF_HEAD, 0));
  } finally {
    closeSync(fd);
  }
}

/** The executable loadable segments as `readelf -lW` (binutils) lists them, merged. */
function readelfCode(path: string, size: number): { offset: number; length: number }[] {
  const out = execFileSync("readelf", ["-lW", path], { encoding: "utf8" });
  const segments = out
    .split("\n")
    .filter((line) => /^\s*LOAD\s/.test(line))
    .map((line) => line.trim().split(/\s+/))
    .filter((f) => f.slice(7, -1).join("").includes("E"))
    .map((f) => ({
      offset: Number.parseInt(f[1]!, 16),
      end: Math.min(size, Number.parseInt(f[1]!, 16) + Number.parseInt(f[4]!, 16)),
    }))
    .filter((s) => s.end > s.offset)
    .sort((a, b) => a.offset - b.offset);
  const merged: { offset: number; length: number }[] = [];
  for (const s of segments) {
    const last = merged.at(-1);
    if (last !== undefined && s.offset <= last.offset + last.length)
      last.length = Math.max(last.length, s.end - last.offset);
    else merged.push({ offset: s.offset, length: s.end - s.offset });
  }
  return merged;
}

describe("executableRanges", () => {
  const binaries = [
    process.execPath,
    "/usr/bin/ls",
    "/usr/bin/xdelta3",
    "/usr/lib/x86_64-linux-gnu/libc.so.6",
  ].filter((p) => existsSync(p) && isX86Elf(headOf(p)));

  it("finds the code segments readelf lists, on this machine's executables and libraries", {
    skip: binaries.length === 0 ? "no x86 ELF files here" : false,
  }, () => {
    for (const path of binaries) {
      const size = statSync(path).size;
      const ranges = executableRanges(headOf(path), size);
      assert.deepEqual(ranges, readelfCode(path, size), path);
      assert.ok(ranges.length > 0 && ranges.every((r) => r.length > 0 && r.offset + r.length <= size), path);
    }
  });

  it("reads ELF32 headers, clips segments to the file, and falls back to the whole file", () => {
    // An ELF32 i386 header with two program headers at 52: a code segment and a data segment.
    const head = new Uint8Array(200);
    const v = new DataView(head.buffer);
    head.set([0x7f, 0x45, 0x4c, 0x46, 1, 1, 1]);
    v.setUint16(18, 3, true);
    v.setUint32(0x1c, 52, true);
    v.setUint16(0x2a, 32, true);
    v.setUint16(0x2c, 2, true);
    const ph = (i: number, flags: number, offset: number, filesz: number) => {
      const at = 52 + i * 32;
      v.setUint32(at, 1, true);
      v.setUint32(at + 4, offset, true);
      v.setUint32(at + 16, filesz, true);
      v.setUint32(at + 24, flags, true);
    };
    ph(0, 5, 4096, 10_000); // R E
    ph(1, 6, 14_096, 500); // RW
    assert.deepEqual(executableRanges(head, 20_000), [{ offset: 4096, length: 10_000 }]);
    // A segment past the file's end is clipped; one that starts past it is dropped.
    assert.deepEqual(executableRanges(head, 8000), [{ offset: 4096, length: 3904 }]);
    assert.deepEqual(executableRanges(head, 4000), []);
    // Program headers beyond the bytes read, or a too-short entry size: the whole file.
    v.setUint16(0x2c, 9, true);
    assert.deepEqual(executableRanges(head, 20_000), [{ offset: 0, length: 20_000 }]);
    v.setUint16(0x2c, 2, true);
    v.setUint16(0x2a, 8, true);
    assert.deepEqual(executableRanges(head, 20_000), [{ offset: 0, length: 20_000 }]);
    assert.deepEqual(executableRanges(head.subarray(0, 40), 20_000), [{ offset: 0, length: 20_000 }]);
  });
});
