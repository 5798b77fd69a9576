/**
 * Adler-32 (RFC 1950), the checksum xdelta3 writes for each target window (VCD_ADLER32).
 * WebAssembly SIMD (adler32.wat) sums 16 bytes an instruction: its first call runs at full speed,
 * where a TypeScript loop runs interpreted until V8 has compiled it (a 13 MB decode's checksums took
 * 32 ms in a fresh process, against 5 ms). Runtimes without WebAssembly SIMD use the TypeScript loop.
 */

import { WASM_BASE64 } from "./adler32-wasm.js";
import { compileWasm, instantiateWasm, type WasmMemory } from "./wasm.js";

const ADLER_MOD = 65521;
/** Largest run of bytes summed before a modulo keeps the sums exact in 32-bit-safe doubles. */
const ADLER_BLOCK = 5552;
/** Bytes the WebAssembly module sums a call: its one 64 KiB page, refilled by copying. */
const WASM_CHUNK = 65536;
/** Shorter inputs stay in TypeScript: copying into the module costs more than it saves. */
const WASM_MIN_LENGTH = 1024;

interface WasmAdler {
  memory: Uint8Array;
  sum: (length: number, start: number) => number;
}

/** The instantiated module, `null` where WebAssembly SIMD is missing, `undefined` before the first try. */
let wasm: WasmAdler | null | undefined;

function loadWasm(): WasmAdler | null {
  try {
    const exports = instantiateWasm(compileWasm(WASM_BASE64));
    const memory = exports.memory as WasmMemory;
    return { memory: new Uint8Array(memory.buffer, 0, WASM_CHUNK), sum: exports.adler32 as WasmAdler["sum"] };
  } catch {
    // No WebAssembly SIMD here: the module does not compile.
    return null;
  }
}

/** The module, instantiated on first use; null without WebAssembly SIMD. */
function wasmAdler(): WasmAdler | null {
  if (wasm === undefined) wasm = loadWasm();
  return wasm;
}

/** Which implementation sums inputs of 1 KiB or more here: `webassembly`, or `typescript` without SIMD. */
export function adler32Backend(): "webassembly" | "typescript" {
  return wasmAdler() === null ? "typescript" : "webassembly";
}

/** Adler-32 of data, continuing from a previous value (start with 1). */
export function adler32(data: Uint8Array, start = 1): number {
  const module = data.length >= WASM_MIN_LENGTH ? wasmAdler() : null;
  if (module !== null) {
    let sum = start;
    for (let at = 0; at < data.length; at += WASM_CHUNK) {
      const n = Math.min(WASM_CHUNK, data.length - at);
      module.memory.set(data.subarray(at, at + n));
      sum = module.sum(n, sum) >>> 0;
    }
    return sum;
  }
  return adler32Portable(data, start);
}

/** Adler-32 in TypeScript: short inputs, runtimes without WebAssembly SIMD, and the tests' reference. */
export function adler32Portable(data: Uint8Array, start = 1): number {
  let a = start & 0xffff;
  let b = (start >>> 16) & 0xffff;
  let i = 0;
  const n = data.length;
  while (i < n) {
    const end = Math.min(n, i + ADLER_BLOCK);
    // 16 bytes a step, twice as fast: b gains 16·a plus each byte times the sums it enters.
    for (; i + 16 <= end; i += 16) {
      const d0 = data[i];
      const d1 = data[i + 1];
      const d2 = data[i + 2];
      const d3 = data[i + 3];
      const d4 = data[i + 4];
      const d5 = data[i + 5];
      const d6 = data[i + 6];
      const d7 = data[i + 7];
      const d8 = data[i + 8];
      const d9 = data[i + 9];
      const d10 = data[i + 10];
      const d11 = data[i + 11];
      const d12 = data[i + 12];
      const d13 = data[i + 13];
      const d14 = data[i + 14];
      const d15 = data[i + 15];
      b +=
        16 * (a + d0) +
        15 * d1 +
        14 * d2 +
        13 * d3 +
        12 * d4 +
        11 * d5 +
        10 * d6 +
        9 * d7 +
        8 * d8 +
        7 * d9 +
        6 * d10 +
        5 * d11 +
        4 * d12 +
        3 * d13 +
        2 * d14 +
        d15;
      a += d0 + d1 + d2 + d3 + d4 + d5 + d6 + d7 + d8 + d9 + d10 + d11 + d12 + d13 + d14 + d15;
    }
    for (; i < end; i++) {
      a += data[i];
      b += a;
    }
    a %= ADLER_MOD;
    b %= ADLER_MOD;
  }
  return ((b << 16) | a) >>> 0;
}
