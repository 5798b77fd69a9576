/** Reading a ref-zstd payload's tables in tests: what the decoder would build its dictionaries from. */
import assert from "node:assert/strict";
import zstd from "zstd-napi";
import {
  PREAMBLE_SIZE,
  REFZSTD_MAGIC,
  REFZSTD_VERSION_SPLIT,
  unzigzag,
  VarintReader,
  VarintWriter,
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

/** `values` as varints, one after another. */
export function varints(values: readonly number[]): Uint8Array {
  const w = new VarintWriter();
  for (const v of values) w.write(v);
  return w.result;
}

/** One segment as stored: its header's varints (six; seven from version 4), tables frame and literal frame. */
export interface StoredSegment {
  /** Output, literal, extent, piece, tables and frame lengths, then (version 4) the header length. */
  readonly fields: number[];
  readonly tables: Uint8Array;
  readonly frame: Uint8Array;
}

/** Every segment of `payload` as stored, in order; the segments must end where the payload does. */
export function storedSegments(payload: Uint8Array): StoredSegment[] {
  let { segments, at } = payloadHeader(payload);
  const count = payload[REFZSTD_MAGIC.length]! >= REFZSTD_VERSION_SPLIT ? 7 : 6;
  const out: StoredSegment[] = [];
  for (; segments > 0; segments--) {
    const head = new VarintReader(payload.subarray(at), at, "segment header");
    const fields = Array.from({ length: count }, () => head.read("segment header field"));
    at = head.offset;
    const tables = payload.subarray(at, at + fields[4]!);
    const frame = payload.subarray(at + fields[4]!, at + fields[4]! + fields[5]!);
    out.push({ fields, tables, frame });
    at += tables.length + frame.length;
  }
  assert.equal(at, payload.length);
  return out;
}

/** `payload`'s preamble and header followed by `segments` (their header varints written as given). */
export function withSegments(payload: Uint8Array, segments: readonly StoredSegment[]): Uint8Array {
  const top = new VarintReader(payload.subarray(PREAMBLE_SIZE), PREAMBLE_SIZE, "payload header");
  const head = [top.read("output size"), top.read("segment count")];
  const parts: Uint8Array[] = [payload.subarray(0, PREAMBLE_SIZE), varints(head)];
  for (const s of segments) parts.push(varints(s.fields), s.tables, s.frame);
  return Buffer.concat(parts);
}

/** Every segment's tables, in order; the segments must end where the payload does. */
export function segmentTables(payload: Uint8Array): SegmentTables[] {
  return storedSegments(payload).map(({ fields, tables }) => ({
    literalLength: fields[1]!,
    extentCount: fields[2]!,
    pieceCount: fields[3]!,
    headerLength: fields[6] ?? 0,
    tables: new VarintReader(zstd.decompress(Buffer.from(tables)), 0, "tables"),
  }));
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
