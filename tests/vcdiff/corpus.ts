import {
  appendFileSync,
  closeSync,
  existsSync,
  openSync,
  readdirSync,
  readFileSync,
  readSync,
  statSync,
  truncateSync,
  writeFileSync,
  writeSync,
} from "node:fs";
import { join } from "node:path";

import { sampleFiles, tarLayer } from "../../cli/sample-layers.js";
import { prng } from "../support/random.js";

export { prng };

export function randomBytes(seed: number, length: number): Uint8Array {
  const next = prng(seed);
  const out = new Uint8Array(length);
  for (let i = 0; i < length; i += 4) {
    const v = next();
    out[i] = v;
    if (i + 1 < length) out[i + 1] = v >>> 8;
    if (i + 2 < length) out[i + 2] = v >>> 16;
    if (i + 3 < length) out[i + 3] = v >>> 24;
  }
  return out;
}

/** A new version of data: overwritten bytes, inserted blocks and deleted blocks at seeded places. */
export function mutate(data: Uint8Array, seed: number, edits: number): Uint8Array {
  const next = prng(seed);
  const parts: Uint8Array[] = [];
  const cuts = Array.from({ length: edits }, () => (data.length === 0 ? 0 : next() % data.length)).sort(
    (a, b) => a - b,
  );
  let at = 0;
  for (const [i, cut] of cuts.entries()) {
    if (cut < at) continue;
    parts.push(data.slice(at, cut));
    const kind = next() % 3;
    const size = 1 + (next() % 64);
    if (kind === 0) {
      parts.push(randomBytes(next(), size)); // replace
      at = Math.min(data.length, cut + size);
    } else if (kind === 1) {
      parts.push(randomBytes(next(), size * (1 + (i % 50)))); // insert
      at = cut;
    } else {
      at = Math.min(data.length, cut + size * 16); // delete
    }
  }
  parts.push(data.slice(at));
  return concat(parts);
}

