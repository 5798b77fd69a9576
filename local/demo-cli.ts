/**
 * The command line of `deltaship demo`: options, progress bars per device while the set runs,
 * then a summary table (or, with --json, one JSON object on stdout and nothing else).
 */
import { parseArgs } from "node:util";
import {
  DEMO_DEFAULTS,
  type DemoOptions,
  type DemoProgress,
  type DemoResult,
  deviceIds,
  runDemo,
} from "./demo.js";
import { ImageOptionError } from "./image-archives.js";

const HELP = `usage: deltaship demo [options]      (npm start)

Runs a whole deployment set on this machine, with no Azure account: Azurite for Tables and
Blobs, the Function App's own handlers and orchestrators on a local host, a container registry,
an image store and an Image Reconstruction module per device, and a simulated satellite link
between each device's outbox and inbox. Needs mosquitto and openssl (scripts/setup-debian.sh);
uses Debian's docker-registry for the registries when it is installed, OCI layout folders otherwise.

The fleet is ship-1, ship-2, truck-3, then device-4, device-5, ... With no --image, the command
builds a sample in seconds and deploys samples/telemetry:1.1 and samples/dashboard:2.0 to devices
holding telemetry:1.0 (ship-1), base:12 (ship-2) and nothing (truck-3).

fleet and link:
  --devices N        devices in the fleet, 1 to 20 (default ${DEMO_DEFAULTS.devices})
  --bandwidth BPS    link capacity in bits/s, k and M suffixes allowed (default 256k)
  --drop-rate R      link drops per simulated second of sending (default ${DEMO_DEFAULTS.dropRate})
  --latency MS       delay before each (re)connection sends, in ms (default ${DEMO_DEFAULTS.latencyMs})
  --time-factor F    simulated seconds per real second; 40 makes the sample take about a
                     minute while the summary reports time on the simulated link (default ${DEMO_DEFAULTS.timeFactor})
  --deadline ISO     how long the set waits for reports, ISO 8601 duration (default ${DEMO_DEFAULTS.deadline})
  --corrupt DEVICE   the link to DEVICE corrupts what it carries: the set fails, no manifest is pushed

your own images (docker-archive files from docker save or skopeo, or OCI layout folders; PATH:NAME
picks one image of several; each image is deployed under the repository:tag it was saved with):
  --image PATH       an image to deploy; repeat for several (replaces the sample)
  --from PATH        an image every device holds at start, e.g. the version now running; repeatable
  --holds DEV=PATH[,PATH...]
                     what device DEV holds at start instead of --from (DEV= for nothing); repeatable
  example: deltaship demo --from app-1.0.tar --image app-1.1.tar --holds truck-3=

stores and output:
  --store KIND       registry: a docker-registry for the container registry and each device;
                     oci: OCI layout folders instead (default registry when docker-registry is installed)
  --port P           port of the local Function App on 127.0.0.1, 0 for any free one (default ${DEMO_DEFAULTS.port})
  --work-dir DIR     where device stores, manifests pushed, emails and result.json are written
                     (default: a new temp dir)
  --serve            keep everything running after the first set, for more deployments with curl
                     (POST http://127.0.0.1:PORT/api/deployments); Ctrl-C stops it
  --json             print one JSON object with the outcome on stdout and nothing else:
                     {"outcome","setId","devices":[{"id","outcome","images":[{"image","digest",
                     "bytesSent","pullBytes","outcome","reason"?}]}],"manifestPushes":[{"device","at"}],
                     "emails":[{"to","subject","at"}]}, times in ISO 8601
  --verbose          print the log of every component on stderr
  -h, --help         this text

exit codes: 0 the set succeeded, 1 it failed, 2 bad options or a missing prerequisite`;

function parseBandwidth(text: string): number {
  const match = /^(\d+(?:\.\d+)?)([kKmM]?)$/.exec(text);
  if (match === null) throw new Error(`--bandwidth: expected a number like 256k or 1.5M, found "${text}"`);
  const unit = match[2]!.toLowerCase() === "k" ? 1e3 : match[2]!.toLowerCase() === "m" ? 1e6 : 1;
  return Number(match[1]) * unit;
}

function positive(name: string, text: string | undefined, fallback: number, integer = false): number {
  if (text === undefined) return fallback;
  const value = Number(text);
  if (!Number.isFinite(value) || value < 0 || (integer && !Number.isInteger(value))) {
    throw new Error(`--${name}: expected a ${integer ? "whole " : ""}number of at least 0, found "${text}"`);
  }
  return value;
}

