import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { decodeRefZstd } from "../../delta/refzstd/decoder.js";
import { encodeRefZstd, type RefZstdEncodeOptions } from "../../delta/refzstd/encoder.js";
import { PREAMBLE_SIZE, RefZstdError } from "../../delta/refzstd/format.js";
import { opaqueWhiteout, whiteout } from "../../delta/tar/writer.js";
import { BufferSource, type SourceReader } from "../../delta/vcdiff/source.js";
import { buildTar, patched, realFiles, sha256, withContent } from "../bundle/fixtures.js";
import { collect } from "../support/collect.js";
import { firstSegmentExtents, segmentCount, segmentTables } from "../support/refzstd-tables.js";
import { hintsFor } from "./hints.js";

async function encode(
  target: Uint8Array,
  sources: readonly Uint8Array[],
  options: RefZstdEncodeOptions = {},
): Promise<Buffer> {
  const source = sources.length > 0 ? new BufferSource(Buffer.concat(sources)) : undefined;
  return collect(
    encodeRefZstd(new BufferSource(target), source, { ...hintsFor(target, sources), level: 3, ...options }),
  );
}

/** A source with only the asynchronous read, like a registry-backed one. */
function asyncOnly(bytes: Uint8Array): SourceReader {
  const inner = new BufferSource(bytes);
  return { size: inner.size, read: (p, into, o, n) => inner.read(p, into, o, n) };
}

async function decode(payload: Uint8Array, sources: readonly Uint8Array[], size: number, sync = true) {
  const bytes = Buffer.concat(sources);
  const source = sources.length > 0 ? (sync ? new BufferSource(bytes) : asyncOnly(bytes)) : undefined;
  return collect(
    decodeRefZstd(sync ? new BufferSource(payload) : asyncOnly(payload), {
      expectedSize: size,
      ...(source !== undefined ? { source } : {}),
    }),
  );
}

const bins = realFiles("/usr/bin", "usr/bin", { limit: 30, maxBytes: 3_000_000 });
const libs = realFiles("/usr/lib/x86_64-linux-gnu", "usr/lib", { limit: 30, maxBytes: 3_000_000 });
const docs = realFiles("/usr/share/common-licenses", "usr/share/licenses", { limit: 20 });

