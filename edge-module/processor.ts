/**
 * One bundle from complete file to report: claim it, verify it, check the registry and the
 * disk, rebuild the image, push it, queue the report, file the bundle under `done/` or
 * `failed/`. Every step is recorded in the journal first, so a crash or power loss at any point
 * either resumes (after the push) or starts the bundle over (before it); the image reaches its
 * tag only through the engine's push, which writes the manifest after its verified blobs.
 */
import { access, mkdir, readdir } from "node:fs/promises";
import { join } from "node:path";
import { checkFreeSpace } from "./disk.js";
import type { BundleHead, EdgeEngine, TrustedKeys } from "./engine.js";
import { moveDurably, removeTree, writeFileAtomic } from "./files.js";
import type { Arrival } from "./inbox.js";
import { type Journal, type JournalEntry, journalFileName } from "./journal.js";
import { errorText, type Logger } from "./log.js";
import type { ReportQueue } from "./reports.js";

export interface ModuleDirs {
  readonly inbox: string;
  /** Complete bundles being worked on (moved out of the mover's way). */
  readonly processing: string;
  readonly done: string;
  readonly failed: string;
  readonly journal: string;
  readonly reports: string;
  readonly scratch: string;
}

/** `processing/`, `done/` and `failed/` live inside the inbox so moves are renames on one file system. */
export function moduleDirs(inbox: string, state: string): ModuleDirs {
  return {
    inbox,
    processing: join(inbox, "processing"),
    done: join(inbox, "done"),
    failed: join(inbox, "failed"),
    journal: join(state, "journal"),
    reports: join(state, "reports"),
    scratch: join(state, "scratch"),
  };
}

export async function makeModuleDirs(dirs: ModuleDirs): Promise<void> {
  for (const dir of Object.values(dirs)) await mkdir(dir, { recursive: true });
}

/**
 * Reports name the bundle as the cloud placed it: the file name (the outbox blob name below the
 * device prefix, see `state/blobs.ts` `outboxBlobName`), unless the name carries dot-separated
 * `bundle-<id>` / `set-<id>` parts, e.g. `0200-normal.set-7f3c.bundle-ab12.dsb`. Without a
 * `set-` part the set id is empty and the cloud finds the set from the device and image digest.
 */
export function namePart(name: string, key: "set" | "bundle"): string | undefined {
  const prefix = `${key}-`;
  for (const part of name.split(".")) {
    if (part.startsWith(prefix) && part.length > prefix.length) return part.slice(prefix.length);
  }
  return undefined;
}

/** Named points where a test may kill the process to prove recovery (see `crashAfter`). */
export type CrashPoint = "claimed" | "verified" | "applied" | "pushed" | "reported";

export interface ProcessorOptions {
  readonly engine: EdgeEngine;
  readonly journal: Journal;
  readonly reports: ReportQueue;
  readonly log: Logger;
  readonly dirs: ModuleDirs;
  /** Current trusted keys (the twin may change them while the module runs). */
  trust(): TrustedKeys;
  /** The local registry's storage folder, when mounted, to check its free space too. */
  readonly registryStorageDir?: string;
  readonly diskReserveBytes?: number;
  /** Fault injection for the crash tests: SIGKILL this process right after that step is journaled. */
  readonly crashAfter?: CrashPoint;
  /**
   * How long a bundle whose source layers are not all in the local registry waits in the inbox
   * (another bundle of the same set may bring them) before it fails; default SOURCE_WAIT_MS.
   */
  readonly sourceWaitMs?: number;
}

/**
 * A set's later bundles may build on layers its earlier ones bring (a base two images share
 * crosses the link once), and the mover may deliver them in any order: wait this long for them.
 */
export const SOURCE_WAIT_MS = 24 * 60 * 60 * 1000;

class StageError extends Error {}

async function stage<T>(what: string, work: () => Promise<T>): Promise<T> {
  try {
    return await work();
  } catch (error) {
    if (error instanceof StageError) throw error;
    throw new StageError(`${what}: ${errorText(error)}`);
  }
}

async function exists(path: string): Promise<boolean> {
  try {
    await access(path);
    return true;
  } catch {
    return false;
  }
}

export class BundleProcessor {
  /** When each bundle waiting for its source layers was first found waiting, by bundle id. */
  private readonly waitingSince = new Map<string, number>();

  constructor(private readonly o: ProcessorOptions) {}

