/** Reading a ref-zstd payload's tables in tests: what the decoder would build its dictionaries from. */
import zstd from "zstd-napi";
import { PREAMBLE_SIZE, unzigzag, VarintReader } from "../../delta/refzstd/format.js";

/** The extents (dictionary ranges, in dictionary order) of a version-1 payload's first segment. */
export function firstSegmentExtents(payload: Uint8Array): { sourceOffset: number; length: number }[] {
  const top = new VarintReader(payload.subarray(PREAMBLE_SIZE), PREAMBLE_SIZE, "payload header");
  top.read("output size");
  top.read("segment count");
  const head = new VarintReader(payload.subarray(top.offset), top.offset, "segment header");
  for (const field of ["output length", "literal length"]) head.read(field);
  const count = head.read("extent count");
  head.read("piece count");
  const tablesLength = head.read("tables length");
  head.read("frame length");
  const at = head.offset;
  const tables = new VarintReader(
    zstd.decompress(Buffer.from(payload.subarray(at, at + tablesLength))),
    0,
    "tables",
  );
  const extents: { sourceOffset: number; length: number }[] = [];
  let end = 0;
  for (let i = 0; i < count; i++) {
    const sourceOffset = end + unzigzag(tables.read("offset"));
    const length = tables.read("length");
    extents.push({ sourceOffset, length });
    end = sourceOffset + length;
  }
  return extents;
}
