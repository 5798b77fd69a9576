import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { describe, it } from "node:test";
import zstd from "zstd-napi";
import {
  type ApproxPiece,
  applyPieces,
  approximatePieces,
  literalStream,
  pieceStreams,
  type RefinedPiece,
  releaseMatchMemory,
  splitExactRuns,
} from "../../delta/refzstd/approx.js";
import { decodeRefZstd } from "../../delta/refzstd/decoder.js";
import { encodeRefZstd } from "../../delta/refzstd/encoder.js";
import { RefZstdError, VarintWriter, zigzag } from "../../delta/refzstd/format.js";
import { BufferSource } from "../../delta/vcdiff/source.js";
import { buildTar } from "../bundle/fixtures.js";
import { prng, relocate, seededBytes } from "../support/random.js";
import { hintsFor } from "./hints.js";

function concat(...parts: Uint8Array[]): Uint8Array {
  return new Uint8Array(Buffer.concat(parts));
}

/** Checks the pieces cover the new file and rebuild it byte for byte, raw and split into copies. */
function roundTrip(oldFile: Uint8Array, newFile: Uint8Array, pieces: readonly RefinedPiece[]): void {
  assert.equal(
    pieces.reduce((sum, p) => sum + p.length, 0),
    newFile.length,
  );
  for (const p of pieces) assert.ok(p.length > 0, "no empty pieces");
  const { diff, extra } = pieceStreams(oldFile, newFile, pieces);
  assert.ok(Buffer.from(applyPieces(oldFile, pieces, diff, extra)).equals(newFile), "rebuilt file differs");
  const refined = splitExactRuns(oldFile, newFile, pieces, 16);
  const streams = pieceStreams(oldFile, newFile, refined);
  assert.ok(
    Buffer.from(applyPieces(oldFile, refined, streams.diff, streams.extra)).equals(newFile),
    "rebuilt file differs after splitting exact runs",
  );
}

function count(pieces: readonly RefinedPiece[], kind: RefinedPiece["kind"]): number {
  return pieces.filter((p) => p.kind === kind).reduce((sum, p) => sum + p.length, 0);
}

function nonZero(bytes: Uint8Array): number {
  let n = 0;
  for (const b of bytes) if (b !== 0) n++;
  return n;
}

/** A real executable on this machine: the first 3 MiB of the running node binary (machine code and data). */
function realExecutable(): Uint8Array {
  const bytes = readFileSync(process.execPath);
  assert.equal(bytes.readUInt32BE(0), 0x7f454c46, `${process.execPath} should be an ELF file`);
  return new Uint8Array(bytes.subarray(0, Math.min(bytes.length, 3 * 1024 * 1024)));
}