  /**
   * True when the bundle's source layers are not all here yet and it may still wait for them;
   * it stays in the inbox untouched, and is offered again on a later poll.
   */
  async waitsForSources(arrival: Arrival): Promise<boolean> {
    if (arrival.kind === "unusable") return false;
    const { head } = arrival;
    const missing = await this.o.engine.missingSourceLayers(head).catch(() => []);
    if (missing.length === 0) {
      this.waitingSince.delete(head.bundleId);
      return false;
    }
    const since = this.waitingSince.get(head.bundleId) ?? Date.now();
    this.waitingSince.set(head.bundleId, since);
    if (Date.now() - since >= (this.o.sourceWaitMs ?? SOURCE_WAIT_MS)) {
      this.waitingSince.delete(head.bundleId);
      return false;
    }
    this.o.log.log("info", "bundle.waiting", {
      bundleId: head.bundleId,
      file: arrival.name,
      missing: missing.length,
      waitedMs: Date.now() - since,
    });
    return true;
  }

  private crashPoint(point: CrashPoint): void {
    if (this.o.crashAfter === point) {
      this.o.log.log("warn", "crash.injected", { after: point });
      process.kill(process.pid, "SIGKILL");
    }
  }

  private processingPath(bundleId: string): string {
    return join(this.o.dirs.processing, journalFileName(bundleId).replace(/\.json$/, ".bundle"));
  }

  /** At start: finish or restart every bundle a crash left in `processing/`. */
  async recover(): Promise<void> {
    for (const name of (await readdir(this.o.dirs.processing)).sort()) {
      if (!name.endsWith(".bundle")) continue;
      const path = join(this.o.dirs.processing, name);
      let head: BundleHead | undefined;
      try {
        head = await this.o.engine.readHead(path);
      } catch (error) {
        head = undefined;
        this.o.log.log("error", "recover.unreadable", { file: name, error: errorText(error) });
      }
      const entry = head && (await this.o.journal.read(head.bundleId));
      if (!head || !entry) {
        // Only the module writes here, always journal first: this file was not put here by it.
        await this.fileAway(path, name, this.o.dirs.failed, "found in processing/ without a journal entry");
        continue;
      }
      this.o.log.log("info", "recover", {
        bundleId: entry.bundleId,
        step: entry.step,
        attempts: entry.attempts,
      });
      const resumed =
        entry.step === "claimed"
          ? await this.o.journal.write({ ...entry, attempts: entry.attempts + 1 })
          : entry;
      await this.run(resumed, path, head);
    }
  }

  async handle(arrival: Arrival): Promise<void> {
    if (arrival.kind === "unusable") {
      this.o.log.log("warn", "bundle.unusable", { file: arrival.name, reason: arrival.reason });
      await this.o.reports.enqueue({
        type: "imageFailed",
        setId: namePart(arrival.name, "set") ?? "",
        bundleId: namePart(arrival.name, "bundle") ?? arrival.name,
        image: "",
        digest: "",
        bytes: 0,
        durationMs: 0,
        reason: arrival.reason,
      });
      await this.fileAway(arrival.path, arrival.name, this.o.dirs.failed, arrival.reason);
      return;
    }
    const { head, name } = arrival;
    const setId = namePart(name, "set") ?? "";
    const reportedId = namePart(name, "bundle") ?? name;
    const image = `${head.repository}:${head.tag}`;
    const prior = await this.o.journal.read(head.bundleId);
    if (prior?.outcome === "ready" && (prior.step === "finished" || prior.step === "reported")) {
      const current = await this.o.engine.digestOf(head.repository, head.tag).catch(() => undefined);
      if (current !== undefined && current === prior.digest) {
        this.o.log.log("info", "bundle.duplicate", {
          bundleId: head.bundleId,
          file: name,
          image,
          digest: current,
        });
        await this.o.reports.enqueue({
          type: "imageReady",
          setId,
          bundleId: reportedId,
          image,
          digest: head.sourceDigest || current,
          localDigest: current,
          bytes: prior.bytes ?? 0,
          durationMs: 0,
        });
        await this.fileAway(arrival.path, name, this.o.dirs.done);
        return;
      }
      this.o.log.log("warn", "bundle.reapply", {
        bundleId: head.bundleId,
        image,
        expected: prior.digest,
        found: current,
      });
    }
    const entry = await this.o.journal.write({
      bundleId: head.bundleId,
      fileName: name,
      setId,
      reportedId,
      image,
      sourceDigest: head.sourceDigest,
      step: "claimed",
      attempts: 1,
    });
    const path = this.processingPath(head.bundleId);
    await moveDurably(arrival.path, path);
    this.o.log.log("info", "bundle.claimed", { bundleId: head.bundleId, file: name, setId, image });
    this.crashPoint("claimed");
    await this.run(entry, path, head);
  }

