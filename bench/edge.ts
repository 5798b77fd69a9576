/**
 * Apply throughput and peak RSS of the edge module on a large image, through the module's real
 * program (`edge-module/main.ts` as a child process, real docker-registry, reports over MQTT to
 * mosquitto), not only through the library.
 *
 *   node --import tsx bench/edge.ts [--mb 256] [--compiled]
 *
 * The device holds `bench/app:1.0` (a large layer of real shared libraries plus a small one);
 * the bundle turns it into `bench/app:1.1`, whose large layer has every file patched, so the
 * module decodes the whole large layer from VCDIFF against the held one. Prints one JSON object.
 */
import { execFileSync } from "node:child_process";
import { mkdir, mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { startHubStandIn } from "../local/services/mqtt.js";
import { buildTar, imageOf, patched, realFiles, withContent } from "../tests/bundle/fixtures.js";
import { makeBundle, newSigner, pushToRegistry } from "../tests/edge/fixtures.js";
import { startModule } from "../tests/edge/module-process.js";
import { reportsFor } from "../tests/edge/world.js";
import { startRegistry } from "../tests/support/registry.js";

const { values } = parseArgs({
  options: {
    mb: { type: "string", default: "256" },
    // Run the module compiled to JavaScript, as the container does, instead of through tsx.
    compiled: { type: "boolean", default: false },
  },
});
const megabytes = Number(values.mb);
/** A large apply on a busy machine takes minutes; still bounded. */
const BENCH_WAIT_MS = 900_000;

let entry: string | undefined;
if (values.compiled) {
  const out = join(import.meta.dirname, "..", ".bench", "edge-dist");
  execFileSync(
    process.execPath,
    [
      join("node_modules", "typescript", "bin", "tsc"),
      "-p",
      "edge-module/tsconfig.build.json",
      "--outDir",
      out,
    ],
    {
      stdio: "inherit",
    },
  );
  entry = join(out, "edge-module", "main.js");
}

function peakRss(pid: number): Promise<number> {
  return readFile(`/proc/${pid}/status`, "utf8").then((text) => {
    const match = /VmHWM:\s+(\d+) kB/.exec(text);
    return match ? Number(match[1]) * 1024 : Number.NaN;
  });
}

const registry = await startRegistry();
const hub = await startHubStandIn();
const dir = await mkdtemp(join(tmpdir(), "deltaship-bench-edge-"));
try {
  const files = realFiles("/usr/lib/x86_64-linux-gnu", "usr/lib", {
    limit: 100_000,
    maxFile: 64 * 1024 * 1024,
    maxBytes: megabytes * 1024 * 1024,
  });
  const big = await buildTar(files);
  const bigUpdate = await buildTar(files.map((f, i) => withContent(f, patched(f.content as Uint8Array, i))));
  const small = await buildTar(realFiles("/usr/bin", "usr/bin", { limit: 20, maxBytes: 2_000_000 }));
  const held = imageOf("bench/app", "1.0", [big, small]);
  const target = imageOf("bench/app", "1.1", [bigUpdate, small]);
  await pushToRegistry(registry.host, held);
  const signer = newSigner();
  let t = Date.now();
  const bundle = await makeBundle(dir, "bench", target, [held], signer);
  const diffMs = Date.now() - t;

  const inbox = join(dir, "inbox");
  await mkdir(inbox);
  const module = startModule(
    {
      EdgeHubConnectionString: hub.connectionString("bench-device", "imagereconstruction"),
      EdgeModuleCACertificateFile: hub.caFile,
      DELTASHIP_INBOX: inbox,
      DELTASHIP_REGISTRY: registry.host,
      DELTASHIP_TRUSTED_KEYS: JSON.stringify({ cloud: signer.publicPem }),
      DELTASHIP_POLL_MS: "100",
      DELTASHIP_QUIET_MS: "200",
    },
    entry,
  );
  try {
    await module.waitForLog((l) => l.step === "inventory", "the module to start");
    const rssAtStart = await peakRss(module.child.pid!);
    t = Date.now();
    await writeFile(join(inbox, "big.bundle-bench.dsb"), bundle);
    const finished = await module.waitForLog(
      (l) => l.step === "bundle.finished",
      "the bundle to finish",
      BENCH_WAIT_MS,
    );
    const wallMs = Date.now() - t;
    const rssPeak = await peakRss(module.child.pid!);
    const step = (name: string) =>
      module.logs.find((l) => l.step === name && l.bundleId === finished.bundleId);
    const applyMs = Number(step("apply.done")?.ms);
    const applyPushMs = Number(step("push.done")?.ms);
    await hub.waitForEvents((events) => reportsFor(events, "bench").length > 0, "the report");
    const report = reportsFor(hub.events, "bench")[0]!.body as {
      bytes: number;
      durationMs: number;
      type: string;
    };
    const mib = (n: number) => Math.round((n / 1024 / 1024) * 10) / 10;
    const rebuilt = big.length; // the layer decoded from VCDIFF
    console.log(
      JSON.stringify(
        {
          outcome: report.type,
          module: entry ? "compiled JavaScript" : "TypeScript through tsx",
          imageMiB: mib(report.bytes),
          decodedLayerMiB: mib(rebuilt),
          bundleBytes: bundle.length,
          bundlePercentOfImage: Math.round((bundle.length / report.bytes) * 10000) / 100,
          diffMs,
          applyMs,
          applyPushMs,
          moduleDurationMs: report.durationMs,
          wallMsFromDropToFiled: wallMs,
          applyMiBps: Math.round(mib(rebuilt) / (applyMs / 1000)),
          applyAndPushMiBps: Math.round(mib(report.bytes) / (applyPushMs / 1000)),
          moduleRssAtStartMiB: mib(rssAtStart),
          modulePeakRssMiB: mib(rssPeak),
        },
        null,
        2,
      ),
    );
  } finally {
    await module.stop();
  }
} finally {
  await hub.close();
  await registry.stop();
  await rm(dir, { recursive: true, force: true });
}
