/**
 * Fuzzing the ref-zstd decoder: mutated valid payloads (bit flips, overwritten, inserted and
 * dropped bytes, truncations, segments spliced from another payload) and random bytes behind a
 * valid magic. Every case must end in output no longer than declared or a RefZstdError, never
 * another exception or a hang. Seeded, so a failing case reproduces from its number. Version-2
 * payloads (recompressed gzip files), version-3 payloads (x86 diff pieces of a relinked
 * executable) and version-4 payloads (tar headers sent apart, beside diff pieces) get the same,
 * plus single changed varints in their tables.
 */
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { test } from "node:test";
import zstd from "zstd-napi";
import { decodeRefZstd } from "../../delta/refzstd/decoder.js";
import { encodeRefZstd } from "../../delta/refzstd/encoder.js";
import {
  REFZSTD_MAGIC,
  REFZSTD_VERSION,
  REFZSTD_VERSION_GZIP,
  REFZSTD_VERSION_SPLIT,
  REFZSTD_VERSION_X86,
  RefZstdError,
  VarintReader,
} from "../../delta/refzstd/format.js";
import { BufferSource } from "../../delta/vcdiff/source.js";
import { buildTar, patched, realFiles, withContent } from "../bundle/fixtures.js";
import { collect } from "../support/collect.js";
import { seededBytes } from "../support/random.js";
import { storedSegments, varints, withSegments } from "../support/refzstd-tables.js";
import { x86Pair } from "../support/x86-pair.js";
import { hintsFor } from "./hints.js";

const SEED = 20261128;
const MUTATED_CASES = 2500;
const RANDOM_CASES = 1000;
/**
 * Version-2 payloads (gzip pieces, inflated extents). A case that gets as far as gzip runs it
 * (~100 ms a case against ~10 for version 1), so byte mutations are few; table mutations change
 * one varint of a segment's tables and mostly end in the tables' checks.
 */
const GZIP_MUTATED_CASES = 20;
const GZIP_TABLE_CASES = 80;
const GZIP_RANDOM_CASES = 300;
/** Version-3 payloads (x86 diff pieces): a relinked executable of 256 KiB. */
const X86_MUTATED_CASES = 400;
const X86_TABLE_CASES = 200;
const X86_RANDOM_CASES = 300;
/** Version-4 payloads (headers sent apart): a new app's 300 small files beside a relinked executable. */
const SPLIT_MUTATED_CASES = 400;
const SPLIT_TABLE_CASES = 200;
const SPLIT_RANDOM_CASES = 300;

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

/** `next` encoded against `source` at level 3, once per segment size (with a reference twice that). */
function encodedAt(
  next: Uint8Array,
  source: BufferSource,
  segmentLiterals: readonly number[],
  hints: ReturnType<typeof hintsFor>,
): Promise<Buffer[]> {
  return Promise.all(
    segmentLiterals.map((segmentLiteral) =>
      collect(
        encodeRefZstd(new BufferSource(next), source, {
          ...hints,
          level: 3,
          segmentLiteral,
          reference: 2 * segmentLiteral,
        }),
      ),
    ),
  );
}

const docs = realFiles("/usr/share/common-licenses", "usr/share/licenses", { limit: 12, maxBytes: 200_000 });
const old = await buildTar(docs);
const next = await buildTar([
  ...docs.map((d, i) => (i % 3 === 0 ? withContent(d, patched(d.content!, i)) : d)),
  { path: "etc/new", type: "file", content: Buffer.from("a new file\n") },
]);
const source = new BufferSource(old);

