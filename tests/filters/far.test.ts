/**
 * Far copies in plain payloads (`zstd-far`, `brotli-far`): the table, the search for a layer's
 * repeats beyond the compressor's window, the ranges of the other tables without the copied bytes,
 * the device's stream, and whole first-image bundles built and applied byte for byte. The
 * executables are real files of /usr/bin and the gzip files are made by the real `gzip` binary.
 * Minimum distances here are small (a zstd window of 2^17) so that layers stay small; the scenario
 * 1 benchmark measures Brotli's 16 MiB.
 */
import assert from "node:assert/strict";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { brotliCompressSync, constants as zlib } from "node:zlib";
import { decompress } from "zstd-napi";
import { farKeptBytes } from "../../delta/bundle/apply.js";
import { BundleError, type LayerPayload, readBundleHead } from "../../delta/bundle/format.js";
import { generateSigningKey, type SigningKey } from "../../delta/bundle/sign.js";
import {
  clearOfCopies,
  dropCopies,
  encodeFarTable,
  type FarCopy,
  FarCopyError,
  FarTableError,
  findFarCopies,
  insertFarCopies,
  keptRanges,
  MAX_FAR_COPIES,
  packFarTables,
  parseFarTable,
  readFarTables,
  unpackFarTables,
  withoutCopies,
} from "../../delta/filters/far.js";
import { encodeGzipTable, GzipTableError } from "../../delta/filters/gzip.js";
import {
  encodeFilterTable,
  type FilterRange,
  FilterTableError,
  parseFilterTable,
} from "../../delta/filters/payload.js";
import type { TarWriterEntry } from "../../delta/tar/writer.js";
import { readHead } from "../../edge-module/bundle-file.js";
import { buildTar, imageOf, realFiles, writeArchive } from "../bundle/fixtures.js";
import {
  applyFirstImage,
  applyFromImages,
  assertLayerTars,
  buildBundleBetween,
  resignWithPayload,
  withImages,
} from "../support/bundles.js";
import { collect, reusing } from "../support/collect.js";
import { gnuGzip, licence } from "../support/gnu-gzip.js";
import { prng, randomOrMutated, seededBytes } from "../support/random.js";

const scratch = mkdtempSync(join(tmpdir(), "deltaship-far-test-"));
after(() => rmSync(scratch, { recursive: true, force: true }));

/** The layer with its copies' bytes taken out, then put back through the device's side. */
async function roundTrip(bytes: Uint8Array, copies: readonly FarCopy[], chunk: number): Promise<Buffer> {
  const stream = await collect(dropCopies(reusing(bytes, 4096), copies));
  const keep = join(scratch, `keep-${chunk}`);
  const out = await collect(insertFarCopies(reusing(stream, chunk), copies, bytes.length, keep));
  assert.ok(!existsSync(keep), "the kept bytes are removed");
  return out;
}

/** Bytes with repeats: block A, filler, A again, filler, A with a change in its middle, filler. */
function withRepeats(): { bytes: Buffer; a: Buffer; at: number[] } {
  const a = Buffer.from(seededBytes(70_000, 1));
  const changed = Buffer.from(a);
  changed[35_000] ^= 0xff;
  const parts = [a, seededBytes(150_000, 2), a, seededBytes(140_000, 3), changed, seededBytes(9_000, 4)];
  const at: number[] = [];
  let offset = 0;
  for (const part of parts) {
    at.push(offset);
    offset += part.length;
  }
  return { bytes: Buffer.concat(parts), a, at };
}

function writeTemp(name: string, bytes: Uint8Array): string {
  const path = join(scratch, name);
  writeFileSync(path, bytes);
  return path;
}