describe("approximate matching", () => {
  it("describes inserted code and relocated addresses as one insertion and two aligned regions", () => {
    const oldFile = seededBytes(256 * 1024, 7);
    const inserted = seededBytes(1000, 8);
    const newFile = concat(oldFile.subarray(0, 100_000), inserted, oldFile.subarray(100_000));
    relocate(newFile, 150_000, 200_000, 0x1000);
    const pieces = approximatePieces(oldFile, newFile);
    roundTrip(oldFile, newFile, pieces);
    assert.deepEqual(
      pieces.map((p) => p.kind),
      ["diff", "extra", "diff"],
    );
    const [first, extra, last] = pieces as [ApproxPiece, ApproxPiece, ApproxPiece];
    assert.deepEqual(first, { kind: "diff", length: 100_000 + (first.length - 100_000), oldOffset: 0 });
    // Random inserted bytes may agree with the old ones at a byte or two next to the edges.
    assert.ok(first.length >= 100_000 && first.length <= 100_004, `first region ${first.length}`);
    assert.ok(extra.length >= 992 && extra.length <= 1000, `extra ${extra.length}`);
    assert.equal(last.kind, "diff");
    if (last.kind === "diff") assert.equal(last.oldOffset - (first.length + extra.length), -1000);
    // Exactly the bytes the relocation changed differ: the second of each word, and carries.
    const unshifted = concat(newFile.subarray(0, 100_000), newFile.subarray(101_000));
    let relocated = 0;
    for (let i = 0; i < oldFile.length; i++) if (unshifted[i] !== oldFile[i]) relocated++;
    assert.ok(relocated > 12_500, `the relocation changes ${relocated} bytes`);
    assert.equal(nonZero(pieceStreams(oldFile, newFile, pieces).diff), relocated);
  });

  it("rebuilds a real executable with a shifted region and relocated words, in a fraction of its size", () => {
    const oldFile = realExecutable();
    const third = Math.floor(oldFile.length / 3);
    const newFile = concat(
      oldFile.subarray(0, third),
      seededBytes(4096, 11),
      oldFile.subarray(third, 2 * third),
      oldFile.subarray(2 * third + 8192),
    );
    relocate(newFile, third + 4096 + 1000, 2 * third, 0x40);
    const pieces = approximatePieces(oldFile, newFile);
    roundTrip(oldFile, newFile, pieces);
    const { diff, extra } = pieceStreams(oldFile, newFile, pieces);
    assert.ok(extra.length <= 4096 + 1024, `${extra.length} extra bytes for a 4096-byte insertion`);
    const sent = zstd.compress(Buffer.from(diff), { compressionLevel: 9 }).length + extra.length;
    const plain = zstd.compress(Buffer.from(newFile), { compressionLevel: 9 }).length;
    assert.ok(sent * 10 < plain, `streams of ${sent} bytes should be under a tenth of zstd's ${plain}`);
  });

  it("finds the same pieces whether its seed table is fresh or kept from a larger or smaller match", () => {
    // The seed table's memory is kept from one match to the next; a slot left over from the
    // previous file would offer alignments that do not exist, so results would change.
    const big = realExecutable();
    const bigNew = concat(big.subarray(0, 100_000), seededBytes(3000, 21), big.subarray(100_000));
    relocate(bigNew, 200_000, big.length - 300_000, 0x80);
    // A hundred alignments (7 bytes inserted every 2,000): each needs its own seed from the table.
    const small = seededBytes(200_000, 23);
    const smallParts: Uint8Array[] = [];
    for (let at = 0; at < small.length; at += 2000)
      smallParts.push(small.subarray(at, at + 2000), seededBytes(7, at));
    const smallNew = concat(...smallParts);
    releaseMatchMemory();
    const smallFresh = approximatePieces(small, smallNew);
    releaseMatchMemory();
    const bigFresh = approximatePieces(big, bigNew);
    assert.deepEqual(approximatePieces(small, smallNew), smallFresh, "after a larger match");
    assert.deepEqual(approximatePieces(big, bigNew), bigFresh, "after a smaller match");
    assert.deepEqual(approximatePieces(big, bigNew), bigFresh, "after the same match");
    // A table of 2^16 slots: the big file fills every bucket, so nothing of the small file would
    // enter a table whose counts were not cleared.
    const tiny = { maxTableBits: 16 };
    releaseMatchMemory();
    const smallTiny = approximatePieces(small, smallNew, tiny);
    approximatePieces(big, bigNew, tiny);
    assert.deepEqual(
      approximatePieces(small, smallNew, tiny),
      smallTiny,
      "after a match that filled every bucket",
    );
    roundTrip(small, smallNew, smallFresh);
    roundTrip(big, bigNew, bigFresh);
    assert.ok(smallFresh.length > 1 && bigFresh.length > 1, "both pairs need several pieces");
    releaseMatchMemory();
  });

  it("sends one all-zero difference region for identical files, and one copy once exact runs are split", () => {
    const file = seededBytes(70_000, 3);
    const pieces = approximatePieces(file, file);
    assert.deepEqual(pieces, [{ kind: "diff", length: 70_000, oldOffset: 0 }]);
    assert.equal(nonZero(pieceStreams(file, file, pieces).diff), 0);
    assert.deepEqual(splitExactRuns(file, file, pieces, 32), [
      { kind: "copy", length: 70_000, oldOffset: 0 },
    ]);
  });

  it("handles empty files on either side", () => {
    const some = seededBytes(5000, 4);
    const empty = new Uint8Array(0);
    assert.deepEqual(approximatePieces(empty, empty), []);
    assert.deepEqual(approximatePieces(some, empty), []);
    assert.deepEqual(approximatePieces(empty, some), [{ kind: "extra", length: 5000 }]);
    roundTrip(empty, some, approximatePieces(empty, some));
    assert.equal(applyPieces(some, [], new Uint8Array(0), new Uint8Array(0)).length, 0);
  });

  it("sends unrelated files as extra bytes", () => {
    const oldFile = seededBytes(200_000, 5);
    const newFile = seededBytes(150_000, 6);
    const pieces = approximatePieces(oldFile, newFile);
    roundTrip(oldFile, newFile, pieces);
    assert.ok(count(pieces, "extra") >= 149_900, `${count(pieces, "extra")} of 150000 bytes extra`);
  });

  it("works with an old file shorter than a seed", () => {
    const newFile = concat(Uint8Array.of(1, 2, 3), seededBytes(1000, 9));
    const oldFile = Uint8Array.of(1, 2, 3);
    const pieces = approximatePieces(oldFile, newFile);
    roundTrip(oldFile, newFile, pieces);
    assert.deepEqual(pieces[0], { kind: "diff", length: 3, oldOffset: 0 });
    assert.equal(count(pieces, "extra"), 1000);
  });

  it("round-trips random edits of all kinds (property test)", () => {
    const next = prng(2024);
    for (let round = 0; round < 150; round++) {
      const size = 1 + (next() % 40_000);
      let file = seededBytes(size, next());
      const oldFile = file;
      const edits = next() % 8;
      for (let e = 0; e < edits; e++) {
        const at = next() % (file.length + 1);
        const length = 1 + (next() % 3000);
        const kind = next() % 5;
        if (kind === 0) file = concat(file.subarray(0, at), seededBytes(length, next()), file.subarray(at));
        else if (kind === 1)
          file = concat(file.subarray(0, at), file.subarray(Math.min(file.length, at + length)));
        else if (kind === 2) relocate(file, at, Math.min(file.length, at + length), next());
        else if (kind === 3) file = concat(file, oldFile.subarray(at % oldFile.length));
        else file = concat(file.subarray(0, at), new Uint8Array(length), file.subarray(at));
      }
      const pieces = approximatePieces(oldFile, file, {
        seedLength: 4 * (1 + (next() % 4)),
        oldStride: 1 + (next() % 9),
      });
      try {
        roundTrip(oldFile, file, pieces);
      } catch (err) {
        throw new Error(
          `round ${round} (old ${oldFile.length}, new ${file.length} bytes): ${(err as Error).message}`,
        );
      }
    }
  });

  it("puts difference and extra bytes in piece order into one literal stream", () => {
    const oldFile = seededBytes(60_000, 12);
    const newFile = concat(oldFile.subarray(0, 20_000), seededBytes(500, 13), oldFile.subarray(20_000));
    relocate(newFile, 30_000, 40_000, 3);
    const pieces = splitExactRuns(oldFile, newFile, approximatePieces(oldFile, newFile), 64);
    assert.ok(pieces.some((p) => p.kind === "copy") && pieces.some((p) => p.kind === "diff"));
    const literal = literalStream(oldFile, newFile, pieces);
    const expected: Uint8Array[] = [];
    let at = 0;
    for (const p of pieces) {
      if (p.kind !== "copy")
        expected.push(pieceStreams(oldFile, newFile.subarray(at, at + p.length), [p]).diff);
      if (p.kind === "extra") expected[expected.length - 1] = newFile.subarray(at, at + p.length);
      at += p.length;
    }
    assert.ok(Buffer.from(literal).equals(Buffer.concat(expected)));
  });

  it("refuses streams that do not fit the pieces and options out of range", () => {
    const oldFile = seededBytes(1000, 1);
    const pieces: RefinedPiece[] = [
      { kind: "diff", length: 600, oldOffset: 400 },
      { kind: "extra", length: 10 },
    ];
    assert.throws(
      () => applyPieces(oldFile, pieces, new Uint8Array(600), new Uint8Array(5)),
      /the extra stream ends at byte 5, a piece needs 10/,
    );
    assert.throws(
      () => applyPieces(oldFile, pieces, new Uint8Array(700), new Uint8Array(10)),
      /the pieces use 600 diff and 10 extra bytes, the streams hold 700 and 10/,
    );
    assert.throws(
      () =>
        applyPieces(
          oldFile,
          [{ kind: "copy", length: 10, oldOffset: 995 }],
          new Uint8Array(0),
          new Uint8Array(0),
        ),
      /reads old bytes 995\.\.1005, the old file has 1000/,
    );
    assert.throws(
      () => approximatePieces(oldFile, oldFile, { seedLength: 10 }),
      /seedLength must be an integer from 4 to 32 in steps of 4, got 10/,
    );
  });

  it("makes ref-zstd payloads send a relinked executable in a layer as diff pieces, and decodes them", async () => {
    const oldExe = realExecutable().subarray(0, 1024 * 1024);
    const third = Math.floor(oldExe.length / 3);
    const newExe = concat(oldExe.subarray(0, third), seededBytes(3000, 21), oldExe.subarray(third));
    relocate(newExe, third + 3000, 2 * third, 0x28);
    const notes = new TextEncoder().encode("release notes\n".repeat(9000));
    const oldTar = await buildTar([
      { path: "usr/bin/app", type: "file", content: oldExe, mode: 0o755 },
      { path: "usr/share/notes", type: "file", content: notes },
    ]);
    const newTar = await buildTar([
      { path: "usr/bin/app", type: "file", content: newExe, mode: 0o755 },
      {
        path: "usr/share/notes",
        type: "file",
        content: concat(notes, new TextEncoder().encode("one more\n")),
      },
    ]);
    const encode = async (approximate: boolean) => {
      const parts: Uint8Array[] = [];
      for await (const part of encodeRefZstd(new BufferSource(newTar), new BufferSource(oldTar), {
        ...hintsFor(newTar, [oldTar]),
        level: 19,
        approximate,
      }))
        parts.push(part);
      return Buffer.concat(parts);
    };
    const withDiffs = await encode(true);
    const without = await encode(false);
    // Through readSync (files) and through the asynchronous read alone (registry blobs).
    const oldSource = new BufferSource(oldTar);
    for (const source of [oldSource, { size: oldSource.size, read: oldSource.read.bind(oldSource) }]) {
      const decoded: Uint8Array[] = [];
      for await (const part of decodeRefZstd(new BufferSource(withDiffs), {
        source,
        expectedSize: newTar.length,
      }))
        decoded.push(Buffer.from(part));
      assert.ok(Buffer.concat(decoded).equals(newTar), "decoded layer differs");
    }
    // The relocated third: a repeating difference pattern instead of bytes zstd must find one by one.
    assert.ok(
      withDiffs.length * 2 < without.length,
      `${withDiffs.length} bytes with diff pieces, ${without.length} without`,
    );
  });

  /** A one-segment ref-zstd payload whose single piece is a diff piece of `length` bytes at `offset`. */
  function diffPayload(length: number, offset: number, literal: Uint8Array): Uint8Array {
    const tables = new VarintWriter();
    for (const v of [0, length, zigzag(offset)]) tables.write(v);
    const tablesFrame = zstd.compress(Buffer.from(tables.result));
    const frame = zstd.compress(Buffer.from(literal));
    const head = new VarintWriter();
    for (const v of [length, 1, length, literal.length, 0, 1, tablesFrame.length, frame.length])
      head.write(v);
    return concat(new TextEncoder().encode("DSRZ"), Uint8Array.of(1), head.result, tablesFrame, frame);
  }

  async function decodeAll(payload: Uint8Array, source: Uint8Array): Promise<Buffer> {
    const parts: Buffer[] = [];
    for await (const part of decodeRefZstd(new BufferSource(payload), { source: new BufferSource(source) }))
      parts.push(Buffer.from(part));
    return Buffer.concat(parts);
  }

  it("decodes a diff piece as source plus literal bytes, and refuses one outside the source", async () => {
    const source = Uint8Array.of(10, 20, 30, 40, 250);
    const decoded = await decodeAll(diffPayload(3, 2, Uint8Array.of(1, 0, 10)), source);
    assert.deepEqual([...decoded], [31, 40, 4]);
    await assert.rejects(decodeAll(diffPayload(3, 3, Uint8Array.of(1, 2, 3)), source), (err: unknown) => {
      assert.ok(err instanceof RefZstdError, String(err));
      assert.equal(err.code, "CORRUPT");
      assert.match(err.message, /diff piece 0 reads 3 bytes at 3, outside the 5-byte source/);
      return true;
    });
  });
});