// Version 2: changelogs (gzip -9n by the real gzip) edited at the top, each package also holding
// an unchanged library (copies between the gzip pieces). Each text is under the smaller
// segmentLiteral below: the encoder's planner requires that of a gzip piece.
const licences = ["Apache-2.0", "Artistic", "BSD", "CC0-1.0"].map((name) =>
  readFileSync(`/usr/share/common-licenses/${name}`),
);
function gzipPackages(edited: boolean) {
  return licences.flatMap((text, i) => [
    {
      path: `usr/share/doc/p${i}/changelog.Debian.gz`,
      type: "file" as const,
      content: execFileSync("gzip", ["-c", "-9", "-n"], {
        input: edited ? Buffer.concat([Buffer.from(`p${i} (2.0-1) unstable\n\n`), text]) : text,
      }),
    },
    { path: `usr/share/doc/p${i}/lib.so`, type: "file" as const, content: seededBytes(20_000, i + 1) },
  ]);
}
const gzipOld = await buildTar(gzipPackages(false));
const gzipNext = await buildTar(gzipPackages(true));
const gzipAgainst = { source: new BufferSource(gzipOld), size: gzipNext.length };
const gzipPayloads = await encodedAt(
  gzipNext,
  gzipAgainst.source,
  [24_576, 1 << 20],
  hintsFor(gzipNext, [gzipOld], { headerLengths: true }),
);
// Version 3: a relinked x86-64 executable (x86 diff pieces), in small segments and in one.
const x86 = x86Pair(256 * 1024, 128);
const x86Old = await buildTar([{ path: "usr/bin/app", type: "file", content: x86.oldFile }]);
const x86Next = await buildTar([{ path: "usr/bin/app", type: "file", content: x86.newFile }]);
const x86Against = { source: new BufferSource(x86Old), size: x86Next.length };
const x86Payloads = await encodedAt(
  x86Next,
  x86Against.source,
  [32_768, 1 << 20],
  hintsFor(x86Next, [x86Old]),
);
// Version 4: a new app's files (their headers go apart) beside the relinked executable (diff
// pieces in the same segments), in one segment and in three.
const appFiles = Array.from({ length: 300 }, (_, i) => ({
  path: `app/node_modules/pkg-${i % 13}/lib/${i}.js`,
  type: "file" as const,
  content: Buffer.from(`module.exports = (a) => a + ${i};\n`.repeat(1 + (i % 7))),
}));
const splitNext = await buildTar([{ path: "usr/bin/app", type: "file", content: x86.newFile }, ...appFiles]);
const splitAgainst = { source: x86Against.source, size: splitNext.length };
const splitPayloads = await encodedAt(
  splitNext,
  splitAgainst.source,
  [200_000, 1 << 20],
  hintsFor(splitNext, [x86Old]),
);
const payloads = await encodedAt(next, source, [4096, 16_384], hintsFor(next, [old]));

/** Decodes one case; returns the output length, or the error code. */
async function attempt(
  payload: Uint8Array,
  n: number,
  against: { source: BufferSource; size: number } = { source, size: next.length },
): Promise<number | string> {
  let produced = 0;
  try {
    for await (const chunk of decodeRefZstd(new BufferSource(payload), {
      source: against.source,
      expectedSize: against.size,
    })) {
      produced += chunk.length;
      assert.ok(
        produced <= against.size,
        `case ${n}: ${produced} bytes, more than the ${against.size} declared`,
      );
    }
    return produced;
  } catch (err) {
    assert.ok(err instanceof RefZstdError, `case ${n}: expected a RefZstdError, got ${String(err)}`);
    return err.code;
  }
}

