import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import {
  lstatSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  readlinkSync,
  rmSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { listTar } from "../../delta/tar/reader.js";
import { buildTar, opaqueWhiteout, type TarWriterEntry, whiteout, writeTar } from "../../delta/tar/writer.js";

async function* once(bytes: Uint8Array): AsyncGenerator<Uint8Array> {
  yield bytes;
}

const longPath = `usr/lib/${"very-long-directory-name/".repeat(6)}module.js`;
const entries: TarWriterEntry[] = [
  { path: "etc", type: "directory" },
  { path: "etc/hostname", type: "file", content: new TextEncoder().encode("edge-01\n") },
  { path: "etc/motd", type: "hardlink", linkName: "etc/hostname" },
  { path: "etc/localtime", type: "symlink", linkName: "/usr/share/zoneinfo/Etc/UTC" },
  { path: "bin/run.sh", type: "file", content: new TextEncoder().encode("#!/bin/sh\n"), mode: 0o755 },
  { path: longPath, type: "file", content: new Uint8Array(1000).fill(0x41) },
  { path: "data/naïve.txt", type: "file", content: new TextEncoder().encode("ü\n") },
  {
    path: "data/stream.bin",
    type: "file",
    stream: {
      size: 70000,
      async *open() {
        for (let i = 0; i < 7; i++) yield new Uint8Array(10000).fill(i);
      },
    },
  },
  whiteout("var/cache/old.db"),
  opaqueWhiteout("opt/app/"),
];

describe("tar writer", () => {
  let dir: string;
  let tar: Uint8Array;
  before(async () => {
    dir = mkdtempSync(join(tmpdir(), "tar-writer-"));
    tar = await buildTar(entries);
    writeFileSync(join(dir, "out.tar"), tar);
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  it("writes the same bytes every time", async () => {
    assert.deepEqual(await buildTar(entries), tar);
    const streamed: Uint8Array[] = [];
    for await (const chunk of writeTar(entries)) streamed.push(chunk);
    assert.deepEqual(Buffer.concat(streamed), Buffer.from(tar));
  });

  it("writes archives GNU tar lists and extracts exactly", () => {
    const listed = execFileSync("tar", ["--quoting-style=literal", "-tf", join(dir, "out.tar")], {
      encoding: "utf8",
    });
    assert.deepEqual(listed.trim().split("\n"), [
      "etc/",
      "etc/hostname",
      "etc/motd",
      "etc/localtime",
      "bin/run.sh",
      longPath,
      "data/naïve.txt",
      "data/stream.bin",
      "var/cache/.wh.old.db",
      "opt/app/.wh..wh..opq",
    ]);
    const root = join(dir, "x");
    mkdirSync(root);
    execFileSync("tar", ["-xf", join(dir, "out.tar"), "-C", root]);
    assert.equal(readFileSync(join(root, "etc/hostname"), "utf8"), "edge-01\n");
    assert.equal(lstatSync(join(root, "etc/motd")).ino, lstatSync(join(root, "etc/hostname")).ino);
    assert.equal(readlinkSync(join(root, "etc/localtime")), "/usr/share/zoneinfo/Etc/UTC");
    assert.equal(lstatSync(join(root, "bin/run.sh")).mode & 0o777, 0o755);
    assert.equal(readFileSync(join(root, longPath)).length, 1000);
    assert.equal(readFileSync(join(root, "data/naïve.txt"), "utf8"), "ü\n");
    const stream = readFileSync(join(root, "data/stream.bin"));
    assert.equal(stream.length, 70000);
    assert.equal(stream[69999], 6);
    assert.equal(lstatSync(join(root, "etc/hostname")).mtimeMs, 1577836800000);
  });

  it("reads back through the tar reader with the same names and sizes", async () => {
    const { entries: read, tail } = await listTar(once(tar));
    assert.deepEqual(
      read.map((e) => [e.path, e.type, e.size, e.linkName]),
      [
        ["etc/", "directory", 0, ""],
        ["etc/hostname", "file", 8, ""],
        ["etc/motd", "hardlink", 0, "etc/hostname"],
        ["etc/localtime", "symlink", 0, "/usr/share/zoneinfo/Etc/UTC"],
        ["bin/run.sh", "file", 10, ""],
        [longPath, "file", 1000, ""],
        ["data/naïve.txt", "file", 3, ""],
        ["data/stream.bin", "file", 70000, ""],
        ["var/cache/.wh.old.db", "file", 0, ""],
        ["opt/app/.wh..wh..opq", "file", 0, ""],
      ],
    );
    assert.equal(tail.bytes.length, 1024);
    assert.equal(tail.offset + 1024, tar.length);
  });

  it("refuses a stream that is shorter than its declared size", async () => {
    const bad: TarWriterEntry = {
      path: "short",
      type: "file",
      stream: {
        size: 10,
        async *open() {
          yield new Uint8Array(4);
        },
      },
    };
    await assert.rejects(buildTar([bad]), /"short" streamed 4 bytes but declared 10/);
  });
});
