/**
 * Fuzzing the decoder: mutated valid deltas (bit flips, truncations, inserted and overwritten
 * bytes, spliced pieces) and random bytes. Every case must end in a result or a VcdiffError,
 * never another exception or a hang. Seeded, so a failing case reproduces from its number.
 */
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { decodeBuffer } from "../../delta/vcdiff/decoder.js";
import { encodeBuffer } from "../../delta/vcdiff/encoder.js";
import { VCD_SOURCE, VCD_TARGET, VcdiffError } from "../../delta/vcdiff/format.js";
import { mutate, prng, randomBytes } from "./corpus.js";
import { buildDelta, bytes, code } from "./delta-builder.js";

const SEED = 20261128;
const CASES_PER_SEED_DELTA = 600;
const RANDOM_CASES = 1000;
/** Fuzzed windows stay small, so a mutated length cannot make one case slow. */
const FUZZ_MAX_WINDOW = 1 << 20;

const source = mutate(randomBytes(11, 40_000), 12, 30);
const target = mutate(source, 13, 40);

function xdelta3Delta(flags: string[]): Uint8Array {
  const dir = mkdtempSync(join(tmpdir(), "vcdiff-fuzz-"));
  try {
    writeFileSync(join(dir, "s"), source);
    writeFileSync(join(dir, "t"), target);
    execFileSync("xdelta3", ["-e", "-f", ...flags, "-s", join(dir, "s"), join(dir, "t"), join(dir, "d")]);
    return readFileSync(join(dir, "d"));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

function handBuilt(): Uint8Array {
  return buildDelta({
    appHeader: bytes("fuzz"),
    windows: [
      {
        indicator: VCD_SOURCE,
        segmentLength: 36,
        targetLength: 24,
        data: bytes("xyz"),
        inst: [code.copy(0, 4), code.copy(2, 4), code.copy(6, 4), code.add(2), code.run, 6, code.copy(1, 4)],
        addr: [10, 6, 10, 20],
        checksumOf: undefined,
      },
      {
        indicator: VCD_TARGET,
        segmentLength: 8,
        segmentPosition: 4,
        targetLength: 20,
        data: bytes("ab"),
        inst: [code.add(2), code.copy(0, 0), 10, code.copy(3, 8)],
        addr: [8, 0],
      },
    ],
  });
}

/** One mutation of a valid delta, chosen by the PRNG. */
function mutateDelta(valid: Uint8Array, next: () => number): Uint8Array {
  const out = Uint8Array.from(valid);
  switch (next() % 6) {
    case 0: {
      const flips = 1 + (next() % 8);
      for (let i = 0; i < flips; i++) out[next() % out.length] ^= 1 << (next() % 8);
      return out;
    }
    case 1:
      return out.slice(0, next() % out.length);
    case 2: {
      const at = next() % (out.length + 1);
      const inserted = randomBytes(next(), 1 + (next() % 16));
      return Uint8Array.from([...out.subarray(0, at), ...inserted, ...out.subarray(at)]);
    }
    case 3: {
      const interesting = [0x00, 0xff, 0x7f, 0x80, 0x81, 0x01, 0x04, 0x05];
      const writes = 1 + (next() % 4);
      for (let i = 0; i < writes; i++) out[next() % out.length] = interesting[next() % interesting.length];
      return out;
    }
    case 4: {
      const from = next() % out.length;
      const length = 1 + (next() % 32);
      const at = next() % out.length;
      return Uint8Array.from([
        ...out.subarray(0, at),
        ...out.subarray(from, from + length),
        ...out.subarray(at),
      ]);
    }
    default: {
      const at = next() % out.length;
      return Uint8Array.from([...out.subarray(0, at), ...out.subarray(at + 1)]); // a deleted byte
    }
  }
}

async function decodeCase(delta: Uint8Array, label: string): Promise<"ok" | VcdiffError["code"]> {
  try {
    const out = await decodeBuffer(delta, source, { maxWindowSize: FUZZ_MAX_WINDOW });
    // A result is bounded by the windows a delta of this size can hold.
    assert.ok(out.length <= FUZZ_MAX_WINDOW * delta.length, `${label}: ${out.length} bytes of output`);
    return "ok";
  } catch (err) {
    if (err instanceof VcdiffError) {
      assert.ok(
        err.offset >= 0 && err.offset <= delta.length,
        `${label}: offset ${err.offset} of ${delta.length}`,
      );
      return err.code;
    }
    const hex = Buffer.from(delta.subarray(0, 64)).toString("hex");
    assert.fail(`${label} threw ${String(err)} instead of a VcdiffError; delta starts ${hex}`);
  }
}

test("mutated valid deltas and random bytes end in a result or a VcdiffError", {
  timeout: 120_000,
}, async (t) => {
  const valid: [string, Uint8Array][] = [
    ["xdelta3 -S none", xdelta3Delta(["-S", "none"])],
    ["xdelta3 -A -n -S none", xdelta3Delta(["-A", "-n", "-S", "none"])],
    ["our encoder, 4 KiB windows", await encodeBuffer(target, source, { windowSize: 4096 })],
    ["hand-built", handBuilt()],
  ];
  for (const [name, delta] of valid) {
    const out = await decodeBuffer(delta, source);
    if (name === "hand-built") assert.equal(out.length, 44);
    else assert.deepEqual(out, target, `${name} decodes before mutation`);
  }
  const outcomes = new Map<string, number>();
  const tally = (outcome: string) => outcomes.set(outcome, (outcomes.get(outcome) ?? 0) + 1);
  for (const [v, [name, delta]] of valid.entries()) {
    for (let i = 0; i < CASES_PER_SEED_DELTA; i++) {
      const next = prng(SEED + v * 100_000 + i);
      tally(
        await decodeCase(mutateDelta(delta, next), `${name} mutation ${i} (seed ${SEED + v * 100_000 + i})`),
      );
    }
  }
  const magic = Uint8Array.of(0xd6, 0xc3, 0xc4, 0x00);
  for (let i = 0; i < RANDOM_CASES; i++) {
    const next = prng(SEED + 900_000 + i);
    const noise = randomBytes(next(), next() % 200);
    // Half the random cases get a valid magic and header indicator so they reach the window parser.
    const delta = i % 2 === 0 ? noise : Uint8Array.from([...magic, next() % 8, ...noise]);
    tally(await decodeCase(delta, `random case ${i} (seed ${SEED + 900_000 + i})`));
  }
  t.diagnostic(`outcomes: ${JSON.stringify(Object.fromEntries(outcomes))}`);
  const total = [...outcomes.values()].reduce((a, b) => a + b, 0);
  assert.equal(total, valid.length * CASES_PER_SEED_DELTA + RANDOM_CASES);
  // The mutations must reach deep into the decoder, not stop at the magic.
  for (const code of ["TRUNCATED", "CORRUPT", "BAD_MAGIC"]) {
    assert.ok((outcomes.get(code) ?? 0) > 0, `no case ended in ${code}: ${JSON.stringify([...outcomes])}`);
  }
});
