import assert from "node:assert/strict";
import { execFileSync, spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import {
  closeSync,
  ftruncateSync,
  linkSync,
  mkdirSync,
  mkdtempSync,
  openSync,
  readFileSync,
  rmSync,
  symlinkSync,
  writeFileSync,
  writeSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { concatBytes, TarError } from "../../delta/tar/format.js";
import type { TarEntry } from "../../delta/tar/header.js";
import { listTar, type TarItem, TarReader } from "../../delta/tar/reader.js";
import { encodeHeader } from "../../delta/tar/writer.js";

async function* chunked(bytes: Uint8Array, size: number): AsyncGenerator<Uint8Array> {
  for (let i = 0; i < bytes.length; i += size) yield bytes.subarray(i, Math.min(bytes.length, i + size));
}

interface Walked {
  entries: TarEntry[];
  hashes: Map<string, string>;
  rebuilt: Uint8Array;
}

/** Reads every entry, hashing regular files, and reassembles the tar from the parts the reader hands out. */
async function walk(bytes: Uint8Array, chunkSize: number): Promise<Walked> {
  const reader = new TarReader(chunked(bytes, chunkSize));
  const parts: Uint8Array[] = [];
  const entries: TarEntry[] = [];
  const hashes = new Map<string, string>();
  let expectedOffset = 0;
  for await (const item of reader) {
    const e = item.entry;
    assert.equal(e.headerOffset, expectedOffset, `header offset of ${e.path}`);
    assert.equal(e.dataOffset, e.headerOffset + e.header.length);
    entries.push(e);
    parts.push(e.header);
    const hash = createHash("sha256");
    let seen = 0;
    for await (const chunk of item.data) {
      hash.update(chunk);
      parts.push(chunk.slice());
      seen += chunk.length;
    }
    assert.equal(seen, e.size);
    if (e.type === "file") hashes.set(e.path, hash.digest("hex"));
    parts.push(item.padding);
    expectedOffset = e.endOffset;
  }
  assert.equal(reader.tail.offset, expectedOffset);
  parts.push(reader.tail.bytes);
  return { entries, hashes, rebuilt: concatBytes(parts) };
}

function sha256(bytes: Uint8Array): string {
  return createHash("sha256").update(bytes).digest("hex");
}

describe("tar reader on archives made by GNU tar", () => {
  let dir: string;
  const longDir = `${"d".repeat(60)}/${"e".repeat(60)}`;
  const longName = `${longDir}/${"f".repeat(120)}.txt`;
  const sparseData = new Uint8Array(4096).fill(0x5a);

  before(() => {
    dir = mkdtempSync(join(tmpdir(), "tar-reader-"));
    const root = join(dir, "root");
    mkdirSync(join(root, longDir), { recursive: true });
    writeFileSync(join(root, longName), "a file with a very long name\n");
    writeFileSync(join(root, "small.txt"), "hello\n");
    writeFileSync(join(root, "block.bin"), new Uint8Array(512).fill(7));
    writeFileSync(join(root, "empty"), "");
    linkSync(join(root, "small.txt"), join(root, "hard.txt"));
    symlinkSync(`../${"l".repeat(150)}`, join(root, "long-link"));
    symlinkSync("small.txt", join(root, "sym"));
    writeFileSync(join(root, "ünïcødé.txt"), "utf8\n");
    execFileSync("mkfifo", [join(root, "pipe")]);
    // A sparse file: data at 0 and 1 MiB, holes elsewhere, 3 MiB long.
    const fd = openSync(join(root, "sparse.img"), "w");
    writeSync(fd, sparseData, 0, sparseData.length, 0);
    writeSync(fd, sparseData, 0, sparseData.length, 1024 * 1024);
    ftruncateSync(fd, 3 * 1024 * 1024);
    closeSync(fd);
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  const formats = ["gnu", "pax", "ustar-ish oldgnu", "posix sparse"] as const;
  for (const format of formats) {
    it(`rebuilds a ${format} archive byte for byte and reads its names, links and file hashes`, async () => {
      const out = join(dir, `${format.replace(/\W/g, "_")}.tar`);
      const args =
        format === "gnu"
          ? ["--format=gnu", "--sparse"]
          : format === "pax"
            ? ["--format=pax"]
            : format === "posix sparse"
              ? ["--format=posix", "--sparse"]
              : ["--format=oldgnu", "--sparse"];
      execFileSync("tar", [
        ...args,
        "--sort=name",
        "--owner=0",
        "--group=0",
        "-cf",
        out,
        "-C",
        join(dir, "root"),
        ".",
      ]);
      const bytes = new Uint8Array(readFileSync(out));
      for (const chunkSize of [509, 512, 65536]) {
        const { rebuilt } = await walk(bytes, chunkSize);
        assert.equal(sha256(rebuilt), sha256(bytes), `chunk size ${chunkSize}`);
      }
      const { entries, hashes } = await walk(bytes, 4096);
      const byPath = new Map(entries.map((e) => [e.path, e]));
      assert.equal(byPath.get(`./${longName}`)?.type, "file");
      assert.equal(
        hashes.get(`./${longName}`),
        sha256(new TextEncoder().encode("a file with a very long name\n")),
      );
      assert.equal(hashes.get("./hard.txt"), sha256(new TextEncoder().encode("hello\n")));
      assert.equal(byPath.get("./empty")?.size, 0);
      assert.equal(byPath.get("./sym")?.type, "symlink");
      assert.equal(byPath.get("./sym")?.linkName, "small.txt");
      assert.equal(byPath.get("./long-link")?.linkName, `../${"l".repeat(150)}`);
      assert.equal(byPath.get("./ünïcødé.txt")?.type, "file");
      // GNU tar stores the first name it meets as the file and the later one as the link.
      assert.equal(byPath.get("./small.txt")?.type, "hardlink");
      assert.equal(byPath.get("./small.txt")?.linkName, "./hard.txt");
      assert.equal(byPath.get("./hard.txt")?.type, "file");
      assert.equal(byPath.get(`./${longDir}/`)?.type, "directory");
      assert.equal(byPath.get("./small.txt")?.mode, 0o644);
      assert.equal(byPath.get("./pipe")?.type, "fifo");
      const sparse = byPath.get("./sparse.img")!;
      if (format === "pax") {
        assert.equal(sparse.sparse, false);
        assert.equal(sparse.size, 3 * 1024 * 1024);
      } else {
        assert.equal(sparse.sparse, true);
        assert.ok(sparse.size < 64 * 1024, `stored sparse size ${sparse.size}`);
      }
      // Every path GNU tar lists is one we found, in the same order.
      const listed = execFileSync("tar", ["--quoting-style=literal", "-tf", out], { encoding: "utf8" })
        .split("\n")
        .filter((l) => l.length > 0);
      assert.deepEqual(
        entries.map((e) => e.path),
        listed,
      );
    });
  }

  it("keeps a sparse map that needs GNU extension blocks", async () => {
    const root = join(dir, "many-holes");
    mkdirSync(root);
    const fd = openSync(join(root, "holes.img"), "w");
    for (let i = 0; i < 40; i++) writeSync(fd, sparseData, 0, 4096, i * 64 * 1024);
    ftruncateSync(fd, 41 * 64 * 1024);
    closeSync(fd);
    const out = join(dir, "holes.tar");
    execFileSync("tar", ["--format=gnu", "--sparse", "-cf", out, "-C", root, "holes.img"]);
    const bytes = new Uint8Array(readFileSync(out));
    const { entries, rebuilt } = await walk(bytes, 1000);
    assert.equal(sha256(rebuilt), sha256(bytes));
    assert.equal(entries.length, 1);
    assert.equal(entries[0]!.sparse, true);
    assert.ok(entries[0]!.header.length > 512, "extension blocks belong to the header");
    assert.equal(entries[0]!.size, 40 * 4096);
  });
});

describe("tar reader on other writers' archives", () => {
  it("keeps a git archive's global PAX header with the first entry", async () => {
    const dir = mkdtempSync(join(tmpdir(), "tar-git-"));
    try {
      const git = (...args: string[]) =>
        execFileSync("git", ["-c", "user.name=t", "-c", "user.email=t@example.com", ...args], { cwd: dir });
      git("init", "-q");
      writeFileSync(join(dir, "readme.md"), "# hi\n");
      git("add", "readme.md");
      git("commit", "-q", "-m", "one");
      const bytes = new Uint8Array(git("archive", "--format=tar", "HEAD"));
      const { entries, rebuilt } = await walk(bytes, 300);
      assert.equal(sha256(rebuilt), sha256(bytes));
      assert.deepEqual(
        entries.map((e) => e.path),
        ["readme.md"],
      );
      assert.equal(entries[0]!.header[156], 0x67, "the group starts with the 'g' header");
      assert.equal(entries[0]!.headerOffset, 0);
      assert.equal(entries[0]!.dataOffset, 1536);

      // An empty commit: a global header and nothing after it but the end-of-archive marker.
      git("commit", "-q", "--allow-empty", "-m", "two");
      git("rm", "-q", "readme.md");
      git("commit", "-q", "-m", "three");
      const empty = new Uint8Array(git("archive", "--format=tar", "HEAD"));
      const read = await walk(empty, 300);
      assert.deepEqual(read.entries, []);
      assert.equal(sha256(read.rebuilt), sha256(empty));
      const { tail } = await listTar(chunked(empty, 4096));
      assert.equal(tail.offset, 0);
      assert.equal(tail.bytes[156], 0x67);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("keeps non-zero padding and bytes after the end-of-archive marker exactly", async () => {
    const bytes = gnuTar({ "a.txt": "abc" }).slice();
    bytes.fill(0x55, 512 + 3, 1024); // padding after a.txt's data
    const end = 1024 + 1024;
    const withTrailer = concatBytes([bytes.subarray(0, end), new TextEncoder().encode("trailing junk")]);
    const { rebuilt } = await walk(withTrailer, 64);
    assert.deepEqual(rebuilt, withTrailer);
    const reader = new TarReader(chunked(withTrailer, 64));
    for await (const item of reader) {
      assert.equal(item.entry.path, "a.txt");
      assert.throws(() => item.padding, /asked for before its data was read or skipped/);
      for await (const _ of item.data) void _;
      assert.deepEqual(item.padding, new Uint8Array(509).fill(0x55));
    }
    assert.equal(reader.tail.offset, 1024);
    assert.equal(reader.tail.bytes.length, 1024 + 13);
  });
});

function gnuTar(files: Record<string, string>): Uint8Array {
  const dir = mkdtempSync(join(tmpdir(), "tar-hostile-"));
  try {
    for (const [name, content] of Object.entries(files)) writeFileSync(join(dir, name), content);
    const out = join(dir, "out.tar");
    execFileSync("tar", ["--format=gnu", "-cf", out, "-C", dir, ...Object.keys(files)]);
    return new Uint8Array(readFileSync(out));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

async function expectTarError(bytes: Uint8Array, code: string, offset: number): Promise<void> {
  await assert.rejects(
    async () => {
      const reader = new TarReader(chunked(bytes, 100));
      for await (const item of reader) for await (const _ of item.data) void _;
    },
    (err: unknown) => {
      assert.ok(err instanceof TarError, String(err));
      assert.equal(err.code, code, err.message);
      assert.equal(err.offset, offset, err.message);
      return true;
    },
  );
}

describe("tar reader on hostile input", () => {
  const good = gnuTar({ "a.txt": "x".repeat(700), "b.txt": "bee\n" });

  it("rejects a header whose checksum does not match", async () => {
    const bad = good.slice();
    bad[1536 + 10] ^= 0x01; // inside b.txt's name, second header (a.txt: header + 2 data blocks)
    await expectTarError(bad, "CHECKSUM", 1536);
  });

  it("rejects an archive truncated inside file data", async () => {
    await expectTarError(good.subarray(0, 800), "TRUNCATED", 800);
  });

  it("rejects an archive truncated inside a header", async () => {
    await expectTarError(good.subarray(0, 1536 + 100), "TRUNCATED", 1536);
  });

  it("rejects an absurd base-256 size", async () => {
    const bad = good.slice();
    bad.fill(0, 124, 136);
    bad[124] = 0x80;
    bad[125] = 0x7f; // about 2^87
    rechecksum(bad, 0);
    await expectTarError(bad, "FIELD", 124);
  });

  it("rejects a size above the entry limit", async () => {
    const bad = good.slice();
    bad.fill(0, 124, 136);
    bad[124] = 0x80;
    bad[129] = 0x02; // 2^49 bytes
    rechecksum(bad, 0);
    await expectTarError(bad, "LIMIT", 0);
  });

  it("rejects a non-octal size field", async () => {
    const bad = good.slice();
    bad[126] = 0x39; // '9'
    rechecksum(bad, 0);
    await expectTarError(bad, "FIELD", 126);
  });

  it("rejects a malformed PAX record", async () => {
    const dir = mkdtempSync(join(tmpdir(), "tar-pax-"));
    try {
      writeFileSync(join(dir, "p.txt"), "p");
      execFileSync("tar", ["--format=pax", "-cf", join(dir, "p.tar"), "-C", dir, "p.txt"]);
      const bad = new Uint8Array(readFileSync(join(dir, "p.tar")));
      assert.equal(bad[156], 0x78);
      bad[512] = 0x39; // first record's length digit: now longer than the data
      bad[513] = 0x39;
      await expectTarError(bad, "PAX", 512);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it("accepts input that ends at a block boundary without an end-of-archive marker", async () => {
    const { entries, tail } = await listTar(chunked(good.subarray(0, 2560), 333));
    assert.deepEqual(
      entries.map((e) => e.path),
      ["a.txt", "b.txt"],
    );
    assert.deepEqual(tail, { offset: 2560, bytes: new Uint8Array(0) });
  });

  it("keeps the end-of-archive blocks and record padding as the tail", async () => {
    const { tail } = await listTar(chunked(good, 4096));
    assert.equal(tail.offset, 2560);
    assert.equal(tail.bytes.length, good.length - 2560);
    assert.ok(tail.bytes.every((b) => b === 0));
  });

  it("reads sizes beyond 8 GiB from PAX records and base-256 fields, as GNU tar does", async () => {
    const size = 9 * 1024 ** 3 + 5;
    const pax = encodeHeader({
      path: "huge.img",
      type: "file",
      stream: { size, open: async function* () {} },
    });
    const listed = spawnSync("tar", ["-tvf", "-"], {
      input: pax,
      encoding: "utf8",
      env: { ...process.env, TZ: "UTC" },
    });
    assert.match(listed.stdout, new RegExp(`^-rw-r--r-- 0/0\\s+${size} 2020-01-01 00:00 huge.img`));
    const gnu = pax.slice(pax.length - 512);
    gnu.fill(0, 124, 136);
    gnu[124] = 0x80;
    new DataView(gnu.buffer, gnu.byteOffset).setBigUint64(128, BigInt(size));
    rechecksum(gnu, 0);
    for (const header of [pax, gnu]) {
      const reader = new TarReader(chunked(header, 512));
      for await (const item of reader) {
        assert.equal(item.entry.size, size);
        assert.equal(item.entry.endOffset, header.length + size + 507);
        break;
      }
    }
  });

  it("refuses to hand out data after the reader moved on", async () => {
    const reader = new TarReader(chunked(good, 4096));
    const items: TarItem[] = [];
    for await (const item of reader) items.push(item);
    await assert.rejects(async () => {
      for await (const _ of items[0]!.data) void _;
    }, /read twice or after the reader moved/);
  });
});

function rechecksum(block: Uint8Array, at: number): void {
  let sum = 0;
  for (let i = 0; i < 512; i++) sum += i >= 148 && i < 156 ? 0x20 : block[at + i]!;
  const text = `${sum.toString(8).padStart(6, "0")}\0 `;
  for (let i = 0; i < 8; i++) block[at + 148 + i] = text.charCodeAt(i);
}