  private async run(start: JournalEntry, path: string, head: BundleHead): Promise<void> {
    let entry = start;
    const scratch = join(this.o.dirs.scratch, journalFileName(head.bundleId).replace(/\.json$/, ""));
    if (entry.step === "claimed") {
      const started = Date.now();
      try {
        const { digest, bytes } = await this.make(head, path, scratch);
        entry = await this.o.journal.write({
          ...entry,
          step: "pushed",
          outcome: "ready",
          digest,
          bytes,
          durationMs: Date.now() - started,
        });
        this.crashPoint("pushed");
      } catch (error) {
        const reason = errorText(error);
        this.o.log.log("error", "bundle.rejected", {
          bundleId: head.bundleId,
          reason,
          ms: Date.now() - started,
        });
        entry = await this.o.journal.write({
          ...entry,
          step: "failing",
          outcome: "failed",
          reason,
          durationMs: Date.now() - started,
        });
      }
      await removeTree(scratch);
    }
    if (entry.step === "pushed" || entry.step === "failing") {
      const ready = entry.step === "pushed";
      await this.o.reports.enqueue({
        type: ready ? "imageReady" : "imageFailed",
        setId: entry.setId,
        bundleId: entry.reportedId,
        image: entry.image ?? `${head.repository}:${head.tag}`,
        // The cloud knows the image by its registry digest; the local one differs (layers stored uncompressed).
        digest: head.sourceDigest || (entry.digest ?? ""),
        ...(entry.digest ? { localDigest: entry.digest } : {}),
        bytes: entry.bytes ?? 0,
        durationMs: entry.durationMs ?? 0,
        ...(ready ? {} : { reason: entry.reason ?? "unknown" }),
      });
      entry = await this.o.journal.write({ ...entry, step: "reported" });
      this.crashPoint("reported");
    }
    if (entry.step === "reported") {
      if (await exists(path)) {
        const ready = entry.outcome === "ready";
        await this.fileAway(
          path,
          entry.fileName,
          ready ? this.o.dirs.done : this.o.dirs.failed,
          entry.reason,
        );
      }
      await removeTree(scratch);
      await this.o.journal.write({ ...entry, step: "finished" });
      this.o.log.log("info", "bundle.finished", {
        bundleId: entry.bundleId,
        outcome: entry.outcome,
        image: entry.image,
        digest: entry.digest,
        ms: entry.durationMs,
      });
    }
  }

  /** Verify, check, apply, push. Throws a StageError whose message is the report's reason. */
  private async make(
    head: BundleHead,
    path: string,
    scratch: string,
  ): Promise<{ digest: string; bytes: number }> {
    const { engine, log } = this.o;
    const bundleId = head.bundleId;
    const trust = this.o.trust();
    let t = Date.now();
    await stage("signature check failed", async () => {
      if (Object.keys(trust).length === 0) {
        throw new Error(
          "no trusted keys are configured; set desired property trustedKeys, DELTASHIP_TRUSTED_KEYS or DELTASHIP_TRUSTED_KEYS_FILE",
        );
      }
      await engine.verifySignature(path, trust);
    });
    log.log("info", "bundle.verified", { bundleId, ms: Date.now() - t });
    this.crashPoint("verified");

    t = Date.now();
    const missing = await stage("checking source layers in the local registry failed", () =>
      engine.missingSourceLayers(head),
    );
    if (missing.length > 0) {
      throw new StageError(
        `bundle ${bundleId} needs ${missing.length} source layer(s) not in the local registry: ${missing.join(", ")}; deploy the base image first`,
      );
    }
    log.log("info", "bundle.sourcesPresent", {
      bundleId,
      layers: head.sourceLayers.length,
      ms: Date.now() - t,
    });

    await removeTree(scratch);
    await mkdir(scratch, { recursive: true });
    await stage("disk space check failed", () =>
      checkFreeSpace(
        [
          { path: scratch, bytes: head.scratchBytes + head.outputBytes, purpose: "scratch" },
          ...(this.o.registryStorageDir
            ? [{ path: this.o.registryStorageDir, bytes: head.outputBytes, purpose: "registry" }]
            : []),
        ],
        this.o.diskReserveBytes,
      ),
    );

    t = Date.now();
    log.log("info", "apply.start", { bundleId });
    const rebuilt = await stage("rebuilding the image failed", () =>
      engine.rebuild(path, trust, scratch, () => {
        log.log("info", "apply.done", { bundleId, ms: Date.now() - t });
        this.crashPoint("applied");
      }),
    );
    log.log("info", "push.done", {
      bundleId,
      image: `${head.repository}:${head.tag}`,
      digest: rebuilt.digest,
      bytes: rebuilt.bytesWritten,
      ms: Date.now() - t,
    });
    return { digest: rebuilt.digest, bytes: rebuilt.bytesWritten };
  }

  /** Moves a finished bundle out of the way, never overwriting an earlier one of the same name. */
  private async fileAway(path: string, name: string, dir: string, reason?: string): Promise<void> {
    let target = join(dir, name);
    for (let n = 1; await exists(target); n++) target = join(dir, `${name}.${n}`);
    if (reason !== undefined) await writeFileAtomic(`${target}.reason.txt`, `${reason}\n`);
    await moveDurably(path, target);
  }
}
