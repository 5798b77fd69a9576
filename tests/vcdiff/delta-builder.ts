/**
 * Builds VCDIFF deltas byte by byte for the decoder's tests, independently of our encoder, so
 * each instruction kind, cache mode and header bit can be exercised on its own.
 */
import { adler32 } from "../../delta/vcdiff/adler32.js";
import { VCD_ADLER32, VCD_APPHEADER, writeVarint } from "../../delta/vcdiff/format.js";

export interface WindowSpec {
  /** Win_Indicator bits other than VCD_ADLER32 (set through `checksumOf`). */
  indicator?: number;
  segmentLength?: number;
  segmentPosition?: number;
  targetLength: number;
  deltaIndicator?: number;
  data?: number[] | Uint8Array;
  inst?: number[];
  addr?: number[];
  /** Target window bytes to checksum with Adler-32 (sets VCD_ADLER32), or a raw checksum value. */
  checksumOf?: Uint8Array | number;
}

export interface DeltaSpec {
  headerIndicator?: number;
  /** Bytes after the header indicator (compressor id, code table), when testing refusals. */
  headerExtra?: number[];
  appHeader?: Uint8Array;
  windows: WindowSpec[];
}

export function varint(n: number): number[] {
  const out = new Uint8Array(10);
  const end = writeVarint(out, 0, n);
  return [...out.subarray(0, end)];
}

/** Default code table indexes (RFC 3284 section 5.6). */
export const code = {
  run: 0,
  /** ADD of size 1..17 in the opcode, or 0: size follows as a varint. */
  add: (size: number) => 1 + size,
  /** COPY of size 4..18 in the opcode, or 0: size follows as a varint; mode 0..8. */
  copy: (mode: number, size: number) => 19 + mode * 16 + (size === 0 ? 0 : size - 3),
};

export function buildDelta(spec: DeltaSpec): Uint8Array {
  const out: number[] = [0xd6, 0xc3, 0xc4, 0x00];
  let indicator = spec.headerIndicator ?? 0;
  if (spec.appHeader) indicator |= VCD_APPHEADER;
  out.push(indicator, ...(spec.headerExtra ?? []));
  if (spec.appHeader) append(out, varint(spec.appHeader.length), spec.appHeader);
  for (const w of spec.windows) {
    let winInd = w.indicator ?? 0;
    if (w.checksumOf !== undefined) winInd |= VCD_ADLER32;
    out.push(winInd);
    if (w.segmentLength !== undefined) append(out, varint(w.segmentLength), varint(w.segmentPosition ?? 0));
    const data = [...(w.data ?? [])];
    const inst = w.inst ?? [];
    const addr = w.addr ?? [];
    const body = [
      ...varint(w.targetLength),
      w.deltaIndicator ?? 0,
      ...varint(data.length),
      ...varint(inst.length),
      ...varint(addr.length),
    ];
    if (w.checksumOf !== undefined) {
      const sum = typeof w.checksumOf === "number" ? w.checksumOf : adler32(w.checksumOf);
      body.push((sum >>> 24) & 0xff, (sum >>> 16) & 0xff, (sum >>> 8) & 0xff, sum & 0xff);
    }
    append(body, data, inst, addr);
    append(out, varint(body.length), body);
  }
  return Uint8Array.from(out);
}

/** Appends element by element: spreading a large section into push() overflows the call stack. */
function append(out: number[], ...parts: ArrayLike<number>[]): void {
  for (const part of parts) for (let i = 0; i < part.length; i++) out.push(part[i]);
}

export const bytes = (s: string): Uint8Array => new TextEncoder().encode(s);
export const text = (b: Uint8Array): string => new TextDecoder().decode(b);
