/**
 * Interop with Debian's xdelta3 as the independent peer: xdelta3's deltas (without secondary
 * compression, with and without the application header and checksums) decode byte-exact with
 * our decoder, and our encoder's deltas decode byte-exact with `xdelta3 -d`.
 */
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
import { createReadStream, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, test } from "node:test";
import { decode, type VcdiffHeader } from "../../delta/vcdiff/decoder.js";
import { encode } from "../../delta/vcdiff/encoder.js";
import { FileSource } from "../../delta/vcdiff/source.js";
import { buildCorpus, buildLargePair, LARGE_SIZE, type Pair } from "./corpus.js";

const dir = mkdtempSync(join(tmpdir(), "vcdiff-interop-"));
after(() => rmSync(dir, { recursive: true, force: true }));
const pairs = buildCorpus(dir);
let deltaCount = 0;

function xdelta3(args: string[]): void {
  execFileSync("xdelta3", args, { stdio: ["ignore", "ignore", "pipe"] });
}

function xdelta3Encode(pair: Pair, flags: string[]): string {
  const delta = join(dir, `xd-${deltaCount++}.vcdiff`);
  xdelta3(["-e", "-f", ...flags, ...(pair.source ? ["-s", pair.source] : []), pair.target, delta]);
  return delta;
}

/** Decodes a delta file with our decoder, streaming, and returns the sha256 and length of the output. */
async function ourDecode(
  delta: string,
  source: string | undefined,
): Promise<{ sha256: string; length: number; header?: VcdiffHeader }> {
  const src = source === undefined ? undefined : await FileSource.open(source);
  const hash = createHash("sha256");
  let length = 0;
  let header: VcdiffHeader | undefined;
  try {
    const stream = createReadStream(delta, { highWaterMark: 256 * 1024 });
    for await (const chunk of decode(stream, { source: src, onHeader: (h) => (header = h) })) {
      hash.update(chunk);
      length += chunk.length;
    }
  } finally {
    await src?.close();
  }
  return { sha256: hash.digest("hex"), length, header };
}

async function ourEncode(pair: Pair, options: Parameters<typeof encode>[2] = {}): Promise<string> {
  const delta = join(dir, `ours-${deltaCount++}.vcdiff`);
  const src = pair.source === undefined ? undefined : await FileSource.open(pair.source);
  const parts: Uint8Array[] = [];
  try {
    for await (const part of encode(createReadStream(pair.target), src, options)) parts.push(part);
  } finally {
    await src?.close();
  }
  writeFileSync(delta, Buffer.concat(parts));
  return delta;
}

function fileDigest(path: string): { sha256: string; length: number } {
  return {
    sha256: createHash("sha256").update(readFileSync(path)).digest("hex"),
    length: statSync(path).size,
  };
}

async function streamDigest(path: string): Promise<{ sha256: string; length: number }> {
  const hash = createHash("sha256");
  for await (const chunk of createReadStream(path)) hash.update(chunk);
  return { sha256: hash.digest("hex"), length: statSync(path).size };
}

// xdelta3 reads a word after -A as the header to write, so -A goes before other options.
const XDELTA3_VARIANTS: { flags: string[]; appHeader: boolean; pairs: (p: Pair) => boolean }[] = [
  { flags: ["-S", "none"], appHeader: true, pairs: () => true },
  { flags: ["-A", "-S", "none"], appHeader: false, pairs: () => true },
  { flags: ["-S", "none", "-n"], appHeader: true, pairs: () => true },
  { flags: ["-A", "-n", "-S", "none"], appHeader: false, pairs: () => true },
  { flags: ["-9", "-S", "none"], appHeader: true, pairs: (p) => statSync(p.target).size > 100_000 },
];

describe("xdelta3's deltas decode byte-exact with ours", () => {
  for (const variant of XDELTA3_VARIANTS) {
    for (const pair of pairs.filter(variant.pairs)) {
      test(`${pair.name} (xdelta3 -e ${variant.flags.join(" ")})`, async () => {
        const delta = xdelta3Encode(pair, variant.flags);
        const result = await ourDecode(delta, pair.source);
        const { header, ...digest } = result;
        assert.deepEqual(digest, fileDigest(pair.target));
        assert.equal(header?.appHeader !== undefined, variant.appHeader, "application header presence");
      });
    }
  }
});

describe("our encoder's deltas decode byte-exact with xdelta3 -d and with ours", () => {
  const variants: { name: string; options: Parameters<typeof encode>[2]; pairs: (p: Pair) => boolean }[] = [
    { name: "defaults", options: {}, pairs: () => true },
    {
      name: "no checksum, 64 KiB windows",
      options: { checksum: false, windowSize: 64 * 1024 },
      pairs: (p) => statSync(p.target).size < 2_000_000,
    },
  ];
  for (const variant of variants) {
    for (const pair of pairs.filter(variant.pairs)) {
      // An empty target gets one empty window: xdelta3 -d refuses a delta with none ("nothing to output").
      test(`${pair.name} (${variant.name})`, async () => {
        const delta = await ourEncode(pair, variant.options);
        const out = join(dir, `xd-out-${deltaCount++}`);
        xdelta3(["-d", "-f", ...(pair.source ? ["-s", pair.source] : []), delta, out]);
        const expected = fileDigest(pair.target);
        assert.deepEqual(fileDigest(out), expected, "xdelta3 -d");
        const { header: _, ...ours } = await ourDecode(delta, pair.source);
        assert.deepEqual(ours, expected, "our decoder");
      });
    }
  }
});

describe("on real data our delta is no larger than xdelta3 -9's", () => {
  // Real files of this machine (text, executables, tar layers), not random bytes: the issue's
  // bar is that our delta, before any zstd, is no larger than `xdelta3 -e -9 -S none`'s.
  const real = pairs.filter((p) => p.source !== undefined && /text|ELF|tar layers/.test(p.name));
  test("the corpus has real pairs of each kind", () => {
    for (const kind of [/^text/, /ELF/, /tar layers/])
      assert.ok(
        real.some((p) => kind.test(p.name)),
        `no ${kind} pair in ${pairs.map((p) => p.name).join(", ")}`,
      );
  });
  for (const pair of real) {
    test(pair.name, async (t) => {
      const ours = statSync(await ourEncode(pair)).size;
      const theirs = statSync(xdelta3Encode(pair, ["-A", "-9", "-S", "none"])).size;
      t.diagnostic(`ours ${ours} bytes, xdelta3 -9 ${theirs} (${(ours / theirs).toFixed(3)})`);
      assert.ok(ours <= theirs, `ours ${ours} bytes, xdelta3 -9 ${theirs}`);
    });
  }
});

describe("a large pair (over 200 MB) in both directions", () => {
  test("a 210 MB tar of /usr/lib and an edited copy", async () => {
    const pair = buildLargePair(dir);
    assert.equal(statSync(pair.source!).size, LARGE_SIZE);
    const expected = await streamDigest(pair.target);
    assert.ok(expected.length > 200_000_000);

    const theirs = xdelta3Encode(pair, ["-S", "none"]);
    const { header: _, ...decoded } = await ourDecode(theirs, pair.source);
    assert.deepEqual(decoded, expected, "xdelta3 -e, our decoder");
    rmSync(theirs);

    const ours = await ourEncode(pair);
    const out = join(dir, "large-out");
    xdelta3(["-d", "-f", "-s", pair.source!, ours, out]);
    assert.deepEqual(await streamDigest(out), expected, "our encoder, xdelta3 -d");
  });
});
