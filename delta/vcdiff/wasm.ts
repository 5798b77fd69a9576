/**
 * The little of the WebAssembly API the codec uses (Node.js's type declarations leave it out):
 * compiling a module from the base64 text `npm run build:wasm` writes, and instantiating it.
 */

/** A module's exports: functions, and globals (their `value`). */
export type WasmExports = Record<string, unknown>;

export interface WasmMemory {
  readonly buffer: ArrayBuffer;
}

interface WebAssemblyApi {
  Module: new (bytes: Uint8Array) => object;
  Instance: new (module: object, imports?: object) => { exports: WasmExports };
  Memory: new (descriptor: { initial: number }) => WasmMemory;
}

/** Bytes in a WebAssembly memory page. */
export const WASM_PAGE = 65536;

/** The WebAssembly API, or undefined in a runtime without it. */
export function webAssembly(): WebAssemblyApi | undefined {
  return (globalThis as unknown as { WebAssembly?: WebAssemblyApi }).WebAssembly;
}

/** Compiles a module from base64; throws where WebAssembly or a feature it uses is missing. */
export function compileWasm(base64: string): object {
  const api = webAssembly();
  if (api === undefined) throw new Error("this JavaScript runtime has no WebAssembly");
  return new api.Module(Buffer.from(base64, "base64"));
}

/** Instantiates a compiled module, with `memory` as its imported `env.memory` if given. */
export function instantiateWasm(module: object, memory?: WasmMemory): WasmExports {
  const api = webAssembly()!;
  return new api.Instance(module, memory === undefined ? {} : { env: { memory } }).exports;
}

/** A fresh memory of at least `bytes` (its pages cost nothing until touched). */
export function wasmMemory(bytes: number): WasmMemory {
  return new (webAssembly()!.Memory)({ initial: Math.ceil(bytes / WASM_PAGE) });
}

/** The value of an exported global. */
export function wasmGlobal(exports: WasmExports, name: string): number {
  return (exports[name] as { value: number }).value;
}
