/**
 * `deltaship codec-demo`: a short and honest
 * demo of the VCDIFF codec on data built from this machine's files: two versions of a tar
 * layer of /usr/share, encoded with our codec and with `xdelta3 -e -9 -S none` when installed,
 * each delta decoded by both tools and checked byte-exact against the target.
 */
import { execFileSync, spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { decodeBuffer } from "../delta/vcdiff/decoder.js";
import { encodeBuffer } from "../delta/vcdiff/encoder.js";
import { sampleFiles, tarLayer } from "./sample-layers.js";

/** Bytes of /usr/share files per layer: big enough to mean something, small enough to finish in seconds. */
const LAYER_BUDGET = 6 * 1024 * 1024;
const FILES_ROOT = "/usr/share";

export async function run(args: string[]): Promise<number> {
  if (args.includes("--help")) {
    console.log(
      "usage: deltaship codec-demo\n\nBuilds two versions of a tar layer from files in /usr/share, encodes the second\nagainst the first with deltaship's VCDIFF codec and with xdelta3 -9 (if installed),\ndecodes each delta with both, and checks every result byte for byte.",
    );
    return 0;
  }
  const dir = mkdtempSync(join(tmpdir(), "deltaship-demo-"));
  try {
    return await demo(dir);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

async function demo(dir: string): Promise<number> {
  console.log(
    "Deltaship codec demo: the VCDIFF codec on two versions of a tar layer built from this machine.",
  );
  console.log(
    "(The whole deployment runs locally with `npm start`; this compares the codec with xdelta3.)\n",
  );

  const files = sampleFiles(FILES_ROOT, LAYER_BUDGET, 8);
  if (files.length < 20) {
    console.error(
      `deltaship codec-demo: found only ${files.length} readable files under ${FILES_ROOT}; need 20 or more`,
    );
    return 1;
  }
  // Version 2 drops every 13th file, adds the last tenth and is rebuilt a few months later.
  const tenth = Math.floor(files.length / 10);
  const v1 = files.slice(0, files.length - tenth);
  const v2 = files.filter((_, i) => i % 13 !== 5);
  const sourcePath = join(dir, "layer-v1.tar");
  const targetPath = join(dir, "layer-v2.tar");
  tarLayer(sourcePath, v1, 1_700_000_000);
  tarLayer(targetPath, v2, 1_710_000_000);
  const source = readFileSync(sourcePath);
  const target = readFileSync(targetPath);
  const removed = v1.filter((f) => !v2.includes(f)).length;
  console.log(`source  layer-v1.tar  ${mb(source.length)}  ${v1.length} files from ${FILES_ROOT}`);
  console.log(
    `target  layer-v2.tar  ${mb(target.length)}  ${removed} files removed, ${v2.length - v1.length + removed} added, new mtimes\n`,
  );

  const rows: string[][] = [
    ["encoder", "delta", "of target", "encode", "decoded by deltaship", "decoded by xdelta3"],
  ];
  const expected = sha256(target);
  const hasXdelta3 = spawnSync("xdelta3", ["-V"], { stdio: "ignore" }).status === 0;
  let allExact = true;
  const verdict = (out: Uint8Array | undefined): string => {
    if (out === undefined) return "not installed";
    const exact = sha256(out) === expected;
    allExact &&= exact;
    return exact ? "byte-exact" : "MISMATCH";
  };

  let t = performance.now();
  const ours = await encodeBuffer(target, source);
  const oursEncode = seconds(t);
  writeFileSync(join(dir, "ours.vcdiff"), ours);
  t = performance.now();
  const oursByUs = await decodeBuffer(ours, source);
  const decodeTime = seconds(t);
  rows.push([
    "deltaship",
    mb(ours.length),
    pct(ours.length, target.length),
    oursEncode,
    `${verdict(oursByUs)} (${decodeTime})`,
    verdict(hasXdelta3 ? xdelta3Decode(dir, sourcePath, "ours.vcdiff") : undefined),
  ]);

  if (hasXdelta3) {
    const theirsPath = join(dir, "xdelta3.vcdiff");
    t = performance.now();
    execFileSync("xdelta3", ["-e", "-9", "-S", "none", "-f", "-s", sourcePath, targetPath, theirsPath]);
    const theirsEncode = seconds(t);
    const theirs = readFileSync(theirsPath);
    rows.push([
      "xdelta3 -9 -S none",
      mb(theirs.length),
      pct(theirs.length, target.length),
      theirsEncode,
      verdict(await decodeBuffer(theirs, source)),
      verdict(xdelta3Decode(dir, sourcePath, "xdelta3.vcdiff")),
    ]);
  } else {
    rows.push(["xdelta3", "-", "-", "-", "not installed", "not installed"]);
  }
  printTable(rows);
  console.log(
    allExact
      ? "\nEvery delta rebuilt layer-v2.tar byte for byte, whichever tool encoded or decoded it."
      : "\nA round trip did NOT reproduce the target: this is a bug, please report it.",
  );
  return allExact ? 0 : 1;
}

function xdelta3Decode(dir: string, sourcePath: string, delta: string): Uint8Array {
  const out = join(dir, `${delta}.out`);
  execFileSync("xdelta3", ["-d", "-f", "-s", sourcePath, join(dir, delta), out]);
  return readFileSync(out);
}

function printTable(rows: string[][]): void {
  const widths = rows[0].map((_, c) => Math.max(...rows.map((r) => r[c].length)));
  for (const row of rows)
    console.log(
      row
        .map((cell, c) => cell.padEnd(widths[c]))
        .join("  ")
        .trimEnd(),
    );
}

const sha256 = (b: Uint8Array): string => createHash("sha256").update(b).digest("hex");
const mb = (n: number): string => `${(n / 1e6).toFixed(2)} MB`;
const pct = (n: number, of: number): string => `${((100 * n) / Math.max(of, 1)).toFixed(2)}%`;
const seconds = (since: number): string => `${((performance.now() - since) / 1000).toFixed(2)} s`;