export async function runDemoCommand(args: string[]): Promise<number> {
  let options: DemoOptions;
  let json = false;
  let verbose = false;
  try {
    const { values } = parseArgs({
      args,
      options: {
        devices: { type: "string" },
        bandwidth: { type: "string" },
        "drop-rate": { type: "string" },
        latency: { type: "string" },
        "time-factor": { type: "string" },
        deadline: { type: "string" },
        port: { type: "string" },
        corrupt: { type: "string" },
        "work-dir": { type: "string" },
        image: { type: "string", multiple: true },
        from: { type: "string", multiple: true },
        holds: { type: "string", multiple: true },
        store: { type: "string" },
        serve: { type: "boolean", default: false },
        json: { type: "boolean", default: false },
        verbose: { type: "boolean", default: false },
        help: { type: "boolean", short: "h", default: false },
      },
    });
    if (values.help) {
      console.log(HELP);
      return 0;
    }
    json = values.json;
    verbose = values.verbose;
    const devices = positive("devices", values.devices, DEMO_DEFAULTS.devices, true);
    if (devices < 1 || devices > 20) throw new Error(`--devices: expected 1 to 20, found ${devices}`);
    const timeFactor = positive("time-factor", values["time-factor"], DEMO_DEFAULTS.timeFactor);
    if (timeFactor <= 0) throw new Error("--time-factor: expected a number above 0");
    const fleet = deviceIds(devices);
    const inFleet = (option: string, device: string) => {
      if (!fleet.includes(device)) {
        throw new Error(
          `${option}: there is no device "${device}"; the fleet is ${fleet.join(", ")} (--devices ${devices})`,
        );
      }
    };
    if (values.corrupt !== undefined) inFleet("--corrupt", values.corrupt);
    const images = values.image ?? [];
    const from = values.from ?? [];
    const holds = parseHolds(values.holds ?? [], inFleet);
    if (images.length === 0 && (from.length > 0 || Object.keys(holds).length > 0)) {
      throw new Error(
        "--from and --holds say what devices hold before your own images arrive; add --image PATH",
      );
    }
    const store = values.store;
    if (store !== undefined && store !== "registry" && store !== "oci") {
      throw new Error(`--store: expected registry or oci, found "${store}"`);
    }
    options = {
      ...DEMO_DEFAULTS,
      devices,
      bandwidth: values.bandwidth === undefined ? DEMO_DEFAULTS.bandwidth : parseBandwidth(values.bandwidth),
      dropRate: positive("drop-rate", values["drop-rate"], DEMO_DEFAULTS.dropRate),
      latencyMs: positive("latency", values.latency, DEMO_DEFAULTS.latencyMs),
      timeFactor,
      deadline: values.deadline ?? DEMO_DEFAULTS.deadline,
      port: positive("port", values.port, DEMO_DEFAULTS.port, true),
      corruptDevice: values.corrupt,
      workDir: values["work-dir"],
      serve: values.serve,
      images,
      from,
      holds,
      ...(store !== undefined ? { store } : {}),
    };
  } catch (error) {
    console.error(`deltaship demo: ${(error as Error).message}\n\n${HELP}`);
    return 2;
  }

  const tty = !json && process.stderr.isTTY === true;
  const bars = new ProgressBars(tty);
  options.log = (line) => {
    if (verbose) process.stderr.write(`${line}\n`);
    else if (!json && !line.includes(": {") && !line.startsWith("host:")) bars.note(line);
  };
  options.onProgress = (p) => bars.render(p);
  let printed = false;
  const print = (result: DemoResult) => {
    if (printed) return;
    printed = true;
    bars.clear();
    if (json) {
      // stdout carries the JSON alone; where the full record went is a note on stderr.
      process.stderr.write(
        `deltaship demo: manifests, emails and result.json written to ${result.workDir}\n`,
      );
      process.stdout.write(`${JSON.stringify(toJson(result))}\n`);
    } else {
      process.stdout.write(summary(result));
    }
  };
  options.onServing = (result, origin) => {
    print(result);
    process.stderr.write(
      `deltaship demo: serving on ${origin} until Ctrl-C. Start another set with\n` +
        `  curl -s -X POST ${origin}/api/deployments -H 'content-type: application/json' -d @${result.workDir}/deployment.json\n` +
        `and follow it with curl on the statusQueryGetUri it answers.\n`,
    );
  };

  let result: DemoResult;
  try {
    result = await runDemo(options);
  } catch (error) {
    bars.clear();
    const message = (error as Error).message;
    console.error(`deltaship demo: ${message}`);
    return error instanceof ImageOptionError || message.includes("setup-debian.sh") ? 2 : 1;
  }
  print(result);
  return result.outcome === "succeeded" ? 0 : 1;
}

/** `DEV=PATH[,PATH...]`, repeatable; a device named twice holds the union. */
function parseHolds(
  texts: string[],
  inFleet: (option: string, device: string) => void,
): Record<string, string[]> {
  const holds: Record<string, string[]> = {};
  for (const text of texts) {
    const eq = text.indexOf("=");
    if (eq <= 0)
      throw new Error(`--holds: expected DEVICE=PATH[,PATH...] (or DEVICE= for nothing), found "${text}"`);
    const device = text.slice(0, eq);
    inFleet("--holds", device);
    const paths = text
      .slice(eq + 1)
      .split(",")
      .filter((p) => p !== "");
    holds[device] = [...(holds[device] ?? []), ...paths];
  }
  return holds;
}

