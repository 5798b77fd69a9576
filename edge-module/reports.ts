/**
 * What the module tells IoT Hub, and the on-disk queue that carries it across outages and
 * restarts. Reports are at-least-once: the cloud side applies them idempotently.
 */
import { mkdir, readdir, readFile, rm } from "node:fs/promises";
import { join } from "node:path";
import { writeFileAtomic } from "./files.js";
import { errorText, type Logger } from "./log.js";

export interface ImageReport {
  readonly type: "imageReady" | "imageFailed";
  readonly setId: string;
  readonly bundleId: string;
  /** `repository:tag` in the local registry. */
  readonly image: string;
  /**
   * The image's manifest digest in the cloud's registry (from the signed bundle), the identity the
   * cloud waits for; empty only when the file was not a readable bundle.
   */
  readonly digest: string;
  /** Manifest digest in the local registry, when the image was made. */
  readonly localDigest?: string;
  readonly bytes: number;
  readonly durationMs: number;
  readonly reason?: string;
}

export interface InventoryReport {
  readonly type: "inventory";
  /** Each image with the digest the cloud knows it by (see `sourceDigests` in module.ts). */
  readonly images: readonly { readonly image: string; readonly digest: string }[];
}

export type Report = ImageReport | InventoryReport;

/** Where reports go: IoT Hub in production (see hub.ts). Rejects when they could not be handed over. */
export interface ReportSink {
  send(report: Report): Promise<void>;
}

/** Message properties IoT Hub routes can filter on (`$.on`, content type and encoding are set by hub.ts). */
export function reportProperties(report: Report): Record<string, string> {
  if (report.type === "inventory") return { type: report.type };
  return { type: report.type, setId: report.setId, bundleId: report.bundleId, image: report.image };
}

/** A queue this long means IoT Hub has been away for a very long time; older inventories are dropped first. */
export const MAX_QUEUED_REPORTS = 10_000;

export interface RetryPolicy {
  /** First wait after a failed send. */
  readonly initialDelayMs: number;
  /** Waits double up to this bound, so a returning hub is noticed within it. */
  readonly maxDelayMs: number;
}

export const DEFAULT_RETRY: RetryPolicy = { initialDelayMs: 1_000, maxDelayMs: 60_000 };

/**
 * Reports are files `<sequence>-<type>.json` in one folder, sent oldest first and deleted once
 * IoT Hub has acknowledged them (QoS 1 PUBACK over MQTT).
 */
export class ReportQueue {
  private sequence = 0;
  private wake: (() => void) | undefined;
  private stopped = false;
  private loop: Promise<void> | undefined;

  constructor(
    readonly dir: string,
    private readonly log: Logger,
    private readonly retry: RetryPolicy = DEFAULT_RETRY,
  ) {}

  async init(): Promise<void> {
    await mkdir(this.dir, { recursive: true });
    for (const name of await this.names()) {
      this.sequence = Math.max(this.sequence, Number.parseInt(name, 10) + 1);
    }
  }

  private async names(): Promise<string[]> {
    return (await readdir(this.dir)).filter((name) => /^\d{12}-[A-Za-z]+\.json$/.test(name)).sort();
  }

  /** Durably queues a report; returns once it is on disk. */
  async enqueue(report: Report): Promise<void> {
    const names = await this.names();
    if (report.type === "inventory") {
      // Only the newest inventory matters: it replaces any older one still waiting.
      for (const name of names.filter((n) => n.endsWith("-inventory.json")))
        await rm(join(this.dir, name), { force: true });
    }
    if (names.length >= MAX_QUEUED_REPORTS) {
      const oldest = names[0]!;
      await rm(join(this.dir, oldest), { force: true });
      this.log.log("warn", "report.dropped", { file: oldest, limit: MAX_QUEUED_REPORTS });
    }
    const name = `${String(this.sequence++).padStart(12, "0")}-${report.type}.json`;
    await writeFileAtomic(join(this.dir, name), JSON.stringify(report));
    this.log.log("info", "report.queued", {
      report: report.type,
      ...(report.type === "inventory" ? { images: report.images.length } : { bundleId: report.bundleId }),
    });
    this.wake?.();
  }

  async pending(): Promise<Report[]> {
    const reports: Report[] = [];
    for (const name of await this.names())
      reports.push(JSON.parse(await readFile(join(this.dir, name), "utf8")));
    return reports;
  }

  /** Starts sending in the background until `stop`. */
  start(sink: ReportSink): void {
    this.stopped = false;
    this.loop ??= this.run(sink).finally(() => {
      this.loop = undefined;
    });
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.wake?.();
    await this.loop;
  }

  private async sleep(ms: number): Promise<void> {
    await new Promise<void>((resolve) => {
      const timer = setTimeout(done, ms);
      function done() {
        clearTimeout(timer);
        resolve();
      }
      this.wake = done;
    });
    this.wake = undefined;
  }

  private async run(sink: ReportSink): Promise<void> {
    let delay = this.retry.initialDelayMs;
    while (!this.stopped) {
      const [next] = await this.names();
      if (next === undefined) {
        await this.sleep(this.retry.maxDelayMs);
        continue;
      }
      const path = join(this.dir, next);
      let report: Report;
      try {
        report = JSON.parse(await readFile(path, "utf8")) as Report;
      } catch (error) {
        // Replaced by a newer inventory meanwhile, or unreadable: neither can ever be sent.
        if ((error as NodeJS.ErrnoException).code !== "ENOENT") {
          this.log.log("error", "report.unreadable", { file: next, error: errorText(error) });
          await rm(path, { force: true });
        }
        continue;
      }
      const started = Date.now();
      try {
        await sink.send(report);
        await rm(path, { force: true });
        delay = this.retry.initialDelayMs;
        this.log.log("info", "report.sent", {
          report: report.type,
          ms: Date.now() - started,
          ...(report.type === "inventory" ? {} : { bundleId: report.bundleId }),
        });
      } catch (error) {
        this.log.log("warn", "report.retry", {
          report: report.type,
          error: errorText(error),
          retryInMs: delay,
        });
        await this.sleep(delay);
        delay = Math.min(delay * 2, this.retry.maxDelayMs);
      }
    }
  }
}
