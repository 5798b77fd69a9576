/**
 * The VCDIFF encoder: every delta it writes is decoded by our decoder and by the real
 * `xdelta3 -d`, and must give back the target byte for byte; hints, windows, checksums and
 * the application header do what they promise.
 */
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { closeSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync, writeSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, test } from "node:test";
import { decode, decodeBuffer, type VcdiffHeader } from "../../delta/vcdiff/decoder.js";
import { type EncodeOptions, encode, encodeBuffer } from "../../delta/vcdiff/encoder.js";
import {
  Cursor,
  MAGIC,
  VCD_ADLER32,
  VCD_APPHEADER,
  VCD_SOURCE,
  VcdiffError,
} from "../../delta/vcdiff/format.js";
import { MAX_SEGMENT_SPAN, SOURCE_CACHE_PAGES, SOURCE_PAGE_SIZE } from "../../delta/vcdiff/matcher.js";
import { BufferSource, FileSource, type SourceReader } from "../../delta/vcdiff/source.js";
import { prng, randomBytes } from "./corpus.js";

const dir = mkdtempSync(join(tmpdir(), "vcdiff-encoder-"));
after(() => rmSync(dir, { recursive: true, force: true }));
let fileCount = 0;

/** Decodes with the real xdelta3 binary. */
function xdelta3Decode(delta: Uint8Array, sourcePath: string | undefined): Uint8Array {
  const deltaPath = join(dir, `d${fileCount++}.vcdiff`);
  writeFileSync(deltaPath, delta);
  const args = ["-d", "-c", ...(sourcePath ? ["-s", sourcePath] : []), deltaPath];
  return new Uint8Array(
    execFileSync("xdelta3", args, { maxBuffer: 1 << 30, stdio: ["ignore", "pipe", "pipe"] }),
  );
}

function writeTemp(bytes: Uint8Array): string {
  const path = join(dir, `s${fileCount++}.bin`);
  writeFileSync(path, bytes);
  return path;
}

/** Encodes, then checks both decoders give the target back; returns the delta. */
async function roundTrip(
  target: Uint8Array,
  source?: Uint8Array,
  options?: EncodeOptions,
): Promise<Uint8Array> {
  const delta = await encodeBuffer(target, source, options);
  assert.ok(equal(await decodeBuffer(delta, source), target), "our decoder must give back the target");
  const sourcePath = source === undefined ? undefined : writeTemp(source);
  assert.ok(equal(xdelta3Decode(delta, sourcePath), target), "xdelta3 -d must give back the target");
  return delta;
}

function equal(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && Buffer.compare(a, b) === 0;
}

function concat(...parts: Uint8Array[]): Uint8Array {
  return new Uint8Array(Buffer.concat(parts));
}

/** Real text from this machine: the licence texts every Debian system ships. */
function licenceText(): Uint8Array {
  const names = ["GPL-3", "GPL-2", "LGPL-2.1", "Apache-2.0", "Artistic"];
  return concat(...names.map((n) => new Uint8Array(readFileSync(`/usr/share/common-licenses/${n}`))));
}

/** A copy of `bytes` with `count` seeded edits: replaced, inserted and deleted runs of 1–40 bytes. */
function edit(bytes: Uint8Array, seed: number, count: number): Uint8Array {
  const next = prng(seed);
  const parts: Uint8Array[] = [];
  const cuts = Array.from({ length: count }, () => next() % bytes.length).sort((a, b) => a - b);
  let at = 0;
  for (const cut of cuts) {
    if (cut < at) continue;
    parts.push(bytes.subarray(at, cut));
    const len = 1 + (next() % 40);
    const kind = next() % 3;
    if (kind !== 2) parts.push(randomBytes(next(), len)); // replace or insert
    at = kind === 1 ? cut : Math.min(bytes.length, cut + len); // insert keeps, others skip
  }
  parts.push(bytes.subarray(at));
  return concat(...parts);
}

interface WindowInfo {
  indicator: number;
  segmentLength: number;
  segmentPosition: number;
  targetLength: number;
}

/** Walks the windows of a delta (no decoding): indicator, source segment and target length of each. */
function windows(delta: Uint8Array): { headerIndicator: number; windows: WindowInfo[] } {
  assert.deepEqual(delta.subarray(0, 4), MAGIC);
  const c = new Cursor(delta, 4);
  const headerIndicator = c.byte("header indicator");
  if (headerIndicator & VCD_APPHEADER) c.bytes(c.varint("app header length"), "app header");
  const out: WindowInfo[] = [];
  while (c.remaining > 0) {
    const indicator = c.byte("window indicator");
    const segmentLength = indicator & VCD_SOURCE ? c.varint("segment length") : 0;
    const segmentPosition = indicator & VCD_SOURCE ? c.varint("segment position") : 0;
    const deltaLength = c.varint("delta length");
    const start = c.pos;
    const targetLength = c.varint("target length");
    c.pos = start + deltaLength;
    out.push({ indicator, segmentLength, segmentPosition, targetLength });
  }
  return { headerIndicator, windows: out };
}

