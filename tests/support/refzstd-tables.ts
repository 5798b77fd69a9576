/** Reading a ref-zstd payload's tables in tests: what the decoder would build its dictionaries from. */
import assert from "node:assert/strict";
import zstd from "zstd-napi";
import {
  PREAMBLE_SIZE,
  REFZSTD_MAGIC,
  REFZSTD_VERSION_SPLIT,
  unzigzag,
  VarintReader,
} from "../../delta/refzstd/format.js";

/** One segment's counts and its tables, decompressed, to read from the start. */
export interface SegmentTables {
  /** Literal bytes of the segment (its literal frame decompresses to this many). */
  readonly literalLength: number;
  readonly extentCount: number;
  readonly pieceCount: number;
  /** Version 4: literal bytes of tar headers at the start of the literal frame (0 before version 4). */
  readonly headerLength: number;
  readonly tables: VarintReader;
}

function payloadHeader(payload: Uint8Array): { segments: number; at: number } {
  const top = new VarintReader(payload.subarray(PREAMBLE_SIZE), PREAMBLE_SIZE, "payload header");
  top.read("output size");
  return { segments: top.read("segment count"), at: top.offset };
}

export function segmentCount(payload: Uint8Array): number {
  return payloadHeader(payload).segments;
}

/** Every segment's tables, in order; the segments must end where the payload does. */
export function segmentTables(payload: Uint8Array): SegmentTables[] {
  let { segments, at } = payloadHeader(payload);
  const out: SegmentTables[] = [];
  for (; segments > 0; segments--) {
    const head = new VarintReader(payload.subarray(at), at, "segment header");
    head.read("output length");
    const literalLength = head.read("literal length");
    const extentCount = head.read("extent count");
    const pieceCount = head.read("piece count");
    const tablesLength = head.read("tables length");
    const frameLength = head.read("frame length");
    const headerLength =
      payload[REFZSTD_MAGIC.length]! >= REFZSTD_VERSION_SPLIT ? head.read("header length") : 0;
    at = head.offset;
    const raw = zstd.decompress(Buffer.from(payload.subarray(at, at + tablesLength)));
    out.push({
      literalLength,
      extentCount,
      pieceCount,
      headerLength,
      tables: new VarintReader(raw, 0, "tables"),
    });
    at += tablesLength + frameLength;
  }
  assert.equal(at, payload.length);
  return out;
}

/** The extents (dictionary ranges, in dictionary order) of a version-1 payload's first segment. */
export function firstSegmentExtents(payload: Uint8Array): { sourceOffset: number; length: number }[] {
  const { extentCount, tables } = segmentTables(payload)[0]!;
  const extents: { sourceOffset: number; length: number }[] = [];
  let end = 0;
  for (let i = 0; i < extentCount; i++) {
    const sourceOffset = end + unzigzag(tables.read("offset"));
    const length = tables.read("length");
    extents.push({ sourceOffset, length });
    end = sourceOffset + length;
  }
  return extents;
}