describe("ref-zstd round trips", () => {
  it("rebuilds a layer with changed, moved, duplicated, hard-linked and whited-out files byte for byte", async () => {
    const base = await buildTar([{ path: "usr/bin", type: "directory" }, ...bins]);
    const app1 = await buildTar([
      { path: "usr/lib", type: "directory" },
      ...libs,
      ...docs,
      { path: "usr/lib/link", type: "hardlink", linkName: libs[1]!.path },
    ]);
    const libs2 = libs.map((e, i) => (i % 5 === 1 ? withContent(e, patched(e.content!, i)) : e));
    const app2 = await buildTar([
      { path: "usr/lib", type: "directory" },
      ...libs2.filter((_, i) => i !== 4),
      whiteout(libs[4]!.path),
      opaqueWhiteout("usr/share/old"),
      ...docs.map((d, i) =>
        i === 3 ? withContent(d, Buffer.concat([d.content!, Buffer.from("amended\n")])) : d,
      ),
      // Moved from the base layer, and the same content twice under new names.
      { path: "opt/moved", type: "file", content: bins[2]!.content! },
      { path: "usr/lib/copy-a", type: "file", content: libs[0]!.content! },
      { path: "usr/lib/copy-b", type: "file", content: libs[0]!.content! },
      { path: "usr/lib/link", type: "hardlink", linkName: libs2[2]!.path },
      { path: "usr/lib/sym", type: "symlink", linkName: "link" },
      { path: "etc/new.json", type: "file", content: new TextEncoder().encode('{"feature":true}\n') },
    ]);
    const payload = await encode(app2, [base, app1]);
    const rebuilt = await decode(payload, [base, app1], app2.length);
    assert.equal(sha256(rebuilt), sha256(app2));
    assert.equal(segmentCount(payload), 1);
    // Copies and patched binaries against their old versions: far below the layer's size.
    assert.ok(
      payload.length < app2.length / 40,
      `payload ${payload.length} bytes for a ${app2.length}-byte layer`,
    );
    // The same payload through sources that only read asynchronously.
    assert.deepEqual(await decode(payload, [base, app1], app2.length, false), rebuilt);
  });

  it("copies an unchanged file's header with its content: only the changed entry and the tar's end are literal", async () => {
    // Distinct contents only: a copy of content that an earlier path also holds starts after a header
    // with another name, which stays literal.
    const files = docs.filter(
      (d, i) => docs.findIndex((e) => sha256(e.content!) === sha256(d.content!)) === i,
    );
    const old = await buildTar(files);
    const amended = 5;
    const next = await buildTar(
      files.map((d, i) =>
        i === amended ? withContent(d, Buffer.concat([d.content!, Buffer.from("more\n")])) : d,
      ),
    );
    const payload = await encode(next, [old]);
    assert.equal(sha256(await decode(payload, [old], next.length)), sha256(next));
    const literal = segmentTables(payload).reduce((n, s) => n + s.literalLength, 0);
    // Each unchanged entry is one header block and its content padded to whole blocks.
    const copied = files
      .filter((_, i) => i !== amended)
      .reduce((n, d) => n + 512 + Math.ceil(d.content!.length / 512) * 512, 0);
    assert.equal(literal, next.length - copied);
  });

  it("cuts a file larger than a segment into segments, each against a slice of its old version", async () => {
    const big = Buffer.concat(libs.map((l) => l.content!)).subarray(0, 1_500_000);
    const old = await buildTar([{ path: "usr/lib/big.so", type: "file", content: big }, ...docs]);
    const next = await buildTar([
      { path: "usr/lib/big.so", type: "file", content: patched(patched(big, 1), 2) },
      ...docs,
    ]);
    // Approximate matching off: this is about the reference slices it would replace for a binary.
    const options = { segmentLiteral: 256 * 1024, reference: 512 * 1024, approximate: false };
    const payload = await encode(next, [old], options);
    // 1.5 MB of changed file in six 256 KiB chunks whose slices fill the reference budget, then
    // the unchanged files' headers against their old headers in a seventh.
    assert.equal(segmentCount(payload), 7);
    assert.equal(sha256(await decode(payload, [old], next.length)), sha256(next));
    // Each slice still finds the old bytes: nearly nothing is sent for a few changed bytes.
    assert.ok(payload.length < 40_000, `payload ${payload.length} bytes`);
  });

  it("splits many small entries into segments by literal bytes", async () => {
    const old = await buildTar(docs);
    const next = await buildTar(
      docs.map((d) => withContent(d, Buffer.concat([d.content!, Buffer.from("x")]))),
    );
    const payload = await encode(next, [old], { segmentLiteral: 64 * 1024, reference: 64 * 1024 });
    assert.ok(segmentCount(payload) > 3, `${segmentCount(payload)} segments`);
    assert.equal(sha256(await decode(payload, [old], next.length)), sha256(next));
  });

  it("fills spare reference room with a related source layer, so new files find their neighbours", async () => {
    // Another app's layer holds the licences; the new layer has edited copies under new names,
    // so no entry has an old version of its own and only the fill can help.
    const related = await buildTar(docs);
    const unrelated = await buildTar(bins.slice(0, 5));
    const next = await buildTar(
      docs.map((d, i) => ({
        ...withContent(d, Buffer.concat([Buffer.from(`edited ${i}\n`), d.content!])),
        path: `opt/newapp/licence-${i}.txt`,
      })),
    );
    const fill = [{ sourceOffset: unrelated.length, length: related.length }];
    const without = await encode(next, [unrelated, related]);
    const withFill = await encode(next, [unrelated, related], { fill });
    assert.equal(sha256(await decode(withFill, [unrelated, related], next.length)), sha256(next));
    assert.ok(
      withFill.length < without.length * 0.5,
      `with fill ${withFill.length} bytes, without ${without.length}`,
    );
    await assert.rejects(
      encode(next, [unrelated, related], {
        fill: [{ sourceOffset: unrelated.length, length: related.length + 1 }],
      }),
      /fill range .* is outside the .*-byte source/,
    );
  });

  it("puts the fill before the segment's own references, which sit nearest the literal bytes", async () => {
    // Edited licences under their old paths (references) and under new names (only the fill helps).
    const related = await buildTar(docs);
    const unrelated = await buildTar(bins.slice(0, 5));
    const edited = (d: (typeof docs)[number], i: number) =>
      withContent(d, Buffer.concat([Buffer.from(`edited ${i}\n`), d.content!]));
    const next = await buildTar([
      ...docs.map(edited),
      ...docs.map((d, i) => ({ ...edited(d, i + 100), path: `opt/newapp/licence-${i}.txt` })),
    ]);
    const fill = [{ sourceOffset: unrelated.length, length: related.length }];
    const payload = await encode(next, [unrelated, related], { fill });
    assert.equal(sha256(await decode(payload, [unrelated, related], next.length)), sha256(next));
    const extents = firstSegmentExtents(payload);
    assert.ok(extents.length > 1, `${extents.length} extents`);
    assert.deepEqual(
      extents[0],
      { sourceOffset: unrelated.length, length: related.length },
      "the fill first",
    );
    for (const e of extents.slice(1)) {
      assert.ok(
        e.sourceOffset >= unrelated.length && e.length < related.length,
        `reference ${e.sourceOffset}+${e.length} is an old licence's entry`,
      );
    }
  });

  it("takes a fill of more extents than a function call takes arguments", async () => {
    // 150,000 ranges of two bytes each, as a fill that leaves out every other small file makes.
    const related = await buildTar(docs);
    const unrelated = await buildTar(bins.slice(0, 5));
    const next = await buildTar(
      docs.map((d, i) => withContent(d, Buffer.concat([Buffer.from(`edited ${i}\n`), d.content!]))),
    );
    const fill = Array.from({ length: 150_000 }, (_, i) => ({ sourceOffset: 4 * i, length: 2 }));
    assert.ok(4 * 150_000 <= unrelated.length + related.length, "the ranges lie in the source");
    const payload = await encode(next, [unrelated, related], { fill });
    assert.equal(sha256(await decode(payload, [unrelated, related], next.length)), sha256(next));
    const extents = firstSegmentExtents(payload);
    assert.deepEqual(extents.slice(0, 150_000), fill, "the fill first, all of it");
    assert.ok(extents.length > 150_000, "then the segment's own references");
  });

  it("encodes an empty layer, a zero-byte layer and a layer with no source", async () => {
    const empty = await buildTar([]);
    assert.equal(empty.length, 1024);
    const source = await buildTar(docs);
    for (const [target, sources] of [
      [empty, [source]],
      [new Uint8Array(0), [source]],
      [source, []],
      [new Uint8Array(0), []],
    ] as const) {
      const payload = await encode(target, sources);
      assert.deepEqual(await decode(payload, sources, target.length), Buffer.from(target));
    }
    const zero = await encode(new Uint8Array(0), []);
    assert.deepEqual([...zero], [0x44, 0x53, 0x52, 0x5a, 1, 0, 0]);
  });

  it("refuses a payload whose output size differs from the expected one", async () => {
    const target = await buildTar(docs);
    const payload = await encode(target, []);
    await assert.rejects(decode(payload, [], target.length + 1), (err: unknown) => {
      assert.ok(err instanceof RefZstdError);
      assert.equal(err.code, "CORRUPT");
      assert.equal(err.offset, PREAMBLE_SIZE);
      return true;
    });
  });

  it("refuses a payload that copies from a source it was not given", async () => {
    const old = await buildTar(docs);
    const next = await buildTar([...docs, { path: "new", type: "file", content: Buffer.from("n") }]);
    const payload = await encode(next, [old]);
    await assert.rejects(decode(payload, [], next.length), (err: unknown) => {
      assert.ok(err instanceof RefZstdError);
      assert.equal(err.code, "CORRUPT");
      assert.match(err.message, /outside the 0-byte source/);
      return true;
    });
  });
});