describe("far copy table", () => {
  it("encodes and parses copies, each distance relative to the one before", () => {
    const copies = [
      { offset: 1000, length: 100, distance: 500 },
      { offset: 1200, length: 64, distance: 500 },
      { offset: 5000, length: 2000, distance: 4000 },
      { offset: 7000, length: 48, distance: 48 },
    ];
    const table = encodeFarTable(copies);
    const bytes = Buffer.concat([table, Buffer.from("rest")]);
    const parsed = parseFarTable(bytes, 8000);
    assert.deepEqual(parsed.copies, copies);
    assert.equal(parsed.tableLength, table.length);
    assert.equal(parsed.copied, 2212);
    // The same distance twice costs one byte: count, then (offset, length, 0) for the second copy.
    assert.equal(table[8], 0);
    assert.deepEqual(parseFarTable(encodeFarTable([]), 0), { copies: [], copied: 0, tableLength: 1 });
  });

  it("refuses copies out of the layer, of nothing, or of bytes not yet written, with the byte offset", () => {
    const table = (copies: FarCopy[]) => {
      // Encoded by hand, as a hostile payload would be: encodeFarTable refuses these.
      const out: number[] = [copies.length];
      let end = 0;
      let previous = 0;
      const varint = (v: number) => {
        for (; v >= 0x80; v = Math.floor(v / 0x80)) out.push((v % 0x80) | 0x80);
        out.push(v);
      };
      for (const c of copies) {
        varint(c.offset - end);
        varint(c.length);
        const delta = c.distance - previous;
        varint(delta >= 0 ? delta * 2 : -delta * 2 - 1);
        previous = c.distance;
        end = c.offset + c.length;
      }
      return Uint8Array.from(out);
    };
    const refused = (copies: FarCopy[], size: number, message: RegExp) =>
      assert.throws(
        () => parseFarTable(table(copies), size),
        (err: unknown) => {
          assert.ok(err instanceof FarTableError, String(err));
          assert.match(err.message, /^far copy table at byte \d+: /);
          assert.match(err.message, message);
          return true;
        },
      );
    refused([{ offset: 100, length: 0, distance: 50 }], 1000, /copy 0 \(0 bytes at 100\) is empty/);
    refused([{ offset: 900, length: 200, distance: 500 }], 1000, /ends past the layer's 1000 bytes/);
    refused([{ offset: 100, length: 60, distance: 50 }], 1000, /reads from 50 bytes back, not bytes written/);
    refused(
      [
        { offset: 100, length: 10, distance: 50 },
        { offset: 120, length: 10, distance: 130 },
      ],
      1000,
      /copy 1 \(10 bytes at 120\) reads from 130 bytes back/,
    );
    assert.throws(() => parseFarTable(Uint8Array.from([2, 5, 5]), 1000), FarTableError);
    const tooMany = new Uint8Array(4);
    tooMany.set([0x81, 0x80, 0x80, 0x01]); // 2^21 + 1
    assert.throws(() => parseFarTable(tooMany, 1000), new RegExp(`at most ${MAX_FAR_COPIES}`));
    assert.throws(() => encodeFarTable([{ offset: 100, length: 60, distance: 50 }]), RangeError);
  });

  it("ends every random or mutated table in copies inside the layer or a FarTableError", () => {
    const valid = encodeFarTable([
      { offset: 300, length: 100, distance: 250 },
      { offset: 900, length: 64, distance: 800 },
    ]);
    for (const [n, bytes] of randomOrMutated(31, valid, 400)) {
      try {
        const { copies } = parseFarTable(bytes, 1000);
        let end = 0;
        for (const c of copies) {
          assert.ok(c.length > 0 && c.offset >= end && c.offset + c.length <= 1000, `case ${n}`);
          assert.ok(c.distance >= c.length && c.distance <= c.offset, `case ${n}`);
          end = c.offset + c.length;
        }
      } catch (err) {
        assert.ok(err instanceof FarTableError, `case ${n}: ${String(err)}`);
      }
    }
  });
});

describe("packed far copy tables", () => {
  const copies = [
    { offset: 1000, length: 100, distance: 500 },
    { offset: 5000, length: 2000, distance: 4000 },
  ];
  // Ranges of the 5,900-byte layer without the 2,100 copied bytes.
  const x86 = [{ offset: 10, length: 400 }];
  const pieces = [{ offset: 2000, length: 300, headerLength: 10, textLength: 900, level: 9 }];

  it("packs the three tables in one Brotli stream and reads them back from a payload", async () => {
    const packed = packFarTables(copies, x86, pieces);
    const path = writeTemp("packed.bin", Buffer.concat([Buffer.from("xx"), packed, Buffer.from("stream")]));
    const read = await readFarTables(path, 2, packed.length + 6, 8000);
    assert.deepEqual(read, { copies, copied: 2100, x86, pieces, tablesLength: packed.length });
    // Small tables pack into fewer than 128 bytes: their length is one varint byte.
    assert.ok(packed[0]! < 0x80);
    assert.deepEqual(unpackFarTables(packed.subarray(1), 8000).copies, copies);
  });

  it("refuses packed tables that run past the payload, do not decode, or hold more than the tables", async () => {
    const packed = packFarTables(copies, x86, pieces);
    const path = writeTemp("packed-bad.bin", packed);
    await assert.rejects(readFarTables(path, 0, packed.length - 1, 8000), /run past the \d+-byte payload/);
    const garbage = Buffer.from(packed);
    garbage[5] ^= 0xff;
    garbage[9] ^= 0x55;
    assert.throws(() => unpackFarTables(garbage.subarray(1), 8000), FarTableError);
    const extra = brotliCompressSync(
      Buffer.concat([
        encodeFarTable(copies),
        encodeFilterTable(x86),
        encodeGzipTable(pieces),
        Buffer.from([0]),
      ]),
    );
    assert.throws(() => unpackFarTables(extra, 8000), /1 bytes follow the gzip table/);
    // The x86 and gzip tables are checked against the layer without the copied bytes.
    assert.throws(
      () => unpackFarTables(packFarTables(copies, [{ offset: 5000, length: 901 }], []).subarray(1), 8000),
      /ends past the layer's 5900 bytes/,
    );
  });

  it("ends every random or mutated packed table in tables or a table error", () => {
    const valid = packFarTables(copies, x86, pieces).subarray(1);
    for (const [n, bytes] of randomOrMutated(37, valid, 200)) {
      try {
        const tables = unpackFarTables(bytes, 8000);
        assert.ok(tables.copied <= 8000, `case ${n}`);
      } catch (err) {
        assert.ok(
          err instanceof FarTableError || err instanceof FilterTableError || err instanceof GzipTableError,
          `case ${n}: ${String(err)}`,
        );
      }
    }
  });
});

describe("finding far copies", () => {
  it("finds repeats farther back than the minimum distance, exactly, and not nearer ones", () => {
    const { bytes, a, at } = withRepeats();
    const path = writeTemp("repeats.bin", bytes);
    const copies = findFarCopies(path, bytes.length, { minDistance: 200_000 });
    for (const c of copies) {
      const here = bytes.subarray(c.offset, c.offset + c.length);
      assert.ok(here.equals(bytes.subarray(c.offset - c.distance, c.offset - c.distance + c.length)));
      assert.ok(c.distance >= 200_000 && c.length >= 48);
    }
    // The second A is 220,000 bytes after the first: one copy of all of it (the random filler
    // around it matches nothing). The changed A is 210,000 after the second: two copies around the change.
    assert.deepEqual(
      copies.map((c) => [c.offset, c.length, c.distance]),
      [
        [at[2]!, a.length, at[2]!],
        [at[4]!, 35_000, at[4]! - at[2]!],
        [at[4]! + 35_001, 34_999, at[4]! - at[2]!],
      ],
    );
    // With a window that reaches the repeats, there is nothing to copy.
    assert.deepEqual(findFarCopies(path, bytes.length, { minDistance: 1 << 20 }), []);
  });

  it("never cuts into a range that must stay whole: covers it all or stays out", () => {
    const { bytes, a, at } = withRepeats();
    const path = writeTemp("repeats-whole.bin", bytes);
    // One range inside the second A (covered whole), one across its start, one across its end.
    const whole = [
      { offset: at[2]! - 100, length: 300 },
      { offset: at[2]! + 1000, length: 5000 },
      { offset: at[2]! + a.length - 200, length: 400 },
    ];
    const copies = findFarCopies(path, bytes.length, { minDistance: 200_000, whole });
    const first = copies[0]!;
    assert.equal(first.offset, at[2]! + 200);
    assert.equal(first.offset + first.length, at[2]! + a.length - 200);
    for (const c of copies) {
      for (const w of whole) {
        const inside = c.offset <= w.offset && w.offset + w.length <= c.offset + c.length;
        const apart = c.offset + c.length <= w.offset || w.offset + w.length <= c.offset;
        assert.ok(inside || apart, `copy ${JSON.stringify(c)} cuts ${JSON.stringify(w)}`);
      }
    }
  });

  it("maps other tables' ranges to the stream without the copies, cut or left out whole", () => {
    const next = prng(7);
    for (let n = 0; n < 200; n++) {
      const size = 2000;
      const copies: FarCopy[] = [];
      for (let at = next() % 100; at < size - 10; at += 10 + (next() % 200)) {
        const length = 1 + (next() % 150);
        if (at + length > size) break;
        copies.push({ offset: at, length, distance: at });
        at += length;
      }
      const ranges: FilterRange[] = [];
      for (let at = next() % 50; at < size - 5; at += 1 + (next() % 120)) {
        const length = 1 + (next() % 80);
        if (at + length > size) break;
        ranges.push({ offset: at, length });
        at += length;
      }
      // Brute force: a map of layer positions outside copies to stream positions.
      const inStream = new Map<number, number>();
      let s = 0;
      for (let p = 0; p < size; p++) {
        if (!copies.some((c) => c.offset <= p && p < c.offset + c.length)) inStream.set(p, s++);
      }
      const expected: FilterRange[] = [];
      const expectedWhole: FilterRange[] = [];
      for (const r of ranges) {
        let run: FilterRange | undefined;
        const runs: FilterRange[] = [];
        for (let p = r.offset; p < r.offset + r.length; p++) {
          const at = inStream.get(p);
          if (at === undefined) run = undefined;
          else if (run !== undefined && run.offset + run.length === at)
            run = { offset: run.offset, length: run.length + 1 };
          else run = { offset: at, length: 1 };
          if (run !== undefined) {
            if (runs.length > 0 && runs.at(-1)!.offset === run.offset) runs[runs.length - 1] = run;
            else runs.push(run);
          }
        }
        expected.push(...runs);
        if (runs.length === 1 && runs[0]!.length === r.length) expectedWhole.push(runs[0]!);
      }
      assert.deepEqual(withoutCopies(ranges, copies, false), expected, `case ${n}`);
      assert.deepEqual(withoutCopies(ranges, copies, true), expectedWhole, `case ${n}`);
      assert.deepEqual(
        clearOfCopies(ranges, copies),
        ranges.filter(
          (r) => !copies.some((c) => c.offset < r.offset + r.length && r.offset < c.offset + c.length),
        ),
        `case ${n}`,
      );
    }
  });
});

describe("far copies in a stream", () => {
  it("rebuilds the layer exactly in any chunking, copies that read other copies' output included", async () => {
    const { bytes } = withRepeats();
    const copies = findFarCopies(writeTemp("stream.bin", bytes), bytes.length, { minDistance: 100_000 });
    assert.ok(copies.length >= 3);
    // A third repeat that reads the changed A's copied bytes, and runs back to back.
    const tail = bytes.subarray(bytes.length - 80_000, bytes.length - 9_000);
    const longer = Buffer.concat([bytes, seededBytes(120_000, 9), tail, tail.subarray(0, 100)]);
    const more = findFarCopies(writeTemp("stream-longer.bin", longer), longer.length, {
      minDistance: 100_000,
    });
    assert.ok(more.length > copies.length);
    for (const chunk of [1_048_576, 65_536, 4093, 61, 1]) {
      const sample = chunk === 1 ? longer.subarray(0, 30_000) : longer;
      const sampleCopies = chunk === 1 ? [] : more;
      const rebuilt = await roundTrip(sample, sampleCopies, chunk);
      assert.ok(rebuilt.equals(sample), `chunks of ${chunk}`);
    }
    assert.ok((await roundTrip(longer, [], 1 << 20)).equals(longer));
  });

  it("refuses a stream longer or shorter than the layer with its copies (FarCopyError)", async () => {
    const { bytes } = withRepeats();
    const copies = findFarCopies(writeTemp("short.bin", bytes), bytes.length, { minDistance: 100_000 });
    const stream = await collect(dropCopies(reusing(bytes, 4096), copies));
    const run = (s: Uint8Array) =>
      collect(insertFarCopies(reusing(s, 65_536), copies, bytes.length, join(scratch, "keep-bad")));
    await assert.rejects(run(stream.subarray(0, stream.length - 1)), (err: unknown) => {
      assert.ok(err instanceof FarCopyError, String(err));
      assert.match(
        err.message,
        new RegExp(`ends at byte ${bytes.length - 1} of the layer's ${bytes.length}`),
      );
      return true;
    });
    await assert.rejects(run(Buffer.concat([stream, Buffer.from([1])])), /holds more than the \d+ bytes/);
    // A stream that ends before a copy's place never reaches it.
    await assert.rejects(run(stream.subarray(0, 1000)), FarCopyError);
    assert.ok(!existsSync(join(scratch, "keep-bad")));
  });
});

// ---------------------------------------------------------------------------------------------
// Bundles of a first image: far copies beside the x86 filter and gzip files sent as text.

/**
 * A layer whose executables and gzip files repeat farther apart than 2^17 bytes: the same
 * executables again under another folder, a gzip changelog copied to a second package, and
 * random filler between them that nothing can compress.
 */
function repeatingLayer(): { tar: Promise<Uint8Array>; repeated: number } {
  const tools = realFiles("/usr/bin", "usr/bin", { limit: 4, maxFile: 300_000, maxBytes: 600_000 });
  const changelog = gnuGzip(licence("GPL-3"), "-9", "-n");
  const entries: TarWriterEntry[] = [
    ...tools,
    { path: "usr/share/doc/a/changelog.gz", type: "file", content: changelog },
    { path: "usr/share/doc/b/man.1.gz", type: "file", content: gnuGzip(licence("GPL-2"), "-6", "-n") },
    { path: "opt/data/filler", type: "file", content: seededBytes(300_000, 5) },
    ...tools.map((t) => ({ ...t, path: t.path.replace("usr/bin/", "opt/copy/bin/") })),
    { path: "usr/share/doc/c/changelog.gz", type: "file", content: changelog },
    { path: "usr/share/doc/c/NEWS.gz", type: "file", content: gnuGzip(licence("Apache-2.0"), "-9", "-n") },
  ];
  const contentOf = (e: TarWriterEntry) => (e.type === "file" ? (e.content?.length ?? 0) : 0);
  return { tar: buildTar(entries), repeated: tools.reduce((n, t) => n + contentOf(t), 0) + changelog.length };
}

async function repeatingImage(name: string) {
  const layer = repeatingLayer();
  const tar = await layer.tar;
  const to = await writeArchive(join(scratch, `${name}.tar`), imageOf("far", name, [tar]));
  return { tar, repeated: layer.repeated, to, key: generateSigningKey() };
}

const applyFirst = (bundle: string, key: SigningKey, dest: string) =>
  applyFirstImage(bundle, key, dest, scratch);

/** zstd with a 2^17 window: far copies reach what zstd cannot. */
const SMALL_WINDOW = {
  plainCompressor: "zstd" as const,
  zstdLevel: 19,
  zstdWindowLog: 17,
  compressWorkers: 1,
};

/** The payload of a one-layer bundle, with its tables unpacked. */
async function tablesOf(bundle: string, layerSize: number) {
  const head = await readBundleHead(bundle);
  const entry = head.manifest.layers[0] as LayerPayload;
  const start = head.payloadsOffset + entry.offset;
  const payload = readFileSync(bundle).subarray(start, start + entry.length);
  const tables = await readFarTables(bundle, start, entry.length, layerSize);
  return { head, entry, payload, tables, stream: payload.subarray(tables.tablesLength) };
}

/** Packed tables whose far table is `far` as it is (maybe malformed), then empty x86 and gzip tables. */
function packedRaw(far: Uint8Array): Buffer {
  const packed = brotliCompressSync(Buffer.concat([far, encodeFilterTable([]), encodeGzipTable([])]));
  return Buffer.concat([Uint8Array.from([(packed.length & 0x7f) | 0x80, packed.length >> 7]), packed]);
}

describe("first-image bundles with far copies", () => {
  it("copies the repeats, keeps the x86 and gzip tables right beside them, and rebuilds the image exactly", async () => {
    const { tar, repeated, to, key } = await repeatingImage("first");
    const out = join(scratch, "first-far.dsb");
    await buildBundleBetween([], to, { key, out, scratchDir: scratch, ...SMALL_WINDOW });
    const { head, entry, tables: far } = await tablesOf(out, tar.length);
    assert.equal(entry.codec, "zstd-far");
    // The second copies of the executables and of the changelog are copies, not stream bytes.
    assert.ok(repeated > 100_000);
    assert.ok(far.copied >= repeated, `copied ${far.copied} of ${repeated} repeated bytes`);
    assert.ok(far.x86.length > 0, "the first executables still go through the x86 filter");
    // The changelog copied whole is not a gzip piece; the other three files are.
    assert.deepEqual(
      far.pieces.map((p) => p.textLength),
      [licence("GPL-3").length, licence("GPL-2").length, licence("Apache-2.0").length],
    );
    // The scratch the device needs counts the bytes kept for the copies (both the library's
    // check and the edge module's).
    const kept = keptRanges(far.copies).keptBytes;
    assert.ok(kept > 100_000 && kept <= far.copied);
    assert.equal(await farKeptBytes(out, head), kept);
    assert.equal((await readHead(out)).scratchBytes, kept);
    const dest = join(scratch, "first-far-out.tar");
    await applyFromImages({
      bundle: out,
      trust: [key],
      from: [],
      dest: `docker-archive:${dest}`,
      scratchDir: scratch,
    });
    await withImages([dest], ([image]) => assertLayerTars(image!, [tar]));

    // Without far copies the same layer costs more: zstd's window cannot reach the repeats.
    const without = join(scratch, "first-nofar.dsb");
    await buildBundleBetween([], to, {
      key,
      out: without,
      scratchDir: scratch,
      ...SMALL_WINDOW,
      plainFarCopies: false,
    });
    const withoutHead = await readBundleHead(without);
    const plain = withoutHead.manifest.layers[0] as LayerPayload;
    assert.equal(plain.codec, "zstd-gz");
    // There, both copies of each executable are filtered; with far copies only the first.
    const plainX86 = parseFilterTable(
      readFileSync(without).subarray(withoutHead.payloadsOffset + plain.offset),
      tar.length,
    );
    assert.equal(plainX86.ranges.length, 2 * far.x86.length);
    assert.ok(entry.length < plain.length * 0.9, `far ${entry.length} bytes, without ${plain.length}`);
    assert.equal(await farKeptBytes(without, withoutHead), 0);
  });

  it("applies a brotli-far payload (Brotli stream under the same tables)", async () => {
    const { tar, to, key } = await repeatingImage("brotli");
    const out = join(scratch, "first-brotli.dsb");
    await buildBundleBetween([], to, { key, out, scratchDir: scratch, ...SMALL_WINDOW });
    const { head, payload, stream, tables } = await tablesOf(out, tar.length);
    // The same tables over a Brotli stream of the same bytes (quality 5 keeps the test quick;
    // the encoder's own Brotli needs a layer past its 16 MiB window to find far copies).
    const brotli = brotliCompressSync(decompress(stream), { params: { [zlib.BROTLI_PARAM_QUALITY]: 5 } });
    resignWithPayload(
      out,
      head,
      Buffer.concat([payload.subarray(0, tables.tablesLength), brotli]),
      key,
      "brotli-far",
    );
    const dest = join(scratch, "first-brotli-out.tar");
    await applyFirst(out, key, dest);
    await withImages([dest], ([image]) => assertLayerTars(image!, [tar]));
  });

  it("refuses a signed payload whose far copy reads the wrong bytes or whose stream is cut, and writes nothing", async () => {
    const { tar, to, key } = await repeatingImage("tampered");
    const out = join(scratch, "first-tampered.dsb");
    await buildBundleBetween([], to, { key, out, scratchDir: scratch, ...SMALL_WINDOW });
    const { head, tables: far, stream } = await tablesOf(out, tar.length);
    const withCopies = (copies: FarCopy[]) =>
      Buffer.concat([packFarTables(copies, far.x86, far.pieces), stream]);
    // One copy reads one byte farther back: the layer is rebuilt, but not the one signed for.
    const moved = far.copies.map((c, i) => (i === 0 ? { ...c, distance: c.distance + 1 } : c));
    resignWithPayload(out, head, withCopies(moved), key);
    const dest = join(scratch, "first-tampered-out.tar");
    await assert.rejects(applyFirst(out, key, dest), (err: unknown) => {
      assert.ok(err instanceof BundleError, String(err));
      assert.equal(err.code, "DIGEST");
      return true;
    });
    assert.ok(!existsSync(dest));
    // A table that copies more bytes than the stream leaves room for: the stream is too long.
    const longer = far.copies.map((c, i) =>
      i === far.copies.length - 1 ? { ...c, length: c.length + 1 } : c,
    );
    resignWithPayload(out, head, withCopies(longer), key);
    await assert.rejects(applyFirst(out, key, dest), (err: unknown) => {
      assert.ok(err instanceof BundleError, String(err));
      assert.equal(err.code, "PAYLOAD");
      return true;
    });
    // A malformed table: PAYLOAD naming the table.
    resignWithPayload(out, head, Buffer.concat([packedRaw(Uint8Array.from([1, 5, 0, 0])), stream]), key);
    await assert.rejects(applyFirst(out, key, dest), (err: unknown) => {
      assert.ok(err instanceof BundleError, String(err));
      assert.equal(err.code, "PAYLOAD");
      assert.match(err.message, /far copy table at byte \d+: copy 0 \(0 bytes at 5\) is empty/);
      return true;
    });
    assert.ok(!existsSync(dest));
  });

  it("keeps the codec asked for: zstd-gz has no far copies, zstd-far has them", async () => {
    const { to, key } = await repeatingImage("asked");
    for (const codec of ["zstd-gz", "zstd-far"] as const) {
      const out = join(scratch, `asked-${codec}.dsb`);
      await buildBundleBetween([], to, { key, out, scratchDir: scratch, ...SMALL_WINDOW, codec });
      assert.equal(((await readBundleHead(out)).manifest.layers[0] as LayerPayload).codec, codec);
    }
  });
});
