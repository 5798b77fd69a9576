/**
 * A simulated satellite link between one device's outbox (a Blob Storage prefix) and its inbox
 * folder, standing in for the file-transfer tool (FileCatalyst in the field).
 *
 * Bundles are copied in the order the outbox asks for (priority class, then sort key, then the
 * time they were placed), written in place into the inbox as they arrive, at a capped bandwidth
 * with latency; the connection drops at random and the transfer resumes where it stopped. A
 * newly placed bundle of a higher class overtakes one in flight, which resumes later. Time runs
 * `timeFactor` times faster than the wall clock so a demo of a slow link takes a minute.
 */
import { open, stat } from "node:fs/promises";
import { basename, join } from "node:path";
import type { ContainerClient } from "@azure/storage-blob";

export interface LinkOptions {
  device: string;
  outbox: ContainerClient;
  inboxDir: string;
  /** Link capacity in bits per simulated second (default 256 kbit/s). */
  bitsPerSecond?: number;
  /** Round-trip delay before each (re)connection starts sending, in simulated ms (default 600). */
  latencyMs?: number;
  /** Probability that the connection drops during one simulated second of sending (default 0.02). */
  dropsPerSecond?: number;
  /** How long a dropped link stays down, in simulated ms (default 5,000). */
  downtimeMs?: number;
  /** Simulated seconds per real second (default 1). */
  timeFactor?: number;
  /** How often the outbox is listed, in real ms (default 200). */
  pollMs?: number;
  /** Seeded randomness so runs repeat; default a fixed seed per device. */
  random?: () => number;
  /** Flip one byte near the end of every bundle (in the payloads), to show how a device refuses it. */
  corrupt?: boolean;
}

export interface TransferRecord {
  device: string;
  name: string;
  bytes: number;
  /** Priority class from the blob's metadata, `normal` when it has none. */
  priority: string;
  /** Simulated time from the first byte sent to the last, in ms. */
  linkMs: number;
  drops: number;
  /** Times another bundle overtook this one while it was in flight. */
  preempted: number;
  /** Wall-clock ISO time of arrival. */
  arrivedAt: string;
  /** Order of arrival on this device, from 1. */
  order: number;
}

export interface LinkProgress {
  device: string;
  name?: string;
  sent: number;
  size: number;
  totalSent: number;
  state: "idle" | "sending" | "down";
}

/** Priority classes in the order a link serves them. */
export const PRIORITY_ORDER = ["critical", "high", "normal", "bulk"] as const;
/** Where a corrupting link flips a byte: inside the last payload, past the signed header and manifest. */
const CORRUPT_OFFSET_FROM_END = 64;
/** Bytes written per step; small enough that preemption and drops take effect promptly. */
const STEP_BYTES = 4096;

interface Job {
  name: string;
  size: number;
  priority: string;
  sortKey: string;
  placedAt: number;
  sent: number;
  linkMs: number;
  drops: number;
  preempted: number;
}

export class SimulatedLink {
  readonly transfers: TransferRecord[] = [];
  private readonly jobs = new Map<string, Job>();
  private readonly seen = new Set<string>();
  private stopped = false;
  private loop?: Promise<void>;
  private totalSent = 0;
  private listeners: Array<(p: LinkProgress) => void> = [];
  private readonly options: Required<Omit<LinkOptions, "random">> & { random: () => number };

  constructor(options: LinkOptions) {
    this.options = {
      bitsPerSecond: 256_000,
      latencyMs: 600,
      dropsPerSecond: 0.02,
      downtimeMs: 5_000,
      timeFactor: 1,
      pollMs: 200,
      random: seededRandom(options.device),
      corrupt: false,
      ...options,
    };
  }

  onProgress(listener: (p: LinkProgress) => void): void {
    this.listeners.push(listener);
  }

  start(): void {
    this.loop ??= this.run();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    await this.loop;
  }

  /** Bytes sent over this link so far, including bytes resent after a drop. */
  get bytesSent(): number {
    return this.totalSent;
  }

  private emit(p: Omit<LinkProgress, "device" | "totalSent">): void {
    for (const l of this.listeners) l({ device: this.options.device, totalSent: this.totalSent, ...p });
  }

  private async sleepSimulated(ms: number): Promise<void> {
    await new Promise((r) => setTimeout(r, ms / this.options.timeFactor));
  }

