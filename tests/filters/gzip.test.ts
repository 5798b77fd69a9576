/**
 * Plain payloads with gzip pieces (`zstd-gz`, `brotli-gz`): the gzip table, the encoder's and the
 * device's stream transforms, the search for files GNU gzip rebuilds, and whole bundles of a
 * first image built and applied byte for byte. The gzip files are made by the real `gzip` binary
 * from texts of /usr/share/common-licenses (by Node's zlib where gzip must NOT rebuild one), and
 * the executables in the bundle test are real files of /usr/bin.
 */
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { brotliCompressSync, brotliDecompressSync, gzipSync } from "node:zlib";
import { BundleError, type LayerPayload, readBundleHead } from "../../delta/bundle/format.js";
import { generateSigningKey, type SigningKey } from "../../delta/bundle/sign.js";
import {
  encodeGzipTable,
  expandGzipPieces,
  findGzipPieces,
  type GzipPiece,
  GzipTableError,
  MAX_GZIP_PIECES,
  parseGzipTable,
  rebuildGzipPieces,
} from "../../delta/filters/gzip.js";
import { parseFilterTable } from "../../delta/filters/payload.js";
import { GzipMismatchError } from "../../delta/refzstd/regzip.js";
import type { TarWriterEntry } from "../../delta/tar/writer.js";
import { buildTar, imageOf, realFiles, writeArchive } from "../bundle/fixtures.js";
import {
  applyFirstImage,
  assertLayerTars,
  buildBundleBetween,
  resignWithPayload,
  withImages,
} from "../support/bundles.js";
import { collect, reusing } from "../support/collect.js";
import { gnuGzip, licence } from "../support/gnu-gzip.js";
import { prng, randomOrMutated, seededBytes } from "../support/random.js";

const scratch = mkdtempSync(join(tmpdir(), "deltaship-gzip-filter-test-"));
after(() => rmSync(scratch, { recursive: true, force: true }));

const gpl3 = licence("GPL-3");
const gpl2 = licence("GPL-2");
const lgpl = licence("LGPL-2.1");
const apache = licence("Apache-2.0");
const gzip = gnuGzip;

async function* inPieces(bytes: Uint8Array, size: number): AsyncGenerator<Uint8Array> {
  for (let at = 0; at < bytes.length; at += size) yield Uint8Array.from(bytes.subarray(at, at + size));
}

/** A byte stream of plain runs and gzip files, and the pieces (with recipes) where gzip rebuilds them. */
function streamWithGzipFiles(plainBetween: number): { bytes: Buffer; pieces: GzipPiece[] } {
  const parts: Uint8Array[] = [];
  const pieces: GzipPiece[] = [];
  let at = 0;
  const add = (bytes: Uint8Array, piece?: Omit<GzipPiece, "offset" | "length">) => {
    if (piece !== undefined) pieces.push({ offset: at, length: bytes.length, ...piece });
    parts.push(bytes);
    at += bytes.length;
  };
  const files: [Buffer, number][] = [
    [gpl3, 9],
    [lgpl, 9],
    [gpl2, 6],
    [apache, 9],
    [Buffer.alloc(0), 9],
  ];
  files.forEach(([text, level], i) => {
    add(seededBytes(i === 2 ? plainBetween : 700 + i, i + 1));
    add(gzip(text, `-${level}`, "-n"), { headerLength: 10, textLength: text.length, level });
  });
  // A zlib-made file is not a piece: it stays plain bytes.
  add(gzipSync(gpl2));
  add(seededBytes(123, 77));
  return { bytes: Buffer.concat(parts), pieces };
}

