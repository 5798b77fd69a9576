import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { linkSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { decodeRefZstd } from "../../delta/refzstd/decoder.js";
import { encodeRefZstd } from "../../delta/refzstd/encoder.js";
import { REFZSTD_MAGIC, REFZSTD_VERSION_SPLIT, RefZstdError } from "../../delta/refzstd/format.js";
import { headerRanges, headerSize, TAR_HEADER_BLOCK } from "../../delta/refzstd/tarsplit.js";
import { listTar } from "../../delta/tar/reader.js";
import { buildTar, type TarWriterEntry } from "../../delta/tar/writer.js";
import { BufferSource } from "../../delta/vcdiff/source.js";
import { collect } from "../support/collect.js";
import { segmentTables, storedSegments, withSegments } from "../support/refzstd-tables.js";
import { hintsFor } from "./hints.js";

const dir = mkdtempSync(join(tmpdir(), "tarsplit-"));
after(() => rmSync(dir, { recursive: true, force: true }));

/** Header ranges as our tar reader sees them: each entry's header blocks (with PAX or long-name data), then the tar's end. */
async function readerRanges(tar: Uint8Array): Promise<number[]> {
  const { entries } = await listTar(
    (async function* () {
      yield tar;
    })(),
  );
  const ranges: number[] = [];
  const add = (start: number, end: number) => {
    if (end <= start) return;
    if (ranges.length > 0 && ranges[ranges.length - 1] === start) ranges[ranges.length - 1] = end;
    else ranges.push(start, end);
  };
  for (const e of entries) add(e.headerOffset, e.dataOffset);
  add(entries.length > 0 ? entries[entries.length - 1]!.endOffset : 0, tar.length);
  return ranges;
}

function walkRanges(tar: Uint8Array): Promise<number[]> {
  return headerRanges(tar.length, (position, into, length) => {
    into.set(tar.subarray(position, position + length));
  });
}

/** A tree with long names, links, an empty file and a directory, archived by GNU tar in `format`. */
function gnuTar(format: "gnu" | "pax"): Uint8Array {
  const root = join(dir, `tree-${format}`);
  const deep = join(root, "a".repeat(60), "b".repeat(60));
  mkdirSync(deep, { recursive: true });
  writeFileSync(join(deep, `${"c".repeat(80)}.txt`), "long name\n".repeat(300));
  writeFileSync(join(root, "empty"), "");
  writeFileSync(join(root, "data.bin"), Buffer.alloc(70_000, 7));
  linkSync(join(root, "data.bin"), join(root, "hard"));
  symlinkSync(`${"l".repeat(120)}`, join(root, "symlink"));
  const out = join(dir, `tree-${format}.tar`);
  execFileSync("tar", [`--format=${format}`, "--sort=name", "-C", root, "-cf", out, "."]);
  return readFileSync(out);
}

/** `count` new files of JavaScript-like text under node_modules/, each with its own header. */
function newPackages(count: number): TarWriterEntry[] {
  const out: TarWriterEntry[] = [];
  for (let i = 0; i < count; i++) {
    const text = `'use strict';\nmodule.exports = function pkg${i}(a, b) {\n  return a * ${i} + b;\n};\n`;
    out.push({
      path: `app/node_modules/pkg-${i % 17}/lib/${i}/index.js`,
      type: "file",
      content: Buffer.from(text.repeat(1 + (i % 5))),
    });
  }
  return out;
}

describe("the tar walk of ref-zstd version 4", () => {
  it("reads octal and GNU base-256 size fields", () => {
    const block = new Uint8Array(TAR_HEADER_BLOCK);
    block.set(Buffer.from("00000001750\0"), 124);
    assert.equal(headerSize(block), 0o1750);
    block.fill(0, 124, 136);
    block.set(Buffer.from("  1750 \0"), 124);
    assert.equal(headerSize(block), 0o1750);
    block.fill(0, 124, 136);
    block[124] = 0x80;
    block[131] = 0x02; // 2 × 2^32
    assert.equal(headerSize(block), 2 * 2 ** 32);
  });

  for (const format of ["gnu", "pax"] as const) {
    it(`finds the header blocks our tar reader finds, in a GNU tar archive (--format=${format})`, async () => {
      const tar = gnuTar(format);
      assert.deepEqual(await walkRanges(tar), await readerRanges(tar));
    });
  }

  it("finds them in our writer's tars, PAX headers for long names included", async () => {
    const tar = await buildTar([
      { path: "app", type: "directory" },
      { path: `app/${"x".repeat(150)}.js`, type: "file", content: Buffer.from("x\n".repeat(1000)) },
      ...newPackages(20),
    ]);
    assert.deepEqual(await walkRanges(tar), await readerRanges(tar));
  });

  it("decides something for bytes that are no tar, and reads only header blocks", async () => {
    const noise = Uint8Array.from({ length: 10_000 }, (_, i) => (i * 7919) % 251);
    const ranges = await walkRanges(noise);
    assert.ok(ranges.length >= 2 && ranges[0] === 0);
    let reads = 0;
    await headerRanges(2 ** 40, (_position, into, length) => {
      reads++;
      // A header block whose size field (base-256) says 1 TiB: the rest is data, never read.
      into.fill(0, 0, length);
      into[124] = 0x80;
      into[130] = 1; // base-256: 2^40
      into[156] = 0x30;
    });
    assert.equal(reads, 1);
  });
});

describe("ref-zstd version 4 payloads", () => {
  const licences = ["Apache-2.0", "GPL-3", "LGPL-2.1", "MPL-2.0"].map((name) => ({
    path: `usr/share/licenses/${name}`,
    type: "file" as const,
    content: readFileSync(`/usr/share/common-licenses/${name}`),
  }));
  const oldLayer = buildTar([...licences, ...newPackages(40).map((e) => ({ ...e, path: `old/${e.path}` }))]);
  const newLayer = buildTar([...licences, ...newPackages(600)]);

  async function encode(splitHeaders: boolean, segmentLiteral?: number): Promise<Buffer> {
    const next = await newLayer;
    const old = await oldLayer;
    return collect(
      encodeRefZstd(new BufferSource(next), new BufferSource(old), {
        ...hintsFor(next, [old]),
        level: 19,
        fill: [{ sourceOffset: 0, length: old.length }],
        splitHeaders,
        ...(segmentLiteral !== undefined ? { segmentLiteral, reference: 2 * segmentLiteral } : {}),
      }),
    );
  }

  for (const segmentLiteral of [undefined, 200_000]) {
    it(`sends a new app's headers apart and decodes byte for byte (segments of ${segmentLiteral ?? "default"} literal bytes)`, async () => {
      const payload = await encode(true, segmentLiteral);
      assert.equal(payload[REFZSTD_MAGIC.length], REFZSTD_VERSION_SPLIT);
      const segments = segmentTables(payload);
      // Small segments: the walk runs on from one segment to the next.
      const split = segments.filter((s) => s.headerLength > 0).length;
      assert.ok(
        split >= (segmentLiteral !== undefined ? 2 : 1),
        `${split} of ${segments.length} segments split`,
      );
      const rebuilt = await collect(
        decodeRefZstd(new BufferSource(payload), { source: new BufferSource(await oldLayer) }),
      );
      assert.deepEqual(rebuilt, Buffer.from(await newLayer));
    });
  }

  it("is smaller than the same payload in tar order", async () => {
    const apart = await encode(true);
    const inOrder = await encode(false);
    assert.ok(inOrder[REFZSTD_MAGIC.length]! < REFZSTD_VERSION_SPLIT);
    assert.ok(apart.length < inOrder.length, `${apart.length} bytes apart, ${inOrder.length} in order`);
  });

  it("refuses a segment whose header length does not match what its pieces take", async () => {
    const payload = await encode(true);
    const source = new BufferSource(await oldLayer);
    for (const delta of [1, -1, 1 << 30]) {
      const changed = withHeaderLength(payload, (n) => (n > 0 ? n + delta : n));
      await assert.rejects(collect(decodeRefZstd(new BufferSource(changed), { source })), (err: unknown) => {
        assert.ok(err instanceof RefZstdError, String(err));
        assert.ok(err.code === "CORRUPT" || err.code === "LIMIT", err.message);
        return true;
      });
    }
  });
});

/** `payload` (version 4) with each segment's header length changed by `change`. */
function withHeaderLength(payload: Uint8Array, change: (n: number) => number): Uint8Array {
  return withSegments(
    payload,
    storedSegments(payload).map((s) => ({ ...s, fields: s.fields.map((f, k) => (k === 6 ? change(f) : f)) })),
  );
}
