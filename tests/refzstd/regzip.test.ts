/**
 * ref-zstd's recompressed gzip files (payload version 2): the header parser, the search for the
 * GNU gzip level that rebuilds a file, round trips of layers whose `.gz` files changed, and the
 * decoder's refusals of damaged gzip pieces and inflated extents. The gzip files are made by the
 * real `gzip` binary from texts of /usr/share/common-licenses (by zlib where gzip must NOT rebuild
 * one; one header is rebuilt by hand with every optional field), plus the changelog.Debian.gz
 * files Debian shipped on this machine.
 */
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from "node:fs";
import { readFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import { gunzipSync, gzipSync } from "node:zlib";
import zstd from "zstd-napi";
import { BundleError, isPresent, readBundleHead } from "../../delta/bundle/format.js";
import { generateSigningKey } from "../../delta/bundle/sign.js";
import { decodeRefZstd } from "../../delta/refzstd/decoder.js";
import { encodeRefZstd, type RefZstdEncodeOptions } from "../../delta/refzstd/encoder.js";
import {
  REFZSTD_MAGIC,
  REFZSTD_VERSION,
  REFZSTD_VERSION_GZIP,
  RefZstdError,
  type RefZstdErrorCode,
  VarintWriter,
  zigzag,
} from "../../delta/refzstd/format.js";
import {
  findGzipRecipes,
  GZIP_FIXED_HEADER,
  GzipRunner,
  GzipToolError,
  gunzipText,
  gzipHeaderLength,
  MAX_FILES_PER_RUN,
  MAX_GZIP_HEADER,
  MAX_GZIP_TEXT,
} from "../../delta/refzstd/regzip.js";
import type { TarWriterEntry } from "../../delta/tar/writer.js";
import { BufferSource, type SourceReader } from "../../delta/vcdiff/source.js";
import { buildTar, imageOf, writeArchive } from "../bundle/fixtures.js";
import { applyFromImages, buildBundleBetween } from "../support/bundles.js";
import { collect } from "../support/collect.js";
import { seededBytes } from "../support/random.js";
import { segmentCount, segmentTables } from "../support/refzstd-tables.js";
import { hintsFor } from "./hints.js";

const scratch = mkdtempSync(join(tmpdir(), "deltaship-regzip-test-"));
after(() => rmSync(scratch, { recursive: true, force: true }));

function licence(name: string): Buffer {
  return readFileSync(`/usr/share/common-licenses/${name}`);
}

/** The real `gzip` binary over `input` on stdin (so no name is stored) with these flags. */
function gzip(input: Uint8Array, ...flags: string[]): Buffer {
  return execFileSync("gzip", ["-c", ...flags], { input, maxBuffer: 64 * 1024 * 1024 });
}

/** `gzip -c -LEVEL name` of a file of that name in a scratch folder: its header keeps the name (FNAME) and mtime. */
function gzipNamed(text: Uint8Array, name: string, level: number): Buffer {
  const dir = mkdtempSync(join(scratch, "named-"));
  writeFileSync(join(dir, name), text);
  return execFileSync("gzip", ["-c", `-${level}`, name], { cwd: dir });
}

const CRC_TABLE = Uint32Array.from({ length: 256 }, (_, n) => {
  let c = n;
  for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
  return c >>> 0;
});

function crc32(bytes: Uint8Array): number {
  let c = 0xffffffff;
  for (const b of bytes) c = CRC_TABLE[(c ^ b) & 0xff]! ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

/**
 * A `gzip -9n` member of `text` whose header is rebuilt by hand with an extra field, a name, a
 * comment and a header CRC (FEXTRA | FNAME | FCOMMENT | FHCRC); returns the file and its header length.
 */
function gzipWithFullHeader(text: Uint8Array): { file: Buffer; headerLength: number } {
  const member = gzip(text, "-9", "-n");
  const extra = Buffer.from([0x41, 0x70, 2, 0, 0xbe, 0xef]); // one subfield "Ap" of 2 bytes
  const head = Buffer.concat([
    Buffer.from([0x1f, 0x8b, 0x08, 0x04 | 0x08 | 0x10 | 0x02, 0, 0, 0, 0, 2, 3]),
    Buffer.from([extra.length, 0]),
    extra,
    Buffer.from("changelog.Debian\0"),
    Buffer.from("rebuilt by hand\0"),
  ]);
  const hcrc = crc32(head) & 0xffff;
  const header = Buffer.concat([head, Buffer.from([hcrc & 0xff, hcrc >>> 8])]);
  return { file: Buffer.concat([header, member.subarray(GZIP_FIXED_HEADER)]), headerLength: header.length };
}

/** A Debian changelog stanza, as a security update puts at the top of a package's changelog. */
function stanza(pkg: string, n: number): string {
  return `${pkg} (1.${n}-1+deb12u1) bookworm-security; urgency=medium\n\n  * Fix CVE-2026-${1000 + n}: a bounds check in the parser.\n\n -- Debian Security Team <team@security.debian.org>  Sat, 28 Nov 2026 12:00:00 +0000\n\n`;
}

/** Asserts equal bytes; on a difference says where, instead of diffing two large arrays element by element. */
function sameBytes(actual: Uint8Array | undefined, expected: Uint8Array, what: string): void {
  assert.ok(actual !== undefined, `${what}: no bytes, expected ${expected.length}`);
  let at = 0;
  while (at < actual.length && at < expected.length && actual[at] === expected[at]) at++;
  assert.ok(
    at === actual.length && at === expected.length,
    `${what}: ${actual.length} bytes, expected ${expected.length}; first difference at ${at}`,
  );
}

/** Asserts a GzipToolError (a problem of the machine, which apply reports as IO, not of the payload). */
async function toolError(decoding: Promise<unknown>, message: RegExp): Promise<void> {
  await assert.rejects(decoding, (err: unknown) => {
    assert.ok(err instanceof GzipToolError, `expected a GzipToolError, got ${String(err)}`);
    assert.match(err.message, message);
    return true;
  });
}

/** A source with only the asynchronous read, like a registry-backed one. */
function asyncOnly(bytes: Uint8Array): SourceReader {
  const inner = new BufferSource(bytes);
  return { size: inner.size, read: (p, into, o, n) => inner.read(p, into, o, n) };
}

/** The gzip pieces' levels and the inflated extents' count in a version-2 payload, read from its tables. */
function gzipCounts(payload: Uint8Array): { gzipPieces: number; inflatedExtents: number; levels: number[] } {
  const counts = { gzipPieces: 0, inflatedExtents: 0, levels: [] as number[] };
  segmentTables(payload).forEach(({ extentCount, pieceCount, tables }, s) => {
    for (let i = 0; i < extentCount; i++) {
      tables.read("offset");
      if (tables.read("length") % 2 === 1) {
        counts.inflatedExtents++;
        tables.read("inflated length");
      }
    }
    for (let i = 0; i < pieceCount; i++) {
      const word = tables.read("piece");
      if (word === 1) {
        counts.gzipPieces++;
        for (const field of ["output length", "header length", "text length"]) tables.read(field);
        counts.levels.push(tables.read("level"));
      } else if (word === 0 || word % 2 === 1) {
        // A diff piece's length and offset, or a copy's offset.
        if (word === 0) tables.read("length");
        tables.read("offset");
      }
    }
    assert.equal(tables.remaining, 0, `segment ${s}'s tables have bytes after the last piece`);
  });
  return counts;
}

async function decode(payload: Uint8Array, source: Uint8Array | undefined, sync = true): Promise<Buffer> {
  const wrap = (bytes: Uint8Array) => (sync ? new BufferSource(bytes) : asyncOnly(bytes));
  return collect(
    decodeRefZstd(wrap(payload), {
      ...(source !== undefined ? { source: wrap(source) } : {}),
      scratchDir: scratch,
    }),
  );
}

/** Asserts that decoding `payload` ends in a RefZstdError with this code and a message matching `message`. */
async function refuses(
  payload: Uint8Array,
  source: Uint8Array | undefined,
  code: RefZstdErrorCode,
  message: RegExp,
): Promise<void> {
  await assert.rejects(decode(payload, source), (err: unknown) => {
    assert.ok(err instanceof RefZstdError, `expected a RefZstdError, got ${String(err)}`);
    assert.equal(err.code, code, err.message);
    assert.match(err.message, message);
    return true;
  });
}

const gpl3 = licence("GPL-3");
const gpl2 = licence("GPL-2");
const lgpl = licence("LGPL-2.1");
const apache = licence("Apache-2.0");
const mpl = licence("MPL-2.0");
const artistic = licence("Artistic");
const cc0 = licence("CC0-1.0");

describe("gzipHeaderLength", () => {
  it("measures a gzip -9n header, a header with a name, and a hand-built one with every optional field", () => {
    assert.equal(gzipHeaderLength(gzip(apache, "-9", "-n")), GZIP_FIXED_HEADER);
    const named = gzipNamed(apache, "Apache-2.0", 9);
    assert.equal(named[3], 0x08, "gzip without -n stores the name (FNAME)");
    assert.equal(gzipHeaderLength(named), GZIP_FIXED_HEADER + "Apache-2.0".length + 1);
    const { file, headerLength } = gzipWithFullHeader(apache);
    // 10 fixed, 2 + 6 extra, 17 name, 16 comment, 2 header CRC.
    assert.equal(headerLength, 53);
    assert.equal(gzipHeaderLength(file), 53);
    // zlib checks the header CRC: the hand-built header is a valid one.
    sameBytes(gunzipText(file), apache, "the text under the hand-built header");
  });

  it("answers -1 for bytes that do not start with a complete gzip header", () => {
    const good = gzip(apache, "-9", "-n");
    const withByte = (at: number, value: number) => {
      const out = Buffer.from(good);
      out[at] = value;
      return out;
    };
    assert.equal(gzipHeaderLength(apache), -1, "plain text");
    assert.equal(gzipHeaderLength(new Uint8Array(0)), -1, "no bytes");
    assert.equal(gzipHeaderLength(good.subarray(0, 17)), -1, "shorter than header and trailer");
    assert.equal(gzipHeaderLength(withByte(2, 0x07)), -1, "a method other than deflate");
    for (const reserved of [0x20, 0x40, 0x80])
      assert.equal(gzipHeaderLength(withByte(3, reserved)), -1, `reserved flag ${reserved}`);
    // FEXTRA whose length runs past the end of the file.
    const extra = Buffer.concat([Buffer.from([0x1f, 0x8b, 8, 0x04, 0, 0, 0, 0, 0, 3, 0xff, 0xff]), good]);
    assert.equal(gzipHeaderLength(extra), -1, "an extra field past the end");
    // FNAME with no terminating zero before the end of the bytes.
    const unterminated = Buffer.concat([
      Buffer.from([0x1f, 0x8b, 8, 0x08, 0, 0, 0, 0, 0, 3]),
      Buffer.alloc(100, 0x61),
    ]);
    assert.equal(gzipHeaderLength(unterminated), -1, "a name that never ends");
    // A valid file whose name makes its header longer than MAX_GZIP_HEADER counts as none.
    const longName = "n".repeat(MAX_GZIP_HEADER);
    const long = Buffer.concat([
      Buffer.from([0x1f, 0x8b, 8, 0x08, 0, 0, 0, 0, 2, 3]),
      Buffer.from(`${longName}\0`),
      good.subarray(GZIP_FIXED_HEADER),
    ]);
    sameBytes(gunzipSync(long), apache, "zlib reads the long header");
    assert.equal(gzipHeaderLength(long), -1, "a header over MAX_GZIP_HEADER");
    assert.equal(gzipHeaderLength(long.subarray(0, MAX_GZIP_HEADER + 100)), -1);
  });
});

describe("findGzipRecipes", () => {
  // Preconditions that make the cases below mean something: the levels and compressors differ.
  const gpl9 = gzip(gpl3, "-9", "-n");
  const gpl6named = gzipNamed(gpl3, "GPL-3", 6);
  const zlibGpl = gzipSync(gpl3, { level: 9 });
  const zlibLgpl = gzipSync(lgpl);

  it("has fixtures where gzip -6, gzip -9 and zlib really write different deflate data", () => {
    const deflate = (file: Uint8Array) => Buffer.from(file.subarray(gzipHeaderLength(file), -8));
    assert.ok(!deflate(gpl6named).equals(deflate(gpl9)), "gzip -6 and -9 of GPL-3");
    for (const z of [zlibGpl, zlibLgpl]) {
      const text = gunzipText(z)!;
      assert.ok(!deflate(z).equals(deflate(gzip(text, "-9", "-n"))), "zlib and gzip -9");
      assert.ok(!deflate(z).equals(deflate(gzip(text, "-6", "-n"))), "zlib and gzip -6");
    }
  });

  it("finds level 9 for gzip -9n files and level 6 for a named gzip -6 file, header kept", async () => {
    const files = [gpl9, gzip(mpl, "-9", "-n"), gpl6named];
    assert.deepEqual(await findGzipRecipes(files, scratch), [
      { level: 9, headerLength: 10, textLength: gpl3.length },
      { level: 9, headerLength: 10, textLength: mpl.length },
      { level: 6, headerLength: 10 + "GPL-3".length + 1, textLength: gpl3.length },
    ]);
  });

  it("keeps a hand-built header with extra field, name, comment and header CRC", async () => {
    const { file, headerLength } = gzipWithFullHeader(artistic);
    assert.deepEqual(await findGzipRecipes([file], scratch), [
      { level: 9, headerLength, textLength: artistic.length },
    ]);
  });

  it("finds none for zlib's output, two members, trailing bytes, non-gzip bytes and an empty list", async () => {
    const twoMembers = Buffer.concat([gzip(apache, "-9", "-n"), gzip(mpl, "-9", "-n")]);
    const trailing = Buffer.concat([gzip(apache, "-9", "-n"), Buffer.from("trailing garbage\n")]);
    const padded = Buffer.concat([gzip(mpl, "-9", "-n"), Buffer.alloc(512)]);
    assert.deepEqual(
      await findGzipRecipes([zlibGpl, twoMembers, trailing, padded, apache, new Uint8Array(0)], scratch),
      [undefined, undefined, undefined, undefined, undefined, undefined],
    );
    assert.deepEqual(await findGzipRecipes([], scratch), []);
  });

  it("takes a text of MAX_GZIP_TEXT bytes and leaves one a byte longer as it is", async () => {
    const atLimit = gzip(Buffer.alloc(MAX_GZIP_TEXT, 0x20), "-9", "-n");
    const overLimit = gzip(Buffer.alloc(MAX_GZIP_TEXT + 1, 0x20), "-9", "-n");
    assert.deepEqual(await findGzipRecipes([overLimit, atLimit], scratch), [
      undefined,
      { level: 9, headerLength: 10, textLength: MAX_GZIP_TEXT },
    ]);
  });

  it("runs again only the files passed over after neighbouring mismatches, not the rest of the batch", async () => {
    // Twenty gzip -9 files with two gzip -6 neighbours in the middle (licences, whose -6 and -9
    // deflate data differ): after the first -6 file the next member (the second -6 file) is not
    // where level 9 puts it; the one after it is found.
    const texts = Array.from({ length: 20 }, (_, n) =>
      Buffer.from(`${stanza(`pkg${n}`, n)}\n`.repeat(40 + n)),
    );
    texts[9] = Buffer.from(gpl3);
    texts[10] = Buffer.from(lgpl);
    const level = (n: number) => (n === 9 || n === 10 ? 6 : 9);
    const files = texts.map((t, n) => gzip(t, `-${level(n)}`, "-n"));
    for (const n of [9, 10])
      assert.ok(!files[n]!.equals(gzip(texts[n]!, "-9", "-n")), `file ${n}: -6 is not -9`);
    // A stand-in gzip that logs each run's level and file count, then runs the real one.
    const realGzip = execFileSync("sh", ["-c", "command -v gzip"]).toString().trim();
    const logging = mkdtempSync(join(scratch, "logging-gzip-"));
    const log = join(logging, "runs.log");
    writeFileSync(
      join(logging, "gzip"),
      `#!/bin/sh\necho "$3 $(($# - 4))" >> ${log}\nexec ${realGzip} "$@"\n`,
      {
        mode: 0o755,
      },
    );
    const saved = process.env.PATH;
    let recipes: Awaited<ReturnType<typeof findGzipRecipes>>;
    try {
      process.env.PATH = `${logging}:${saved}`;
      recipes = await findGzipRecipes(files, scratch);
    } finally {
      process.env.PATH = saved;
    }
    assert.deepEqual(
      recipes,
      texts.map((t, n) => ({ level: level(n), headerLength: 10, textLength: t.length })),
    );
    // Level 9: the batch, then the file passed over (which misses again, alone). Level 6: the two.
    assert.deepEqual(readFileSync(log, "utf8").trim().split("\n"), ["-9 20", "-9 1", "-6 2"]);
  });

  it("answers each file of a mixed batch as alone, with the mismatching files first", async () => {
    const twoMembers = Buffer.concat([gzip(gpl2, "-9", "-n"), gzip(artistic, "-9", "-n")]);
    const trailing = Buffer.concat([gzip(lgpl, "-9", "-n"), Buffer.from("x")]);
    const empty = gzip(new Uint8Array(0), "-9", "-n");
    const files = [
      zlibGpl,
      zlibLgpl,
      twoMembers,
      trailing,
      gpl6named,
      apache,
      // zlib's and gzip's files of one text side by side: the same text, one rebuilt, one not.
      zlibGpl,
      gpl9,
      zlibGpl,
      gzip(mpl, "-9", "-n"),
      empty,
      gzipNamed(lgpl, "LGPL-2.1", 6),
      gzip(gpl2, "-6", "-n"),
    ];
    assert.deepEqual(await findGzipRecipes(files, scratch), [
      undefined,
      undefined,
      undefined,
      undefined,
      { level: 6, headerLength: 10 + "GPL-3".length + 1, textLength: gpl3.length },
      undefined,
      undefined,
      { level: 9, headerLength: 10, textLength: gpl3.length },
      undefined,
      { level: 9, headerLength: 10, textLength: mpl.length },
      { level: 9, headerLength: 10, textLength: 0 },
      { level: 6, headerLength: 10 + "LGPL-2.1".length + 1, textLength: lgpl.length },
      { level: 6, headerLength: 10, textLength: gpl2.length },
    ]);
  });
});

/** Up to `limit` changelog.Debian.gz files of this machine's packages, by package name. */
function debianChangelogs(limit: number): Buffer[] {
  const doc = "/usr/share/doc";
  if (!existsSync(doc)) return [];
  const files: Buffer[] = [];
  for (const pkg of readdirSync(doc).sort()) {
    const path = join(doc, pkg, "changelog.Debian.gz");
    if (!existsSync(path) || !statSync(path).isFile()) continue;
    files.push(readFileSync(path));
    if (files.length === limit) break;
  }
  return files;
}

describe("GzipRunner", () => {
  const texts = [gpl3, lgpl, Buffer.alloc(0), apache];
  const expected = Buffer.concat(texts.map((t) => gzip(t, "-9", "-n")));
  const gzipFolders = (dir: string) => readdirSync(dir).filter((n) => n.startsWith("deltaship-gzip-"));

  it("makes gzip's members of the texts through files in the shared-memory folder, reused and removed at close", async () => {
    const own = mkdtempSync(join(scratch, "runner-"));
    // A folder of its own stands in for /dev/shm: other tests use the real one at the same time.
    const shared = mkdtempSync(join(scratch, "shared-"));
    const runner = new GzipRunner(own, shared);
    try {
      assert.ok(Buffer.from(await runner.members(texts, 9)).equals(expected));
      // The second run overwrites the first one's files: fewer texts, same folder, right output.
      assert.ok(Buffer.from(await runner.members([apache], 9)).equals(gzip(apache, "-9", "-n")));
      // Two at once: two folders.
      const both = await Promise.all([runner.members([lgpl], 6), runner.members([gpl3], 9)]);
      assert.ok(Buffer.from(both[0]).equals(gzip(lgpl, "-6", "-n")));
      assert.ok(Buffer.from(both[1]).equals(gzip(gpl3, "-9", "-n")));
      assert.equal(gzipFolders(shared).length, 2);
      assert.deepEqual(gzipFolders(own), []);
    } finally {
      await runner.close();
    }
    assert.deepEqual(gzipFolders(shared), []);
  });

  it("splits more texts than one command line takes over several gzip runs, members in order", {
    skip: existsSync("/dev/shm") ? false : "no /dev/shm here (thousands of files on disk are slow)",
  }, async () => {
    const many = Array.from({ length: MAX_FILES_PER_RUN + 5 }, (_, i) => Buffer.from(`line ${i}\n`));
    const runner = new GzipRunner(mkdtempSync(join(scratch, "runner-")));
    try {
      const out = Buffer.from(await runner.members(many, 9));
      // One member per text: gunzip reads them all, in order; the last five are gzip's own.
      assert.ok(gunzipSync(out).equals(Buffer.concat(many)));
      const tail = Buffer.concat(many.slice(-5).map((t) => gzip(t, "-9", "-n")));
      assert.ok(out.subarray(out.length - tail.length).equals(tail));
    } finally {
      await runner.close();
    }
  });

  it("puts its files in /dev/shm by default, not in the scratch folder", {
    skip: existsSync("/dev/shm") ? false : "no /dev/shm here",
  }, async () => {
    const own = mkdtempSync(join(scratch, "runner-"));
    const runner = new GzipRunner(own);
    try {
      assert.ok(Buffer.from(await runner.members(texts, 9)).equals(expected));
      assert.deepEqual(gzipFolders(own), []);
    } finally {
      await runner.close();
    }
  });

  it("uses the scratch folder when the shared-memory folder cannot take files", async () => {
    const own = mkdtempSync(join(scratch, "runner-"));
    // A regular file where the shared-memory folder should be: no folder can be made in it.
    const notAFolder = join(own, "not-a-folder");
    writeFileSync(notAFolder, "x");
    const runner = new GzipRunner(own, notAFolder);
    try {
      assert.ok(Buffer.from(await runner.members(texts, 9)).equals(expected));
      assert.equal(gzipFolders(own).length, 1);
      await assert.rejects(runner.members(texts, 0), /gzip level 0 is not 1 to 9/);
    } finally {
      await runner.close();
    }
    assert.deepEqual(gzipFolders(own), []);
    await assert.rejects(runner.members(texts, 9), /closed/);
  });
});

describe("findGzipRecipes on Debian's own files", () => {
  const changelogs = debianChangelogs(40);
  it("rebuilds the changelog.Debian.gz files of this machine's packages at level 9 (Debian's gzip -9n)", {
    skip: changelogs.length === 0 ? "no /usr/share/doc/*/changelog.Debian.gz here" : false,
  }, async () => {
    const recipes = await findGzipRecipes(changelogs, scratch);
    assert.deepEqual(
      recipes,
      changelogs.map((file) => ({
        level: 9,
        headerLength: gzipHeaderLength(file),
        textLength: gunzipSync(file).length,
      })),
    );
  });
});

// ---------------------------------------------------------------------------------------------
// Round trips: a layer of Debian-style changelogs after a security update.

const texts: readonly (readonly [string, Buffer])[] = [
  ["libc6", gpl3],
  ["systemd", lgpl],
  ["openssl", apache],
  ["firefox-esr", mpl],
  // A path over tar's 100 bytes: its entry starts with a PAX header, so its header is 1,536 bytes.
  ["perl-modules-5.36-with-a-name-long-enough-for-a-pax-header-in-this-layer", artistic],
];

/** Bytes of each package's unchanged library: copies between the gzip pieces, as in a real layer. */
const LIBRARY_BYTES = 150_000;

/** Per package its changelog, edited by a security update or not, and an unchanged library (a copy). */
function packages(edited: boolean): TarWriterEntry[] {
  return texts.flatMap(([pkg, text], i): TarWriterEntry[] => [
    {
      path: `usr/share/doc/${pkg}/changelog.Debian.gz`,
      type: "file",
      content: gzip(edited ? Buffer.concat([Buffer.from(stanza(pkg, i)), text]) : text, "-9", "-n"),
    },
    { path: `usr/share/doc/${pkg}/lib${pkg}.so`, type: "file", content: seededBytes(LIBRARY_BYTES, i + 1) },
  ]);
}

async function layers(): Promise<{ old: Uint8Array; next: Uint8Array }> {
  const tail: TarWriterEntry = {
    path: "var/lib/app/data.bin",
    type: "file",
    content: seededBytes(LIBRARY_BYTES, 99),
  };
  const old = await buildTar([
    ...packages(false),
    // A man page gzipped at gzip's default level with its name kept (so one segment holds gzip
    // pieces of two levels), an empty changelog, a zlib-made file, plain texts.
    { path: "usr/share/man/man1/tool.1.gz", type: "file", content: gzipNamed(gpl2, "tool.1", 6) },
    { path: "usr/share/doc/empty/changelog.gz", type: "file", content: gzip(new Uint8Array(0), "-9", "-n") },
    { path: "usr/share/doc/app/notes.gz", type: "file", content: gzipSync(lgpl) },
    { path: "usr/share/doc/app/handmade.gz", type: "file", content: gzipWithFullHeader(cc0).file },
    { path: "usr/share/doc/app/README", type: "file", content: gpl2 },
    { path: "usr/share/doc/app/COPYING", type: "file", content: apache },
    tail,
  ]);
  const next = await buildTar([
    ...packages(true),
    {
      path: "usr/share/man/man1/tool.1.gz",
      type: "file",
      content: gzipNamed(Buffer.concat([Buffer.from('.\\" updated\n'), gpl2]), "tool.1", 6),
    },
    { path: "usr/share/doc/empty/changelog.gz", type: "file", content: gzip(licence("BSD"), "-9", "-n") },
    {
      path: "usr/share/doc/app/notes.gz",
      type: "file",
      content: gzipSync(Buffer.concat([Buffer.from("new notes\n"), lgpl])),
    },
    // Its 53-byte header (extra field, name, comment, header CRC) goes as it is.
    {
      path: "usr/share/doc/app/handmade.gz",
      type: "file",
      content: gzipWithFullHeader(Buffer.concat([cc0, Buffer.from("amended\n")])).file,
    },
    { path: "usr/share/doc/app/README", type: "file", content: Buffer.concat([gpl2, Buffer.from("more\n")]) },
    // Unchanged: copies.
    { path: "usr/share/doc/app/COPYING", type: "file", content: apache },
    tail,
  ]);
  return { old, next };
}

const { old, next } = await layers();

async function encode(
  options: RefZstdEncodeOptions & {
    headerLengths?: boolean;
    layers?: { old: Uint8Array; next: Uint8Array };
  } = {},
): Promise<Buffer> {
  const { headerLengths = true, layers = { old, next }, ...rest } = options;
  return collect(
    encodeRefZstd(new BufferSource(layers.next), new BufferSource(layers.old), {
      ...hintsFor(layers.next, [layers.old], { headerLengths }),
      level: 19,
      scratchDir: scratch,
      ...rest,
    }),
  );
}

const v2 = await encode();

describe("ref-zstd round trips with recompressed gzip files", () => {
  it("sends changed changelogs as text (version 2), decodes byte for byte, and is far smaller than without", async () => {
    assert.equal(v2[REFZSTD_MAGIC.length], REFZSTD_VERSION_GZIP);
    sameBytes(await decode(v2, old), next, "the layer");
    sameBytes(await decode(v2, old, false), next, "the layer through asynchronous sources");
    const plain = await encode({ regzip: false });
    assert.equal(plain[REFZSTD_MAGIC.length], REFZSTD_VERSION);
    sameBytes(await decode(plain, old), next, "the layer without regzip");
    // Five changelogs, the named man page, the once empty changelog and the file with every
    // optional header field: gzip pieces, each against
    // its old file's text; the zlib-made notes.gz goes as its new deflate stream.
    assert.deepEqual(gzipCounts(v2), { gzipPieces: 8, inflatedExtents: 8, levels: [9, 9, 9, 9, 9, 6, 9, 9] });
    const headers = hintsFor(next, [old], { headerLengths: true }).references.map(
      (r) => r.targetHeaderLength,
    );
    assert.ok(headers.includes(1536), `the long path's PAX header among header lengths ${headers}`);
    // Measured: 9_475 bytes with regzip against 47_884 without.
    assert.ok(
      v2.length * 4 < plain.length,
      `with regzip ${v2.length} bytes, without ${plain.length}: expected under a quarter`,
    );
  });

  it("stays version 1, byte for byte as without regzip, when the hints carry no header lengths", async () => {
    const withoutLengths = await encode({ headerLengths: false });
    assert.equal(withoutLengths[REFZSTD_MAGIC.length], REFZSTD_VERSION);
    sameBytes(withoutLengths, await encode({ regzip: false }), "the payload without header lengths");
    sameBytes(await decode(withoutLengths, old), next, "the layer");
  });

  it("spreads gzip pieces over segments when segments are small", async () => {
    // Each changelog's literal bytes (tar header, gzip header, text, trailer) fit in one segment;
    // some segments hold only gzip pieces, so more literal bytes than output.
    const payload = await encode({ segmentLiteral: 40 * 1024, reference: 80 * 1024 });
    assert.equal(payload[REFZSTD_MAGIC.length], REFZSTD_VERSION_GZIP);
    assert.ok(segmentCount(payload) >= 4, `${segmentCount(payload)} segments`);
    assert.deepEqual(gzipCounts(payload), gzipCounts(v2));
    sameBytes(await decode(payload, old), next, "the layer");
    sameBytes(await decode(payload, old, false), next, "the layer through asynchronous sources");
  });

  it("sends gzip files as they are (version 1) when the cloud has no gzip on its PATH", async () => {
    const saved = process.env.PATH;
    process.env.PATH = mkdtempSync(join(scratch, "no-gzip-"));
    let payload: Buffer;
    try {
      payload = await encode();
    } finally {
      process.env.PATH = saved;
    }
    assert.equal(payload[REFZSTD_MAGIC.length], REFZSTD_VERSION);
    sameBytes(payload, await encode({ regzip: false }), "the payload without gzip");
  });

  it("fails with an error naming gzip when the device has no gzip on its PATH", async () => {
    const saved = process.env.PATH;
    process.env.PATH = mkdtempSync(join(scratch, "no-gzip-"));
    try {
      await toolError(decode(v2, old), /needs GNU gzip, and `gzip` is not on the PATH; install it/);
    } finally {
      process.env.PATH = saved;
    }
    sameBytes(await decode(v2, old), next, "the layer once gzip is back");
  });

  it("refuses as CORRUPT when the device's gzip writes other deflate data, and names a gzip that fails", async () => {
    const realGzip = execFileSync("sh", ["-c", "command -v gzip"]).toString().trim();
    // Called as `gzip -c -n -LEVEL -- files…`: one stand-in always compresses at level 1, the other fails.
    const otherGzip = mkdtempSync(join(scratch, "other-gzip-"));
    writeFileSync(join(otherGzip, "gzip"), `#!/bin/sh\nshift 3\nexec ${realGzip} -c -n -1 "$@"\n`, {
      mode: 0o755,
    });
    const failingGzip = mkdtempSync(join(scratch, "failing-gzip-"));
    writeFileSync(join(failingGzip, "gzip"), "#!/bin/sh\necho 'gzip: out of space' >&2\nexit 3\n", {
      mode: 0o755,
    });
    const saved = process.env.PATH;
    try {
      process.env.PATH = otherGzip;
      await refuses(v2, old, "CORRUPT", /does not rebuild .*a gzip that is not GNU gzip/);
      process.env.PATH = failingGzip;
      await toolError(decode(v2, old), /gzip -\d failed \(exit 3\): gzip: out of space/);
    } finally {
      process.env.PATH = saved;
    }
  });

  it("sends a changed gzip file whose text exceeds the segment's literal budget as plain bytes, a smaller one as text", async () => {
    // MPL-2.0 is 16,726 bytes of text; the segments hold 16,384 literal bytes. b.gz's text fits.
    const small = mpl.subarray(0, 4000);
    const filler: TarWriterEntry = { path: "z", type: "file", content: Buffer.alloc(20_000, 7) };
    const layers = {
      old: await buildTar([
        { path: "a.gz", type: "file", content: gzip(mpl, "-9", "-n") },
        { path: "b.gz", type: "file", content: gzip(small, "-9", "-n") },
        filler,
      ]),
      next: await buildTar([
        { path: "a.gz", type: "file", content: gzip(Buffer.concat([Buffer.from("new\n"), mpl]), "-9", "-n") },
        {
          path: "b.gz",
          type: "file",
          content: gzip(Buffer.concat([Buffer.from("new\n"), small]), "-9", "-n"),
        },
        filler,
      ]),
    };
    const payload = await encode({ layers, segmentLiteral: 16 * 1024, reference: 32 * 1024 });
    assert.equal(payload[REFZSTD_MAGIC.length], REFZSTD_VERSION_GZIP);
    sameBytes(await decode(payload, layers.old), layers.next, "the layer");
    // Alone, the big file cannot be a gzip piece: the payload stays version 1.
    const bigOnly = {
      old: await buildTar([{ path: "a.gz", type: "file", content: gzip(mpl, "-9", "-n") }, filler]),
      next: await buildTar([
        { path: "a.gz", type: "file", content: gzip(Buffer.concat([Buffer.from("new\n"), mpl]), "-9", "-n") },
        filler,
      ]),
    };
    const plain = await encode({ layers: bigOnly, segmentLiteral: 16 * 1024, reference: 32 * 1024 });
    assert.equal(plain[REFZSTD_MAGIC.length], REFZSTD_VERSION);
    sameBytes(await decode(plain, bigOnly.old), bigOnly.next, "the layer with the big file alone");
  });

  it("decodes a layer of nothing but a changed changelog (more literal bytes than output)", async () => {
    const only = {
      old: await buildTar([
        { path: "usr/share/doc/libc6/changelog.Debian.gz", type: "file", content: gzip(gpl3, "-9", "-n") },
      ]),
      next: await buildTar([
        {
          path: "usr/share/doc/libc6/changelog.Debian.gz",
          type: "file",
          content: gzip(Buffer.concat([Buffer.from(stanza("libc6", 1)), gpl3]), "-9", "-n"),
        },
      ]),
    };
    const payload = await encode({ layers: only });
    assert.equal(payload[REFZSTD_MAGIC.length], REFZSTD_VERSION_GZIP);
    sameBytes(await decode(payload, only.old), only.next, "the layer");
  });
});

// ---------------------------------------------------------------------------------------------
// Refusals, on payloads assembled by hand (one segment).

interface HandSegment {
  readonly version: number;
  readonly outputLength: number;
  readonly extentCount: number;
  readonly pieceCount: number;
  /** The tables' varints, before zstd. */
  readonly tables: readonly number[];
  readonly literal: Uint8Array;
}

function handPayload(s: HandSegment): Uint8Array {
  const tables = new VarintWriter();
  for (const v of s.tables) tables.write(v);
  const tablesFrame = zstd.compress(Buffer.from(tables.result));
  const frame = s.literal.length > 0 ? zstd.compress(Buffer.from(s.literal)) : new Uint8Array(0);
  const head = new VarintWriter();
  for (const v of [
    s.outputLength,
    1,
    s.outputLength,
    s.literal.length,
    s.extentCount,
    s.pieceCount,
    tablesFrame.length,
    frame.length,
  ])
    head.write(v);
  return Buffer.concat([REFZSTD_MAGIC, Uint8Array.of(s.version), head.result, tablesFrame, frame]);
}

/**
 * Source bytes copied after the gzip piece: a version-1 segment may not hold more literal bytes
 * than it outputs, so the version-1 case below needs them to reach its tables; the version-2
 * cases keep them so each differs from a valid payload only where it says.
 */
const PAD = seededBytes(64 * 1024, 7);

/** A gzip piece rebuilding `file` (a gzip -9n file of `text`), fields overridable, then a copy of PAD. */
function gzipPiecePayload(
  text: Uint8Array,
  file: Uint8Array,
  change: { level?: number; headerLength?: number; outputLength?: number; literal?: Uint8Array } = {},
): Uint8Array {
  const literal = change.literal ?? Buffer.concat([file.subarray(0, 10), text, file.subarray(-8)]);
  const outputLength = change.outputLength ?? file.length;
  return handPayload({
    version: REFZSTD_VERSION_GZIP,
    outputLength: outputLength + PAD.length,
    extentCount: 0,
    pieceCount: 2,
    tables: [
      ...[1, outputLength, change.headerLength ?? 10, text.length, change.level ?? 9],
      ...[PAD.length * 2 + 1, zigzag(0 - outputLength)],
    ],
    literal,
  });
}

/** One literal piece of `literal`, compressed against an inflated extent over source[0, length). */
function inflatedExtentPayload(length: number, inflatedLength: number, literal: Uint8Array): Uint8Array {
  return handPayload({
    version: REFZSTD_VERSION_GZIP,
    outputLength: literal.length,
    extentCount: 1,
    pieceCount: 1,
    tables: [zigzag(0), length * 2 + 1, inflatedLength, literal.length * 2],
    literal,
  });
}

describe("ref-zstd refuses damaged gzip pieces and inflated extents", () => {
  const text = gpl3;
  const file = gzip(text, "-9", "-n");

  it("decodes the hand-built payloads when nothing is changed", async () => {
    sameBytes(await decode(gzipPiecePayload(text, file), PAD), Buffer.concat([file, PAD]), "the gzip piece");
    const alone = handPayload({
      version: REFZSTD_VERSION_GZIP,
      outputLength: file.length,
      extentCount: 0,
      pieceCount: 1,
      tables: [1, file.length, 10, text.length, 9],
      literal: Buffer.concat([file.subarray(0, 10), text, file.subarray(-8)]),
    });
    sameBytes(await decode(alone, undefined), file, "a segment of one gzip piece");
    const source = gzip(apache, "-9", "-n");
    const literal = Buffer.from("a line of text\n");
    sameBytes(
      await decode(inflatedExtentPayload(source.length, apache.length, literal), source),
      literal,
      "the literal piece against the inflated extent",
    );
  });

  it("refuses a gzip piece whose level was changed, or whose level, header or length is out of bounds", async () => {
    await refuses(
      gzipPiecePayload(text, file, { level: 6 }),
      PAD,
      "CORRUPT",
      /gzip -6 of its 35149 bytes of text does not rebuild the \d+-byte file/,
    );
    for (const level of [0, 10])
      await refuses(gzipPiecePayload(text, file, { level }), PAD, "CORRUPT", /gzip piece 0 .* out of bounds/);
    await refuses(
      gzipPiecePayload(text, file, { headerLength: 9 }),
      PAD,
      "CORRUPT",
      /gzip piece 0 .* out of bounds/,
    );
    // An output length too small for header and trailer, and one no deflate stream of the text reaches.
    for (const outputLength of [17, 10 + 8 + 2 * text.length])
      await refuses(
        gzipPiecePayload(text, file, { outputLength }),
        PAD,
        "CORRUPT",
        /gzip piece 0 .* out of bounds/,
      );
  });

  it("refuses a gzip piece whose trailer, text or output length does not match gzip's own", async () => {
    const literal = Buffer.concat([file.subarray(0, 10), text, file.subarray(-8)]);
    const badTrailer = Buffer.from(literal);
    badTrailer[badTrailer.length - 8]! ^= 1;
    const badText = Buffer.from(literal);
    badText[10 + 1000]! ^= 0x20;
    for (const damaged of [badTrailer, badText])
      await refuses(
        gzipPiecePayload(text, file, { literal: damaged }),
        PAD,
        "CORRUPT",
        /gzip -9 of its 35149 bytes of text does not rebuild/,
      );
    for (const outputLength of [file.length - 1, file.length + 1])
      await refuses(
        gzipPiecePayload(text, file, { outputLength }),
        PAD,
        "CORRUPT",
        /does not rebuild the \d+-byte file/,
      );
  });

  it("refuses an inflated extent over bytes that are not gzip, or whose text has another length", async () => {
    const literal = Buffer.from("a line of text\n");
    await refuses(
      inflatedExtentPayload(apache.length, apache.length, literal),
      apache,
      "CORRUPT",
      /extent 0: the source's 11358 bytes at 0 are not a gzip file of 11358 bytes of text/,
    );
    const source = gzip(apache, "-9", "-n");
    for (const inflated of [apache.length - 1, apache.length + 1, 0])
      await refuses(
        inflatedExtentPayload(source.length, inflated, literal),
        source,
        "CORRUPT",
        new RegExp(`are not a gzip file of ${inflated} bytes of text`),
      );
    await refuses(
      inflatedExtentPayload(source.length, MAX_GZIP_TEXT + 1, literal),
      source,
      "LIMIT",
      /inflated extent 0 .* exceeds/,
    );
    await refuses(
      inflatedExtentPayload(source.length + 1, apache.length, literal),
      source,
      "CORRUPT",
      /extent 0 .* outside the \d+-byte source/,
    );
  });

  it("refuses piece word 1 (an empty copy) in a version-1 payload", async () => {
    const payload = Buffer.from(gzipPiecePayload(text, file));
    payload[REFZSTD_MAGIC.length] = REFZSTD_VERSION;
    await refuses(payload, PAD, "CORRUPT", /piece 0 is an empty copy/);
  });
});

// ---------------------------------------------------------------------------------------------
// Through the bundle: delta/bundle/diff.ts gives the header lengths, apply.ts runs the device's gzip.

describe("ref-zstd gzip pieces through a bundle", () => {
  const key = generateSigningKey();
  const base = seededBytes(64 * 1024, 5);

  function apply(bundle: string, held: string, dest: string) {
    return applyFromImages({
      bundle,
      trust: [key],
      from: [held],
      dest: `docker-archive:${dest}`,
      scratchDir: scratch,
      skipDiskCheck: true,
    });
  }

  it("builds a version-2 payload for the changed changelogs and rebuilds the image byte for byte; without gzip the device refuses as IO", async () => {
    const baseLayer = await buildTar([{ path: "usr/lib/base.so", type: "file", content: base }]);
    const held = await writeArchive(join(scratch, "held.tar"), imageOf("os/docs", "1", [baseLayer, old]));
    const wanted = await writeArchive(
      join(scratch, "wanted.tar"),
      imageOf("os/docs", "2", [baseLayer, next]),
    );
    const bundle = join(scratch, "docs.bundle");
    await buildBundleBetween([held], wanted, { key, out: bundle, scratchDir: scratch });
    const head = await readBundleHead(bundle);
    const entry = head.manifest.layers[1]!;
    assert.ok(!isPresent(entry), "the changed layer has a payload");
    assert.equal(entry.codec, "ref-zstd");
    const bytes = await readFile(bundle);
    const payload = bytes.subarray(
      head.payloadsOffset + entry.offset,
      head.payloadsOffset + entry.offset + entry.length,
    );
    assert.equal(payload[REFZSTD_MAGIC.length], REFZSTD_VERSION_GZIP);
    assert.equal(gzipCounts(payload).gzipPieces, 8);

    const dest = join(scratch, "rebuilt.tar");
    await apply(bundle, held, dest);
    sameBytes(await readFile(dest), await readFile(wanted), "the rebuilt image archive");

    const never = join(scratch, "never.tar");
    const saved = process.env.PATH;
    process.env.PATH = mkdtempSync(join(scratch, "no-gzip-"));
    try {
      await assert.rejects(apply(bundle, held, never), (err: unknown) => {
        assert.ok(err instanceof BundleError, String(err));
        assert.equal(err.code, "IO");
        assert.equal(err.where, `layer ${entry.diffId}`);
        assert.match(err.message, /`gzip` is not on the PATH; install it; nothing was written/);
        return true;
      });
    } finally {
      process.env.PATH = saved;
    }
    assert.equal(existsSync(never), false);
  });
});