describe("gzip table", () => {
  it("encodes pieces as gaps, lengths and recipes and parses them back", () => {
    const pieces: GzipPiece[] = [
      { offset: 512, length: 300, headerLength: 10, textLength: 900, level: 9 },
      { offset: 1024, length: 20, headerLength: 12, textLength: 0, level: 6 },
    ];
    const table = encodeGzipTable(pieces);
    // count 2; gap 512 (80 04), length 300 (ac 02), header 10, text 900 (84 07), level 9; gap 212 (d4 01), ...
    assert.deepEqual([...table.subarray(0, 11)], [2, 0x80, 0x04, 0xac, 0x02, 10, 0x84, 0x07, 9, 0xd4, 0x01]);
    assert.deepEqual(parseGzipTable(Buffer.concat([table, Uint8Array.of(1, 2)]), 2000), {
      pieces,
      tableLength: table.length,
    });
  });

  it("refuses pieces past the layer's end, impossible recipes, a truncated table and an oversized count", () => {
    const one = (p: Partial<GzipPiece>) =>
      encodeGzipTable([{ offset: 10, length: 100, headerLength: 10, textLength: 500, level: 9, ...p }]);
    assert.throws(
      () => parseGzipTable(one({}), 50),
      /piece 0 \(100 bytes at 10 .*\) is out of bounds for a 50-byte layer/,
    );
    assert.throws(() => parseGzipTable(one({ level: 0 }), 1000), GzipTableError);
    assert.throws(() => parseGzipTable(one({ headerLength: 9 }), 1000), GzipTableError);
    // 100 bytes cannot hold a 95-byte header and the trailer; 100,000 bytes of output cannot come from 500 of text.
    assert.throws(() => parseGzipTable(one({ headerLength: 95 }), 1000), GzipTableError);
    assert.throws(() => parseGzipTable(one({ length: 100_000 }), 200_000), GzipTableError);
    assert.throws(() => parseGzipTable(one({ textLength: 9 * 1024 * 1024 }), 1000), GzipTableError);
    assert.throws(() => parseGzipTable(one({}).subarray(0, 4), 1000), /ends inside piece 0's text length/);
    assert.throws(
      () => parseGzipTable(Uint8Array.of(0xff, 0xff, 0xff, 0x7f), 1000),
      new RegExp(`at most ${MAX_GZIP_PIECES}`),
    );
  });

  it("ends every random or mutated table in a result or a GzipTableError", () => {
    const valid = encodeGzipTable([
      { offset: 0, length: 5000, headerLength: 10, textLength: 20_000, level: 9 },
      { offset: 9000, length: 40, headerLength: 24, textLength: 3, level: 6 },
    ]);
    for (const [n, bytes] of randomOrMutated(11, valid, 3000)) {
      try {
        const { pieces, tableLength } = parseGzipTable(bytes, 200_000);
        assert.ok(tableLength <= bytes.length);
        let end = 0;
        for (const p of pieces) {
          assert.ok(p.offset >= end && p.length >= p.headerLength + 8 && p.offset + p.length <= 200_000);
          assert.ok(p.level >= 1 && p.level <= 9 && p.headerLength >= 10);
          end = p.offset + p.length;
        }
      } catch (err) {
        assert.ok(err instanceof GzipTableError, `case ${n}: ${String(err)}`);
      }
    }
  });
});

describe("gzip pieces in a stream", () => {
  it("finds the files GNU gzip rebuilds, at their level, and not the zlib-made one or plain bytes", async () => {
    const { bytes, pieces } = streamWithGzipFiles(1000);
    const path = join(scratch, "stream.bin");
    writeFileSync(path, bytes);
    // Candidates: every piece, the zlib-made file, and a range of plain bytes.
    const zlibAt = bytes.indexOf(gzipSync(gpl2));
    const candidates = [
      ...pieces.map((p) => ({ offset: p.offset, length: p.length })),
      { offset: zlibAt, length: gzipSync(gpl2).length },
      { offset: bytes.length - 100, length: 100 },
    ].sort((a, b) => a.offset - b.offset);
    assert.deepEqual(await findGzipPieces(path, candidates, scratch), pieces);
    // Texts over the limit stay gzip files (GPL-3 and LGPL-2.1 are over 20,000 bytes).
    assert.deepEqual(
      await findGzipPieces(path, candidates, scratch, 20_000),
      pieces.filter((p) => p.textLength <= 20_000),
    );
    assert.equal(pieces.filter((p) => p.textLength <= 20_000).length, 3);
  });

  it("sends each piece as header, text and trailer and rebuilds the bytes exactly, in any chunking", async () => {
    // 9 MiB of plain bytes after the third file: more than a batch holds back, so a batch is rebuilt mid-stream.
    const { bytes, pieces } = streamWithGzipFiles(9 * 1024 * 1024);
    const expanded = await collect(expandGzipPieces(inPieces(bytes, 65_536), pieces));
    const textBytes = gpl3.length + lgpl.length + gpl2.length + apache.length;
    const gzipBytes = pieces.reduce((n, p) => n + p.length, 0);
    assert.equal(expanded.length, bytes.length - gzipBytes + textBytes + pieces.length * 18);
    assert.ok(expanded.indexOf(gpl3) > 0 && expanded.indexOf(apache) > 0, "the texts are in the stream");
    for (const size of [1_000_003, 4096, 777]) {
      const rebuilt = await collect(rebuildGzipPieces(reusing(expanded, size), pieces, scratch));
      assert.ok(Buffer.from(rebuilt).equals(bytes), `chunks of ${size}`);
    }
    // Byte by byte through a small stream.
    const small = streamWithGzipFiles(10);
    const smallExpanded = await collect(expandGzipPieces(inPieces(small.bytes, 1), small.pieces));
    const smallRebuilt = await collect(rebuildGzipPieces(inPieces(smallExpanded, 1), small.pieces, scratch));
    assert.ok(Buffer.from(smallRebuilt).equals(small.bytes));
  });

  it("ends every mutated stream in the layer's bytes, other bytes, or a GzipMismatchError", async () => {
    const { bytes, pieces } = streamWithGzipFiles(300);
    const expanded = Buffer.from(await collect(expandGzipPieces(inPieces(bytes, 4096), pieces)));
    const next = prng(23);
    for (let n = 0; n < 40; n++) {
      const mutated = Buffer.from(expanded);
      for (let k = 1 + (next() % 3); k > 0; k--) mutated[next() % mutated.length] = next() & 0xff;
      const cut = n % 4 === 0 ? mutated.subarray(0, next() % mutated.length) : mutated;
      try {
        const out = await collect(rebuildGzipPieces(inPieces(cut, 1 + (next() % 5000)), pieces, scratch));
        // Only mutations of plain bytes, or a cut after the last piece, get through; the layer's
        // size and diff_id checks then refuse them.
        assert.ok(out.length === bytes.length || cut.length < expanded.length, `case ${n}`);
      } catch (err) {
        assert.ok(err instanceof GzipMismatchError, `case ${n}: ${String(err)}`);
      }
    }
  });

  it("refuses a changed text and a stream that ends inside a piece, naming the piece", async () => {
    const { bytes, pieces } = streamWithGzipFiles(500);
    const expanded = Buffer.from(await collect(expandGzipPieces(inPieces(bytes, 4096), pieces)));
    const changed = Buffer.from(expanded);
    const lgplAt = changed.indexOf(lgpl);
    changed[lgplAt + 100] ^= 0x20;
    await assert.rejects(
      collect(rebuildGzipPieces(inPieces(changed, 4096), pieces, scratch)),
      (err: unknown) => {
        assert.ok(err instanceof GzipMismatchError, String(err));
        assert.match(
          err.message,
          /gzip piece 1 \(at byte \d+ of the layer\): gzip -9 of its \d+ bytes of text does not rebuild/,
        );
        return true;
      },
    );
    const cut = expanded.subarray(0, expanded.indexOf(apache) + 10);
    await assert.rejects(
      collect(rebuildGzipPieces(inPieces(cut, 4096), pieces, scratch)),
      /the payload ends before gzip piece 3 \(at byte \d+ of the layer\) is complete/,
    );
  });
});

// ---------------------------------------------------------------------------------------------
// Bundles of a first image: nothing on the device, so every layer is a plain payload.

async function firstImageLayer(): Promise<Uint8Array> {
  const entries: TarWriterEntry[] = [
    ...realFiles("/usr/bin", "usr/bin", { limit: 6, maxFile: 400_000, maxBytes: 1_200_000 }),
    { path: "usr/share/doc/libc6/changelog.Debian.gz", type: "file", content: gzip(gpl3, "-9", "-n") },
    { path: "usr/share/doc/apt/changelog.gz", type: "file", content: gzip(apache, "-9", "-n") },
    { path: "usr/share/man/man1/tool.1.gz", type: "file", content: gzip(gpl2, "-6", "-n") },
    { path: "usr/share/doc/app/notes.gz", type: "file", content: gzipSync(lgpl) },
    { path: "usr/share/doc/app/README", type: "file", content: lgpl },
    { path: "usr/share/doc/app/tiny.gz", type: "file", content: gzip(Buffer.from("x\n"), "-9", "-n") },
  ];
  return buildTar(entries);
}

/** The first-image layer as an archive named `name` (tag `tag`), and a key to sign its bundles with. */
async function firstImage(name: string, tag: string) {
  const tar = await firstImageLayer();
  const to = await writeArchive(join(scratch, `${name}.tar`), imageOf("app", tag, [tar]));
  return { tar, to, key: generateSigningKey() };
}

const applyFirst = (bundle: string, key: SigningKey, dest: string) =>
  applyFirstImage(bundle, key, dest, scratch);

describe("first-image bundles with gzip pieces", () => {
  it("sends the layer's gzip files as text, smaller, and rebuilds the image exactly (Brotli and zstd)", async () => {
    const { tar, to, key } = await firstImage("first", "1");
    const sizes = new Map<string, number>();
    for (const [name, options] of [
      ["brotli-gz", {}],
      ["zstd-gz", { plainCompressor: "zstd" as const }],
      ["brotli-x86", { plainGzip: false }],
    ] as const) {
      const out = join(scratch, `first-${name}.dsb`);
      await buildBundleBetween([], to, { key, out, scratchDir: scratch, ...options });
      const head = await readBundleHead(out);
      const payload = head.manifest.layers[0] as LayerPayload;
      assert.equal(payload.codec, name);
      sizes.set(name, payload.length);
      if (name !== "brotli-x86") {
        // Both tables: the x86 one names the executables, the gzip one the three files gzip rebuilds.
        const bytes = readFileSync(out).subarray(head.payloadsOffset + payload.offset);
        const x86 = parseFilterTable(bytes, tar.length);
        assert.ok(x86.ranges.length > 0, "executables go through the x86 filter");
        const { pieces } = parseGzipTable(bytes.subarray(x86.tableLength), tar.length);
        assert.deepEqual(
          pieces.map((p) => [p.level, p.textLength]),
          [
            [9, gpl3.length],
            [9, apache.length],
            [6, gpl2.length],
          ],
        );
      }
      const dest = join(scratch, `first-${name}-out.tar`);
      await applyFirst(out, key, dest);
      await withImages([dest], ([image]) => assertLayerTars(image!, [tar]));
    }
    assert.ok(sizes.get("brotli-gz")! < sizes.get("brotli-x86")! - 1000, `sizes ${[...sizes]}`);
  });

  it("refuses a signed payload whose text does not rebuild its file, and writes nothing", async () => {
    const { tar, to, key } = await firstImage("first-tampered", "4");
    const out = join(scratch, "first-tampered.dsb");
    await buildBundleBetween([], to, { key, out, scratchDir: scratch });
    // The cloud's own key signs a payload whose Apache licence text lost a letter: only gzip's
    // rebuild can tell (as with a gzip on the device that is not GNU gzip).
    const head = await readBundleHead(out);
    const entry = head.manifest.layers[0] as LayerPayload;
    const payload = readFileSync(out).subarray(
      head.payloadsOffset + entry.offset,
      head.payloadsOffset + entry.offset + entry.length,
    );
    const x86 = parseFilterTable(payload, tar.length);
    const gzipTable = parseGzipTable(payload.subarray(x86.tableLength), tar.length);
    const tables = payload.subarray(0, x86.tableLength + gzipTable.tableLength);
    const stream = Buffer.from(brotliDecompressSync(payload.subarray(tables.length)));
    const at = stream.indexOf(apache);
    assert.ok(at > 0);
    stream[at + 200] = stream[at + 200] === 0x61 ? 0x62 : 0x61;
    resignWithPayload(out, head, Buffer.concat([tables, brotliCompressSync(stream)]), key);
    const dest = join(scratch, "first-tampered-out.tar");
    await assert.rejects(applyFirst(out, key, dest), (err: unknown) => {
      assert.ok(err instanceof BundleError, String(err));
      assert.equal(err.code, "PAYLOAD");
      assert.match(
        err.message,
        /gzip piece 1 \(at byte \d+ of the layer\): gzip -9 of its 11358 bytes of text does not rebuild/,
      );
      return true;
    });
    assert.throws(() => readFileSync(dest), /ENOENT/);
  });

  it("fails with an IO error naming gzip when the device has none, and writes nothing", async () => {
    const { to, key } = await firstImage("first-nogzip", "2");
    const out = join(scratch, "first-nogzip.dsb");
    await buildBundleBetween([], to, { key, out, scratchDir: scratch });
    const dest = join(scratch, "first-nogzip-out.tar");
    const saved = process.env.PATH;
    process.env.PATH = mkdtempSync(join(scratch, "no-gzip-"));
    try {
      await assert.rejects(applyFirst(out, key, dest), (err: unknown) => {
        assert.ok(err instanceof BundleError, String(err));
        assert.equal(err.code, "IO");
        assert.match(err.message, /needs GNU gzip, and `gzip` is not on the PATH/);
        return true;
      });
    } finally {
      process.env.PATH = saved;
    }
    assert.throws(() => readFileSync(dest), /ENOENT/);
  });

  it("keeps the gzip files as they are when the cloud has no gzip (a plain payload, not a failure)", async () => {
    const { to, key } = await firstImage("first-cloud", "3");
    const out = join(scratch, "first-cloud.dsb");
    const saved = process.env.PATH;
    process.env.PATH = mkdtempSync(join(scratch, "no-gzip-"));
    try {
      await buildBundleBetween([], to, { key, out, scratchDir: scratch, compressWorkers: 1 });
    } finally {
      process.env.PATH = saved;
    }
    assert.equal(((await readBundleHead(out)).manifest.layers[0] as LayerPayload).codec, "brotli-x86");
  });
});
