/** xorshift32: a small seeded generator of unsigned 32-bit integers, so every test input replays. */
export function prng(seed: number): () => number {
  let s = seed >>> 0 || 1;
  return () => {
    s ^= s << 13;
    s >>>= 0;
    s ^= s >>> 17;
    s ^= s << 5;
    s >>>= 0;
    return s;
  };
}

/** `length` seeded random bytes (the low byte of each prng draw). */
export function seededBytes(length: number, seed: number): Uint8Array {
  const next = prng(seed);
  const out = new Uint8Array(length);
  for (let i = 0; i < length; i++) out[i] = next() & 0xff;
  return out;
}

/** Adds `delta` to every little-endian 32-bit word of `bytes[from, to)`: what relinking does to addresses. */
export function relocate(bytes: Uint8Array, from: number, to: number, delta: number): void {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  for (let p = from; p + 4 <= to; p += 4) view.setUint32(p, (view.getUint32(p, true) + delta) >>> 0, true);
}

/**
 * `count` fuzz inputs for a table parser, seeded: even cases random bytes (up to 39), odd ones
 * `valid` with about one byte in five replaced.
 */
export function* randomOrMutated(
  seed: number,
  valid: Uint8Array,
  count: number,
): Generator<[number, Uint8Array]> {
  const next = prng(seed);
  for (let n = 0; n < count; n++) {
    yield [
      n,
      n % 2 === 0
        ? Uint8Array.from({ length: next() % 40 }, () => next() & 0xff)
        : Uint8Array.from(valid, (b) => (next() % 5 === 0 ? next() & 0xff : b)),
    ];
  }
}
