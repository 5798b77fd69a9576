/** `deltaship vcdiff encode|decode` run as a child process, with xdelta3 as the peer. */
import assert from "node:assert/strict";
import { execFileSync, spawnSync } from "node:child_process";
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, test } from "node:test";
import { fileURLToPath } from "node:url";

const BIN = fileURLToPath(new URL("../../bin/deltaship.mjs", import.meta.url));
const dir = mkdtempSync(join(tmpdir(), "vcdiff-cli-"));
after(() => rmSync(dir, { recursive: true, force: true }));

function deltaship(...args: string[]): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [BIN, "vcdiff", ...args], { encoding: "utf8", timeout: 60_000 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

const path = (name: string) => join(dir, name);
const source = Buffer.from("The quick brown fox jumps over the lazy dog.\n".repeat(4000));
const target = Buffer.from(
  source.toString().replaceAll("lazy dog", "sleepy cat").slice(1000) + "and then it rested.\n",
);
writeFileSync(path("source"), source);
writeFileSync(path("target"), target);

describe("deltaship vcdiff", () => {
  test("decode rebuilds the target from an xdelta3 delta", () => {
    execFileSync("xdelta3", [
      "-e",
      "-f",
      "-S",
      "none",
      "-s",
      path("source"),
      path("target"),
      path("xd.vcdiff"),
    ]);
    const r = deltaship(
      "decode",
      "--source",
      path("source"),
      "--delta",
      path("xd.vcdiff"),
      "--out",
      path("out1"),
    );
    assert.equal(r.status, 0, r.stderr);
    assert.deepEqual(readFileSync(path("out1")), target);
  });

  test("encode writes a delta that xdelta3 -d decodes, with --window and --no-checksum too", () => {
    for (const extra of [[], ["--window", "64K", "--no-checksum"]]) {
      const r = deltaship(
        "encode",
        "--source",
        path("source"),
        "--target",
        path("target"),
        "--out",
        path("ours"),
        ...extra,
      );
      assert.equal(r.status, 0, r.stderr);
      assert.ok(readFileSync(path("ours")).length < target.length / 10, "the delta is small");
      execFileSync("xdelta3", ["-d", "-f", "-s", path("source"), path("ours"), path("out2")]);
      assert.deepEqual(readFileSync(path("out2")), target);
    }
  });

  test("encode and decode work without a source", () => {
    assert.equal(deltaship("encode", "--target", path("target"), "--out", path("alone")).status, 0);
    const r = deltaship("decode", "--delta", path("alone"), "--out", path("out3"));
    assert.equal(r.status, 0, r.stderr);
    assert.deepEqual(readFileSync(path("out3")), target);
  });

  test("a delta that needs a source fails with exit 1 and leaves no output", () => {
    const r = deltaship("decode", "--delta", path("xd.vcdiff"), "--out", path("none"));
    assert.equal(r.status, 1);
    assert.match(
      r.stderr,
      /^deltaship vcdiff decode: VCDIFF source at byte \d+: window 0 copies from a source file/,
    );
    assert.equal(existsSync(path("none")), false);
    assert.deepEqual(
      readdirSync(dir).filter((n) => n.includes("partial")),
      [],
    );
  });

  test("the wrong source fails the checksum with exit 1", () => {
    writeFileSync(path("other"), Buffer.from(source).fill(0x41, 0, 2000));
    const r = deltaship(
      "decode",
      "--source",
      path("other"),
      "--delta",
      path("xd.vcdiff"),
      "--out",
      path("bad"),
    );
    assert.equal(r.status, 1);
    assert.match(r.stderr, /VCDIFF checksum at byte \d+: window 0 decodes to Adler-32/);
    assert.equal(existsSync(path("bad")), false);
  });

  test("a missing file is named", () => {
    const r = deltaship("decode", "--delta", path("missing"), "--out", path("x"));
    assert.equal(r.status, 1);
    assert.equal(r.stderr.trim(), `deltaship vcdiff decode: ${path("missing")}: no such file`);
  });

  test("usage errors exit 2 with the usage text; --help exits 0", () => {
    for (const args of [
      [],
      ["frobnicate"],
      ["decode", "--delta", path("xd.vcdiff")],
      ["encode", "--target", path("target"), "--out", path("y"), "--window", "lots"],
      ["decode", "--delta", path("xd.vcdiff"), "--out", path("y"), "--window", "8M"],
      ["decode", "--bogus"],
    ]) {
      const r = deltaship(...args);
      assert.equal(r.status, 2, `${args.join(" ")}: ${r.stderr}`);
      assert.match(r.stdout + r.stderr, /usage:\n {2}deltaship vcdiff encode/);
    }
    const help = deltaship("--help");
    assert.equal(help.status, 0);
    assert.match(help.stdout, /deltaship vcdiff decode \[--source S\] --delta D --out T/);
  });
});

describe("deltaship codec-demo", () => {
  test("builds two tar layers of this machine's files, and every delta round trip is byte-exact", () => {
    const r = spawnSync(process.execPath, [BIN, "codec-demo"], { encoding: "utf8", timeout: 120_000 });
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /^deltaship\s+\S+ MB .*byte-exact \([\d.]+ s\)\s+byte-exact$/m);
    assert.match(r.stdout, /^xdelta3 -9 -S none\s+.*byte-exact\s+byte-exact$/m);
    assert.match(r.stdout, /Every delta rebuilt layer-v2\.tar byte for byte/);
  });
});
