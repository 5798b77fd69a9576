/**
 * Fuzzing the ref-zstd decoder: mutated valid payloads (bit flips, overwritten, inserted and
 * dropped bytes, truncations, segments spliced from another payload) and random bytes behind a
 * valid magic. Every case must end in output no longer than declared or a RefZstdError, never
 * another exception or a hang. Seeded, so a failing case reproduces from its number.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { decodeRefZstd } from "../../delta/refzstd/decoder.js";
import { encodeRefZstd } from "../../delta/refzstd/encoder.js";
import { REFZSTD_MAGIC, REFZSTD_VERSION, RefZstdError } from "../../delta/refzstd/format.js";
import { BufferSource } from "../../delta/vcdiff/source.js";
import { buildTar, patched, realFiles, withContent } from "../bundle/fixtures.js";
import { hintsFor } from "./hints.js";

const SEED = 20261128;
const MUTATED_CASES = 2500;
const RANDOM_CASES = 1000;

/** mulberry32: a small seeded generator, so every case is reproducible. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

async function collect(parts: AsyncIterable<Uint8Array>): Promise<Buffer> {
  const chunks: Uint8Array[] = [];
  for await (const part of parts) chunks.push(Buffer.from(part));
  return Buffer.concat(chunks);
}

const docs = realFiles("/usr/share/common-licenses", "usr/share/licenses", { limit: 12, maxBytes: 200_000 });
const old = await buildTar(docs);
const next = await buildTar([
  ...docs.map((d, i) => (i % 3 === 0 ? withContent(d, patched(d.content!, i)) : d)),
  { path: "etc/new", type: "file", content: Buffer.from("a new file\n") },
]);
const source = new BufferSource(old);
const payloads = await Promise.all(
  [4096, 16_384].map((segmentLiteral) =>
    collect(
      encodeRefZstd(new BufferSource(next), source, {
        ...hintsFor(next, [old]),
        level: 3,
        segmentLiteral,
        reference: 2 * segmentLiteral,
      }),
    ),
  ),
);

/** Decodes one case; returns the output length, or the error code. */
async function attempt(payload: Uint8Array, n: number): Promise<number | string> {
  let produced = 0;
  try {
    for await (const chunk of decodeRefZstd(new BufferSource(payload), {
      source,
      expectedSize: next.length,
    })) {
      produced += chunk.length;
      assert.ok(
        produced <= next.length,
        `case ${n}: ${produced} bytes, more than the ${next.length} declared`,
      );
    }
    return produced;
  } catch (err) {
    assert.ok(err instanceof RefZstdError, `case ${n}: expected a RefZstdError, got ${String(err)}`);
    return err.code;
  }
}

function mutate(payload: Uint8Array, random: () => number): Uint8Array {
  const at = () => Math.floor(random() * payload.length);
  const byte = () => Math.floor(random() * 256);
  switch (Math.floor(random() * 6)) {
    case 0: {
      const out = Uint8Array.from(payload);
      const i = at();
      out[i]! ^= 1 << Math.floor(random() * 8);
      return out;
    }
    case 1: {
      const out = Uint8Array.from(payload);
      for (let k = 0; k < 1 + Math.floor(random() * 4); k++) out[at()] = byte();
      return out;
    }
    case 2:
      return payload.subarray(0, at());
    case 3: {
      const i = at();
      const extra = Uint8Array.from({ length: 1 + Math.floor(random() * 8) }, byte);
      return Buffer.concat([payload.subarray(0, i), extra, payload.subarray(i)]);
    }
    case 4: {
      const i = at();
      return Buffer.concat([payload.subarray(0, i), payload.subarray(i + 1 + Math.floor(random() * 16))]);
    }
    default: {
      const other = payloads[Math.floor(random() * payloads.length)]!;
      const j = Math.floor(random() * other.length);
      return Buffer.concat([payload.subarray(0, at()), other.subarray(j)]);
    }
  }
}

test("the fuzz payloads decode as they are", async () => {
  for (const payload of payloads)
    assert.deepEqual(await collect(decodeRefZstd(new BufferSource(payload), { source })), Buffer.from(next));
  assert.ok(payloads[0]!.length > 0);
});

test("mutated payloads end in output or a RefZstdError", async () => {
  const random = prng(SEED);
  const outcomes = new Map<string, number>();
  for (let n = 0; n < MUTATED_CASES; n++) {
    const payload = mutate(payloads[n % payloads.length]!, random);
    const result = await attempt(payload, n);
    const key = typeof result === "number" ? "output" : result;
    outcomes.set(key, (outcomes.get(key) ?? 0) + 1);
  }
  // Most mutations are caught by a structural check or by zstd; every code path gets exercised.
  for (const code of ["TRUNCATED", "CORRUPT", "LIMIT"])
    assert.ok((outcomes.get(code) ?? 0) > 0, `no ${code} among ${JSON.stringify([...outcomes])}`);
});

test("random bytes behind a valid magic end in a RefZstdError", async () => {
  const random = prng(SEED + 1);
  for (let n = 0; n < RANDOM_CASES; n++) {
    const body = Uint8Array.from({ length: Math.floor(random() * 200) }, () => Math.floor(random() * 256));
    const payload = Buffer.concat([REFZSTD_MAGIC, Uint8Array.of(REFZSTD_VERSION), body]);
    const result = await attempt(payload, n);
    assert.equal(typeof result, "string", `case ${n}: random bytes decoded to ${String(result)} bytes`);
  }
});