export function concat(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

export interface Pair {
  name: string;
  /** Absent: the delta is made without a source. */
  source?: string;
  target: string;
}

function firstExisting(paths: string[]): string | undefined {
  return paths.find((p) => existsSync(p));
}

/** The interop corpus: 0 bytes to a few MB, every kind the issue names except the large pair. */
export function buildCorpus(dir: string): Pair[] {
  const file = (name: string, data: Uint8Array | string): string => {
    const path = join(dir, name);
    writeFileSync(path, data);
    return path;
  };
  const pairs: Pair[] = [];
  const empty = file("empty", new Uint8Array(0));
  const random = randomBytes(1, 1 << 20);
  const randomFile = file("random", random);
  pairs.push({ name: "empty source and empty target", source: empty, target: empty });
  pairs.push({ name: "empty target", source: randomFile, target: empty });
  pairs.push({ name: "empty source", source: empty, target: file("random-small", randomBytes(2, 5000)) });
  pairs.push({ name: "no source, empty target", target: empty });
  pairs.push({ name: "one byte", source: file("one-a", "a"), target: file("one-b", "b") });
  pairs.push({ name: "identical random files", source: randomFile, target: randomFile });
  pairs.push({
    name: "unrelated random data",
    source: randomFile,
    target: file("random-2", randomBytes(3, 300_000)),
  });
  pairs.push({
    name: "edited random data",
    source: randomFile,
    target: file("random-edited", mutate(random, 4, 200)),
  });

  const licenses = "/usr/share/common-licenses";
  const textParts = existsSync(licenses)
    ? readdirSync(licenses)
        .sort()
        .map((n) => join(licenses, n))
        .filter((p) => statSync(p).isFile())
        .map((p) => readFileSync(p))
    : [];
  const text =
    textParts.length > 0 ? concat(textParts) : new TextEncoder().encode("lorem ipsum dolor ".repeat(50_000));
  const textEdited = new TextEncoder().encode(
    new TextDecoder().decode(text).replaceAll("software", "firmware").replaceAll("License", "Licence"),
  );
  const textFile = file("text", text);
  pairs.push({ name: "no source, text", target: textFile });
  pairs.push({ name: "text with words replaced", source: textFile, target: file("text-edited", textEdited) });
  pairs.push({
    name: "text with blocks moved",
    source: textFile,
    target: file("text-moved", mutate(text, 5, 40)),
  });

  const elf = firstExisting(["/usr/bin/zstd", "/usr/bin/xdelta3", "/usr/bin/tar"])!;
  const elfBytes = readFileSync(elf);
  const elfPatched = new Uint8Array(elfBytes);
  const next = prng(6);
  for (let i = 0; i < 300; i++) elfPatched[next() % elfPatched.length] ^= 1 + (next() % 255);
  pairs.push({
    name: `ELF binary ${elf} with patched bytes`,
    source: elf,
    target: file("elf-patched", elfPatched),
  });
  pairs.push({
    name: `ELF binary ${elf}, edited`,
    source: elf,
    target: file("elf-edited", mutate(elfBytes, 7, 100)),
  });
  if (existsSync("/usr/bin/bsdiff") && existsSync("/usr/bin/bspatch")) {
    pairs.push({
      name: "two related ELF builds (bsdiff, bspatch)",
      source: "/usr/bin/bsdiff",
      target: "/usr/bin/bspatch",
    });
  }

  // Two tar layers of /usr/share: the second drops some files, adds others and has new times.
  const files = sampleFiles("/usr/share", 8 << 20, 4);
  const cut = Math.floor(files.length * 0.7);
  const older = files.slice(0, cut);
  const newer = files.slice(Math.floor(cut / 10)).filter((_, i) => i % 17 !== 0);
  const layerA = join(dir, "layer-a.tar");
  const layerB = join(dir, "layer-b.tar");
  tarLayer(layerA, older, 1_700_000_000);
  tarLayer(layerB, newer, 1_710_000_000);
  pairs.push({ name: "tar layers of /usr/share", source: layerA, target: layerB });
  return pairs;
}

/** Size of the large pair: the issue asks for at least 200 MB. */
export const LARGE_SIZE = 210 * 1000 * 1000;

/**
 * The large pair: a tar of /usr/lib cut to LARGE_SIZE (padded with seeded random bytes where
 * /usr/lib is smaller) and an edited copy, made in 1 MiB pieces to keep memory small.
 */
export function buildLargePair(dir: string): Pair {
  const source = join(dir, "large-source.tar");
  const target = join(dir, "large-target.tar");
  tarLayer(source, sampleFiles("/usr/lib", LARGE_SIZE * 1.2, 4), 1_700_000_000);
  const tarSize = statSync(source).size;
  if (tarSize > LARGE_SIZE) truncateSync(source, LARGE_SIZE);
  for (let at = tarSize, seed = 100; at < LARGE_SIZE; at += PIECE, seed++) {
    appendFileSync(source, randomBytes(seed, Math.min(PIECE, LARGE_SIZE - at)));
  }
  const input = openSync(source, "r");
  const output = openSync(target, "w");
  try {
    const piece = new Uint8Array(PIECE);
    for (let index = 0, at = 0; at < LARGE_SIZE; index++, at += PIECE) {
      const n = readSync(input, piece, 0, PIECE, at);
      let data: Uint8Array = piece.subarray(0, n);
      if (index % 50 === 17) continue; // a deleted MiB
      if (index % 50 === 33) writeSync(output, randomBytes(index, PIECE)); // an inserted MiB
      if (index % 7 === 3) data = mutate(data, index, 20);
      writeSync(output, data);
    }
  } finally {
    closeSync(input);
    closeSync(output);
  }
  return { name: "large tar of /usr/lib (210 MB) and an edited copy", source, target };
}

const PIECE = 1 << 20;