/**
 * The --json shape exactly as documented (issue 7): outcome, setId, devices with images, manifest
 * pushes, emails. The fuller record (verification, link times, arrival order) is result.json in the work dir.
 */
function toJson(result: DemoResult) {
  return {
    outcome: result.outcome,
    setId: result.setId,
    devices: result.devices.map((d) => ({
      id: d.id,
      outcome: d.outcome,
      images: d.images.map((i) => ({
        image: i.image,
        digest: i.digest,
        bytesSent: i.bytesSent,
        pullBytes: i.pullBytes,
        outcome: i.outcome,
        ...(i.reason ? { reason: i.reason } : {}),
      })),
    })),
    manifestPushes: result.manifestPushes.map((p) => ({ device: p.device, at: p.at })),
    emails: result.emails.map((e) => ({ to: e.to, subject: e.subject, at: e.at })),
  };
}

function bytes(n: number): string {
  if (n >= 1024 * 1024) return `${(n / 1024 / 1024).toFixed(2)} MiB`;
  if (n >= 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${n} B`;
}

function summary(result: DemoResult): string {
  const rows = [["device", "image", "sent", "docker pull", "ratio", "link time", "outcome"]];
  let sent = 0;
  let pull = 0;
  for (const device of result.devices) {
    for (const image of device.images) {
      sent += image.bytesSent;
      pull += image.pullBytes;
      rows.push([
        device.id,
        image.image,
        bytes(image.bytesSent),
        bytes(image.pullBytes),
        image.pullBytes > 0 ? `${((100 * image.bytesSent) / image.pullBytes).toFixed(1)}%` : "-",
        `${(image.linkMs / 1000).toFixed(1)} s`,
        `${image.outcome}${image.verified ? ", verified" : ""}${image.reason ? `: ${image.reason}` : ""}`,
      ]);
    }
  }
  rows.push([
    "all",
    "",
    bytes(sent),
    bytes(pull),
    pull > 0 ? `${((100 * sent) / pull).toFixed(1)}%` : "-",
    "",
    "",
  ]);
  const widths = rows[0]!.map((_, c) => Math.max(...rows.map((r) => r[c]!.length)));
  const lines = rows.map((r) =>
    r
      .map((cell, c) => cell.padEnd(widths[c]!))
      .join("  ")
      .trimEnd(),
  );
  lines.splice(1, 0, widths.map((w) => "-".repeat(w)).join("  "));
  const out = [
    "",
    `Deployment set ${result.setId}: ${result.outcome.toUpperCase()}`,
    "",
    ...lines,
    "",
    `Arrival order: ${result.arrivals.map((a) => `${a.device} #${a.order} ${a.image} (${a.priority})`).join(", ") || "none"}`,
    `Manifest pushes (${result.manifestPushes.length}): ${result.manifestPushes.map((p) => `${p.device} at ${p.at}`).join(", ") || "none"}`,
    `Emails (${result.emails.length}): ${result.emails.map((e) => `"${e.subject}" to ${e.to}`).join(", ") || "none"}`,
    `Images kept in ${result.store === "oci" ? "OCI layout folders (registry/, devices/<id>/images/)" : "registries (docker-registry)"}`,
    `Written to ${result.workDir}: iothub-manifests/, emails/, devices/, result.json, deployment.json`,
    "",
  ];
  return out.join("\n");
}

/** One line per device on a terminal, redrawn in place; plain notes otherwise. */
class ProgressBars {
  private drawn = 0;
  constructor(private readonly tty: boolean) {}

  note(line: string): void {
    this.clear();
    process.stderr.write(`${line}\n`);
  }

  render(progress: DemoProgress): void {
    if (!this.tty) return;
    const lines: string[] = [];
    const status = progress.status;
    if (status !== undefined) {
      const counts = (status.customStatus as { counts?: Record<string, number> } | undefined)?.counts;
      lines.push(`set: ${status.runtimeStatus}${counts ? ` ${JSON.stringify(counts)}` : ""}`);
    }
    for (const p of Object.values(progress.links)) {
      const width = 30;
      const fraction = p.size > 0 ? p.sent / p.size : 0;
      const filled = Math.round(fraction * width);
      const bar = `${"#".repeat(filled)}${"-".repeat(width - filled)}`;
      const what = p.state === "idle" ? "idle" : `${p.state} ${bytes(p.sent)}/${bytes(p.size)}`;
      lines.push(`${p.device.padEnd(10)} [${bar}] ${what}  (total ${bytes(p.totalSent)})`);
    }
    this.clear();
    process.stderr.write(`${lines.join("\n")}\n`);
    this.drawn = lines.length;
  }

  clear(): void {
    if (!this.tty || this.drawn === 0) return;
    process.stderr.write(`\x1b[${this.drawn}A\x1b[0J`);
    this.drawn = 0;
  }
}