describe("VCDIFF encoder round trips (our decoder and xdelta3 -d)", () => {
  test("an empty target, with and without a source, is one empty window (as xdelta3 writes it)", async () => {
    const empty = [0xd6, 0xc3, 0xc4, 0x00, 0x00, VCD_ADLER32, 9, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    assert.deepEqual(await roundTrip(new Uint8Array(0)), Uint8Array.from(empty));
    assert.deepEqual(await roundTrip(new Uint8Array(0), licenceText()), Uint8Array.from(empty));
    const noChecksum = await roundTrip(new Uint8Array(0), undefined, { checksum: false });
    assert.deepEqual(noChecksum, Uint8Array.of(0xd6, 0xc3, 0xc4, 0x00, 0x00, 0, 5, 0, 0, 0, 0, 0));
  });

  test("a target identical to its source costs a few bytes per window", async () => {
    const text = licenceText();
    const delta = await roundTrip(text, text);
    assert.ok(delta.length < 40, `identical ${text.length} bytes gave a ${delta.length}-byte delta`);
  });

  test("text without a source shrinks through copies within the window", async () => {
    const text = licenceText();
    const delta = await roundTrip(text, undefined);
    assert.ok(delta.length < text.length * 0.7, `${text.length} bytes of text gave ${delta.length}`);
  });

  test("random bytes without a source cost little more than themselves", async () => {
    const target = randomBytes(7, 300_000);
    const delta = await roundTrip(target, undefined);
    assert.ok(delta.length <= target.length + 64, `${target.length} random bytes gave ${delta.length}`);
  });

  test("an edited copy of random data encodes to the edits, not the data", async () => {
    const source = randomBytes(11, 1_000_000);
    const target = edit(source, 12, 100);
    const delta = await roundTrip(target, source);
    assert.ok(delta.length < 8_000, `100 edits of 1 MB gave a ${delta.length}-byte delta`);
  });

  test("edited text against its original is small", async () => {
    const source = licenceText();
    const target = edit(source, 21, 50);
    const delta = await roundTrip(target, source);
    assert.ok(delta.length < 4_000, `50 edits of text gave a ${delta.length}-byte delta`);
  });

  test("two real ELF executables from this machine", async () => {
    const source = new Uint8Array(readFileSync("/usr/bin/bsdiff"));
    const target = new Uint8Array(readFileSync("/usr/bin/bspatch"));
    const delta = await roundTrip(target, source);
    assert.ok(delta.length < target.length, `${target.length}-byte ELF gave a ${delta.length}-byte delta`);
  });

  test("runs become RUN or overlapping copies and stay tiny", async () => {
    const target = concat(new Uint8Array(100_000).fill(0x41), Uint8Array.of(1, 2, 3), new Uint8Array(5000));
    const delta = await roundTrip(target, undefined);
    assert.ok(delta.length < 40, `two runs gave a ${delta.length}-byte delta`);
  });

  test("small windows: matches, runs and literals across many window boundaries", async () => {
    const source = licenceText();
    const target = concat(edit(source, 31, 80), new Uint8Array(10_000).fill(7), randomBytes(32, 5000));
    const delta = await roundTrip(target, source, { windowSize: 4096 });
    const info = windows(delta);
    assert.equal(info.windows.length, Math.ceil(target.length / 4096));
    assert.equal(
      info.windows.reduce((n, w) => n + w.targetLength, 0),
      target.length,
    );
    for (const w of info.windows) assert.ok(w.targetLength <= 4096);
  });
});

describe("VCDIFF encoder options", () => {
  test("checksums are written by default and can be left out", async () => {
    const source = licenceText();
    const target = edit(source, 41, 20);
    const withSum = await roundTrip(target, source, { windowSize: 65536 });
    const without = await roundTrip(target, source, { windowSize: 65536, checksum: false });
    const a = windows(withSum).windows;
    const b = windows(without).windows;
    assert.ok(a.length > 1);
    assert.ok(a.every((w) => w.indicator & VCD_ADLER32));
    assert.ok(b.every((w) => !(w.indicator & VCD_ADLER32)));
    assert.equal(withSum.length - without.length, 4 * a.length);
  });

  test("a checksummed delta applied to the wrong source fails with a checksum error", async () => {
    const source = licenceText();
    const target = edit(source, 42, 20);
    const delta = await encodeBuffer(target, source);
    const wrong = source.slice();
    wrong[1000] ^= 0xff;
    await assert.rejects(
      decodeBuffer(delta, wrong),
      (e: unknown) => e instanceof VcdiffError && e.code === "CHECKSUM",
    );
  });

  test("the application header is written and read back by our decoder; xdelta3 accepts it", async () => {
    const appHeader = new TextEncoder().encode("deltaship layer sha256:abc");
    const target = licenceText();
    const delta = await roundTrip(target, undefined, { appHeader });
    assert.equal(windows(delta).headerIndicator, VCD_APPHEADER);
    let header: VcdiffHeader | undefined;
    async function* once() {
      yield delta;
    }
    for await (const _ of decode(once(), { onHeader: (h) => (header = h) })) {
    }
    assert.deepEqual(header?.appHeader, appHeader);
  });

  test("invalid options are refused with the reason", async () => {
    const src = licenceText();
    await assert.rejects(encodeBuffer(src, src, { windowSize: 100 }), /windowSize must be/);
    await assert.rejects(
      encodeBuffer(src, src, {
        copies: [
          { targetOffset: 0, length: 100, sourceOffset: 0 },
          { targetOffset: 50, length: 10, sourceOffset: 0 },
        ],
      }),
      /before the previous hint ends/,
    );
    await assert.rejects(
      encodeBuffer(src, src, { copies: [{ targetOffset: 0, length: 100, sourceOffset: src.length - 10 }] }),
      /but the source has/,
    );
    await assert.rejects(
      encodeBuffer(src.subarray(0, 50), src, { copies: [{ targetOffset: 0, length: 100, sourceOffset: 0 }] }),
      /reaches past the end/,
    );
  });
});

describe("VCDIFF encoder hints", () => {
  const block = randomBytes(51, 1 << 20);
  const other = randomBytes(52, 300_000);

  test("a hinted 1 MB identical region costs only a few bytes", async () => {
    const source = concat(other, block);
    const target = block;
    const copies = [{ targetOffset: 0, length: block.length, sourceOffset: other.length }];
    const hinted = await roundTrip(target, source, { copies });
    const unhinted = await roundTrip(target, source, { searchWholeSource: false });
    assert.ok(hinted.length < 40, `the hinted copy cost ${hinted.length} bytes`);
    assert.ok(unhinted.length > block.length, "without hints nor search the region is added as literals");
  });

  test("copy hints between searched stretches give exact output, with literals around them", async () => {
    const source = concat(other, block);
    const target = concat(Uint8Array.of(1, 2, 3), block.subarray(0, 5000), other.subarray(0, 777), block);
    const copies = [
      { targetOffset: 3, length: 5000, sourceOffset: other.length },
      { targetOffset: 5780, length: block.length, sourceOffset: other.length },
    ];
    const delta = await roundTrip(target, source, { copies, windowSize: 65536 });
    const searched = await roundTrip(target, source, { copies, windowSize: 65536, searchWholeSource: true });
    assert.ok(searched.length < delta.length, "searching finds the 777 bytes copied from the source");
  });

  test("search hints find the changed file in its old version and shrink the delta", async () => {
    const oldFile = licenceText();
    const newFile = edit(oldFile, 61, 30);
    const source = concat(other, oldFile);
    const target = concat(randomBytes(62, 1000), newFile);
    const searches = [
      {
        targetOffset: 1000,
        targetLength: newFile.length,
        sourceOffset: other.length,
        sourceLength: oldFile.length,
      },
    ];
    const hinted = await roundTrip(target, source, { searches });
    const unhinted = await roundTrip(target, source, { searchWholeSource: false });
    assert.ok(hinted.length < 4_000, `search hint gave ${hinted.length} bytes`);
    assert.ok(unhinted.length > hinted.length * 5, `without the hint: ${unhinted.length} bytes`);
  });
});

/** A source read through a file, so the encoder pages it instead of holding it. */
describe("VCDIFF encoder with a paged source", () => {
  test("a source larger than the page cache round trips through FileSource", async () => {
    // Real text, repeated with seeded edits, to more than the cache holds so pages are evicted.
    const text = licenceText();
    const pieces: Uint8Array[] = [];
    let size = 0;
    for (let i = 0; size < (SOURCE_CACHE_PAGES + 8) * SOURCE_PAGE_SIZE; i++) {
      const piece = edit(text, 100 + i, 5);
      pieces.push(piece);
      size += piece.length;
    }
    const sourceBytes = concat(...pieces);
    // The target takes every third piece, in reverse order, so reads jump back and forth.
    const targetBytes = concat(...pieces.filter((_, i) => i % 3 === 0).reverse());
    const sourcePath = writeTemp(sourceBytes);
    const source = await FileSource.open(sourcePath);
    const parts: Uint8Array[] = [];
    try {
      for await (const part of encode(targetBytes, source)) parts.push(part);
    } finally {
      await source.close();
    }
    const delta = concat(...parts);
    assert.ok(delta.length < targetBytes.length / 20, `${targetBytes.length} bytes gave ${delta.length}`);
    assert.ok(equal(await decodeBuffer(delta, sourceBytes), targetBytes));
    assert.ok(equal(xdelta3Decode(delta, sourcePath), targetBytes));
  });

  test("copies far apart in a large source split windows so each segment stays within the span limit", async () => {
    // A sparse 3×MAX_SEGMENT_SPAN file with real bytes at three places.
    const text = licenceText().subarray(0, 100_000);
    const sourcePath = join(dir, `sparse${fileCount++}.bin`);
    const far = [0, MAX_SEGMENT_SPAN + 12345, 2 * MAX_SEGMENT_SPAN + 999];
    const fd = openSync(sourcePath, "w");
    for (const at of far) writeSync(fd, text, 0, text.length, at);
    writeSync(fd, Uint8Array.of(0), 0, 1, 3 * MAX_SEGMENT_SPAN - 1);
    closeSync(fd);
    const target = concat(text, text, text, text);
    const copies = [0, 1, 2, 0].map((k, i) => ({
      targetOffset: i * text.length,
      length: text.length,
      sourceOffset: far[k],
    }));
    const source: SourceReader = await FileSource.open(sourcePath);
    const parts: Uint8Array[] = [];
    try {
      for await (const part of encode(target, source, { copies })) parts.push(part);
    } finally {
      await source.close?.();
    }
    const delta = concat(...parts);
    const info = windows(delta).windows;
    assert.equal(info.length, 4, "each far copy starts a new window");
    for (const w of info) assert.ok(w.segmentLength <= MAX_SEGMENT_SPAN);
    assert.deepEqual(
      info.map((w) => w.segmentPosition),
      [0, ...far.slice(1), 0],
    );
    const decoded: Uint8Array[] = [];
    const reader = await FileSource.open(sourcePath);
    async function* once() {
      yield delta;
    }
    try {
      for await (const part of decode(once(), { source: reader })) decoded.push(part);
    } finally {
      await reader.close();
    }
    assert.ok(equal(concat(...decoded), target));
    assert.ok(equal(xdelta3Decode(delta, sourcePath), target));
  });

  test("hints deep into a sparse 5 GiB source read only the hinted ranges and stay exact", async () => {
    const oldFile = licenceText();
    const newFile = edit(oldFile, 81, 20);
    const sourcePath = join(dir, `huge${fileCount++}.bin`);
    const deep = 5 * 2 ** 30 - 3 * oldFile.length; // beyond 2^32: offsets must not wrap
    const fd = openSync(sourcePath, "w");
    writeSync(fd, oldFile, 0, oldFile.length, deep);
    writeSync(fd, oldFile, 0, oldFile.length, 5 * 2 ** 30 - oldFile.length);
    closeSync(fd);
    const target = concat(oldFile.subarray(0, 5000), newFile);
    const copies = [{ targetOffset: 0, length: 5000, sourceOffset: 5 * 2 ** 30 - oldFile.length }];
    const searches = [
      { targetOffset: 5000, targetLength: newFile.length, sourceOffset: deep, sourceLength: oldFile.length },
    ];
    const source = await FileSource.open(sourcePath);
    const parts: Uint8Array[] = [];
    try {
      for await (const part of encode(target, source, { copies, searches })) parts.push(part);
    } finally {
      await source.close();
    }
    const delta = concat(...parts);
    assert.ok(delta.length < 3_000, `hinted 5 GiB source gave a ${delta.length}-byte delta`);
    assert.ok(equal(xdelta3Decode(delta, sourcePath), target));
    const reader = await FileSource.open(sourcePath);
    const decoded: Uint8Array[] = [];
    async function* once() {
      yield delta;
    }
    try {
      for await (const part of decode(once(), { source: reader })) decoded.push(part);
    } finally {
      await reader.close();
    }
    assert.ok(equal(concat(...decoded), target));
  });

  test("the same delta comes out whether the source is a buffer or read in pages, for a small source", async () => {
    const source = licenceText();
    const target = edit(source, 71, 40);
    const fromBuffer = await encodeBuffer(target, source);
    const parts: Uint8Array[] = [];
    const paged: SourceReader = {
      size: source.length,
      read: (p, into, o, n) => new BufferSource(source).read(p, into, o, n),
    };
    for await (const part of encode(target, paged)) parts.push(part);
    assert.deepEqual(concat(...parts), fromBuffer);
  });
});