function mutate(
  payload: Uint8Array,
  random: () => number,
  corpus: readonly Uint8Array[] = payloads,
): Uint8Array {
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
      const other = corpus[Math.floor(random() * corpus.length)]!;
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

/**
 * Decodes `cases` mutations of `corpus` against `against`: each ends in output or a RefZstdError,
 * and most are caught by a structural check or by zstd, so every code path gets exercised.
 */
async function mutatedEndWell(
  corpus: readonly Uint8Array[],
  cases: number,
  seed: number,
  against?: Parameters<typeof attempt>[2],
): Promise<void> {
  const random = prng(seed);
  const outcomes = new Map<string, number>();
  for (let n = 0; n < cases; n++) {
    const payload = mutate(corpus[n % corpus.length]!, random, corpus);
    const result = await attempt(payload, n, against);
    const key = typeof result === "number" ? "output" : result;
    outcomes.set(key, (outcomes.get(key) ?? 0) + 1);
  }
  for (const code of ["TRUNCATED", "CORRUPT", "LIMIT"])
    assert.ok((outcomes.get(code) ?? 0) > 0, `no ${code} among ${JSON.stringify([...outcomes])}`);
}

/** Decodes `cases` random bodies behind the magic and `version`: each ends in a RefZstdError. */
async function randomBodiesRefused(
  version: number,
  cases: number,
  seed: number,
  against?: Parameters<typeof attempt>[2],
): Promise<void> {
  const random = prng(seed);
  for (let n = 0; n < cases; n++) {
    const body = Uint8Array.from({ length: Math.floor(random() * 200) }, () => Math.floor(random() * 256));
    const payload = Buffer.concat([REFZSTD_MAGIC, Uint8Array.of(version), body]);
    const result = await attempt(payload, n, against);
    assert.equal(typeof result, "string", `case ${n}: random bytes decoded to ${String(result)} bytes`);
  }
}

test("mutated payloads end in output or a RefZstdError", async () => {
  await mutatedEndWell(payloads, MUTATED_CASES, SEED);
});

test("random bytes behind a valid magic end in a RefZstdError", async () => {
  await randomBodiesRefused(REFZSTD_VERSION, RANDOM_CASES, SEED + 1);
});

/**
 * `payload` with one varint of one segment's tables replaced (by a neighbour, 0, 1, or a random
 * value of random size), the tables recompressed and the segment header's tables length fixed.
 */
function mutateTables(payload: Uint8Array, random: () => number): Uint8Array {
  const segments = storedSegments(payload);
  const target = Math.floor(random() * segments.length);
  const { fields, tables } = segments[target]!;
  const t = new VarintReader(zstd.decompress(Buffer.from(tables)), 0, "tables");
  const values: number[] = [];
  while (t.remaining > 0) values.push(t.read("value"));
  const i = Math.floor(random() * values.length);
  const v = values[i]!;
  const choices = [v + 1, Math.max(0, v - 1), 0, 1, Math.floor(random() * 2 ** Math.floor(random() * 40))];
  values[i] = choices[Math.floor(random() * choices.length)]!;
  const changed = zstd.compress(Buffer.from(varints(values)));
  segments[target] = {
    ...segments[target]!,
    fields: fields.map((f, k) => (k === 4 ? changed.length : f)),
    tables: changed,
  };
  return withSegments(payload, segments);
}

/** Decodes `cases` payloads of `corpus` with one table varint changed: each ends in output or a RefZstdError. */
async function tableMutationsEndWell(
  corpus: readonly Uint8Array[],
  cases: number,
  seed: number,
  against: Parameters<typeof attempt>[2],
): Promise<void> {
  const random = prng(seed);
  const outcomes = new Map<string, number>();
  for (let n = 0; n < cases; n++) {
    const payload = mutateTables(corpus[n % corpus.length]!, random);
    const result = await attempt(payload, n, against);
    const key = typeof result === "number" ? "output" : result;
    outcomes.set(key, (outcomes.get(key) ?? 0) + 1);
  }
  for (const code of ["CORRUPT", "LIMIT"])
    assert.ok((outcomes.get(code) ?? 0) > 0, `no ${code} among ${JSON.stringify([...outcomes])}`);
}

/**
 * The tests of one later payload version: its payloads decode as they are, and byte mutations,
 * random bodies and changed table varints each end in output or a RefZstdError.
 */
function fuzzVersion(
  version: number,
  corpus: readonly Uint8Array[],
  against: { source: BufferSource; size: number },
  expected: Uint8Array,
  cases: { mutated: number; random: number; tables: number },
  seed: number,
): void {
  test(`the version-${version} fuzz payloads decode as they are`, async () => {
    for (const payload of corpus) {
      assert.equal(payload[REFZSTD_MAGIC.length], version);
      assert.deepEqual(
        await collect(decodeRefZstd(new BufferSource(payload), { source: against.source })),
        Buffer.from(expected),
      );
    }
  });
  test(`mutated version-${version} payloads end in output or a RefZstdError`, async () => {
    await mutatedEndWell(corpus, cases.mutated, seed, against);
  });
  test(`random bytes behind a valid magic and version ${version} end in a RefZstdError`, async () => {
    await randomBodiesRefused(version, cases.random, seed + 1, against);
  });
  test(`version-${version} payloads with one table varint changed end in output or a RefZstdError`, async () => {
    await tableMutationsEndWell(corpus, cases.tables, seed + 2, against);
  });
}

fuzzVersion(
  REFZSTD_VERSION_GZIP,
  gzipPayloads,
  gzipAgainst,
  gzipNext,
  { mutated: GZIP_MUTATED_CASES, random: GZIP_RANDOM_CASES, tables: GZIP_TABLE_CASES },
  SEED + 2,
);
fuzzVersion(
  REFZSTD_VERSION_X86,
  x86Payloads,
  x86Against,
  x86Next,
  { mutated: X86_MUTATED_CASES, random: X86_RANDOM_CASES, tables: X86_TABLE_CASES },
  SEED + 5,
);
fuzzVersion(
  REFZSTD_VERSION_SPLIT,
  splitPayloads,
  splitAgainst,
  splitNext,
  { mutated: SPLIT_MUTATED_CASES, random: SPLIT_RANDOM_CASES, tables: SPLIT_TABLE_CASES },
  SEED + 8,
);
