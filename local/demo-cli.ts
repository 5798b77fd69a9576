/**
 * The command line of `deltaship demo`: options, progress bars per device while the set runs,
 * then a summary table (or, with --json, one JSON object on stdout and nothing else).
 */
import { parseArgs } from "node:util";
import { DEMO_DEFAULTS, type DemoOptions, type DemoProgress, type DemoResult, runDemo } from "./demo.js";

const HELP = `usage: deltaship demo [options]      (npm start)

Runs a whole deployment set on this machine, with no Azure account: Azurite for Tables and
Blobs, the Function App's own handlers and orchestrators on a local host, a registry per device,
the Image Reconstruction module per device, and a simulated satellite link between each
device's outbox and inbox. Needs the Debian packages of scripts/setup-debian.sh.

options:
  --devices N        devices in the fleet (default ${DEMO_DEFAULTS.devices})
  --bandwidth BPS    link capacity in bits/s, k and M suffixes allowed (default 256k)
  --drop-rate R      link drops per second of sending (default ${DEMO_DEFAULTS.dropRate})
  --latency MS       delay before each (re)connection sends (default ${DEMO_DEFAULTS.latencyMs})
  --time-factor F    simulated seconds per real second (default ${DEMO_DEFAULTS.timeFactor})
  --deadline ISO     how long the set waits for reports, ISO 8601 (default ${DEMO_DEFAULTS.deadline})
  --port P           port of the local Function App (default ${DEMO_DEFAULTS.port})
  --corrupt DEVICE   the link to DEVICE corrupts what it carries: the set fails, no manifest is pushed
  --work-dir DIR     where devices, manifests pushed and emails are written (default: a new temp dir)
  --serve            keep everything running after the sample set, for more deployments with curl
  --json             print one JSON object with the outcome on stdout and nothing else
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

  let result: DemoResult;
  try {
    result = await runDemo(options);
  } catch (error) {
    bars.clear();
    const message = (error as Error).message;
    console.error(`deltaship demo: ${message}`);
    return message.includes("setup-debian.sh") ? 2 : 1;
  }
  bars.clear();
  if (json) {
    process.stdout.write(`${JSON.stringify(toJson(result))}\n`);
  } else {
    process.stdout.write(summary(result));
  }
  return result.outcome === "succeeded" ? 0 : 1;
}

/** The documented --json shape: outcome, setId, devices with images, manifest pushes, emails. */
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
        verified: i.verified,
        linkSeconds: Math.round(i.linkMs / 100) / 10,
        ...(i.reason ? { reason: i.reason } : {}),
      })),
    })),
    manifestPushes: result.manifestPushes,
    emails: result.emails,
    arrivals: result.arrivals,
    workDir: result.workDir,
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
    `Written to ${result.workDir}: iothub-manifests/, emails/, devices/, result.json`,
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