  private async refresh(): Promise<void> {
    const prefix = `${this.options.device}/`;
    for await (const blob of this.options.outbox.listBlobsFlat({ prefix, includeMetadata: true })) {
      if (this.seen.has(blob.name)) continue;
      const size = blob.properties.contentLength ?? 0;
      if (blob.properties.copyStatus === "pending" || size === 0) continue;
      this.seen.add(blob.name);
      const metadata = blob.metadata ?? {};
      this.jobs.set(blob.name, {
        name: blob.name,
        size,
        priority: PRIORITY_ORDER.includes(metadata.priority as never) ? String(metadata.priority) : "normal",
        sortKey: metadata.sortkey ?? metadata.sortKey ?? basename(blob.name),
        placedAt: this.seen.size,
        sent: 0,
        linkMs: 0,
        drops: 0,
        preempted: 0,
      });
    }
  }

  private next(): Job | undefined {
    const rank = (j: Job) => PRIORITY_ORDER.indexOf(j.priority as never);
    return [...this.jobs.values()].sort(
      (a, b) => rank(a) - rank(b) || a.sortKey.localeCompare(b.sortKey) || a.placedAt - b.placedAt,
    )[0];
  }

  private async run(): Promise<void> {
    let lastPoll = 0;
    while (!this.stopped) {
      if (Date.now() - lastPoll >= this.options.pollMs) {
        await this.refresh();
        lastPoll = Date.now();
      }
      const job = this.next();
      if (job === undefined) {
        this.emit({ sent: 0, size: 0, state: "idle" });
        await new Promise((r) => setTimeout(r, this.options.pollMs));
        continue;
      }
      await this.send(job);
    }
  }

  /** Sends one job until it completes, the link drops, or a more urgent job appears. */
  private async send(job: Job): Promise<void> {
    const { options } = this;
    await this.sleepSimulated(options.latencyMs);
    job.linkMs += options.latencyMs;
    const path = join(options.inboxDir, basename(job.name));
    // Resume from what the inbox already holds, as a resuming mover does.
    const have = await stat(path).then(
      (s) => s.size,
      () => 0,
    );
    job.sent = Math.min(have, job.size);
    const file = await open(path, job.sent === 0 ? "w" : "r+");
    const blob = options.outbox.getBlobClient(job.name);
    const bytesPerMs = options.bitsPerSecond / 8 / 1000;
    let lastPoll = Date.now();
    try {
      while (job.sent < job.size && !this.stopped) {
        const count = Math.min(STEP_BYTES, job.size - job.sent);
        const chunk = await blob.downloadToBuffer(job.sent, count);
        const flip = job.size - CORRUPT_OFFSET_FROM_END - job.sent;
        if (options.corrupt && flip >= 0 && flip < chunk.length) chunk[flip] ^= 0xff;
        await file.write(chunk, 0, chunk.length, job.sent);
        job.sent += chunk.length;
        this.totalSent += chunk.length;
        const ms = chunk.length / bytesPerMs;
        job.linkMs += ms;
        this.emit({ name: job.name, sent: job.sent, size: job.size, state: "sending" });
        await this.sleepSimulated(ms);
        if (options.random() < options.dropsPerSecond * (ms / 1000)) {
          job.drops++;
          this.emit({ name: job.name, sent: job.sent, size: job.size, state: "down" });
          await this.sleepSimulated(options.downtimeMs);
          return;
        }
        if (Date.now() - lastPoll >= options.pollMs) {
          await this.refresh();
          lastPoll = Date.now();
          if (this.next() !== job) {
            job.preempted++;
            return;
          }
        }
      }
    } finally {
      await file.close();
    }
    if (job.sent >= job.size) {
      this.jobs.delete(job.name);
      this.transfers.push({
        device: options.device,
        name: basename(job.name),
        bytes: job.size,
        priority: job.priority,
        linkMs: Math.round(job.linkMs),
        drops: job.drops,
        preempted: job.preempted,
        arrivedAt: new Date().toISOString(),
        order: this.transfers.length + 1,
      });
    }
  }
}

/** A small deterministic generator (mulberry32) seeded from a string. */
export function seededRandom(seed: string): () => number {
  let h = 1779033703 ^ seed.length;
  for (let i = 0; i < seed.length; i++) {
    h = Math.imul(h ^ seed.charCodeAt(i), 3432918353);
    h = (h << 13) | (h >>> 19);
  }
  let a = h >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
