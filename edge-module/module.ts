/**
 * The Image Reconstruction module as a library: inbox polling, one bundle at a time through the
 * processor, reports through a queue to a sink (IoT Hub in production). `main.ts` wires it to
 * the environment; tests and local mode call `startEdgeModule` with their own parts.
 */
import type { EdgeEngine, TrustedKeys } from "./engine.js";
import { Inbox } from "./inbox.js";
import { Journal } from "./journal.js";
import { errorText, type Logger } from "./log.js";
import { BundleProcessor, type CrashPoint, makeModuleDirs, moduleDirs } from "./processor.js";
import { DEFAULT_RETRY, ReportQueue, type ReportSink, type RetryPolicy } from "./reports.js";

export interface ReportChannel extends ReportSink {
  onTrustedKeys?(handler: (keys: TrustedKeys) => void): void;
  onInventory?(handler: () => Promise<unknown>): void;
}

export interface EdgeModuleOptions {
  readonly inboxDir: string;
  /** Journal, report queue and scratch; keep it on a persistent volume. */
  readonly stateDir: string;
  readonly engine: EdgeEngine;
  readonly channel: ReportChannel;
  readonly log: Logger;
  /** Keys from the environment or a mounted file; the twin's keys are added to (and override) these. */
  readonly trustedKeys: TrustedKeys;
  readonly pollMs: number;
  readonly quietMs: number;
  readonly retry?: RetryPolicy;
  readonly ignoredSuffixes?: readonly string[];
  readonly registryStorageDir?: string;
  readonly diskReserveBytes?: number;
  readonly crashAfter?: CrashPoint;
  readonly sourceWaitMs?: number;
}

export interface EdgeModule {
  /** Queues an inventory report of the local registry. */
  reportInventory(): Promise<{ image: string; digest: string }[]>;
  stop(): Promise<void>;
}

/** An inventory that fails at start (registry still starting) is retried this often. */
const INVENTORY_RETRY_MS = 5_000;

export async function startEdgeModule(o: EdgeModuleOptions): Promise<EdgeModule> {
  const dirs = moduleDirs(o.inboxDir, o.stateDir);
  await makeModuleDirs(dirs);
  const journal = new Journal(dirs.journal);
  await journal.init();
  const reports = new ReportQueue(dirs.reports, o.log, o.retry ?? DEFAULT_RETRY);
  await reports.init();

  let twinKeys: TrustedKeys = {};
  o.channel.onTrustedKeys?.((keys) => {
    twinKeys = keys;
    o.log.log("info", "trust.updated", { source: "twin", keyIds: Object.keys(keys) });
  });
  const processor = new BundleProcessor({
    engine: o.engine,
    journal,
    reports,
    log: o.log,
    dirs,
    trust: () => ({ ...o.trustedKeys, ...twinKeys }),
    ...(o.registryStorageDir ? { registryStorageDir: o.registryStorageDir } : {}),
    ...(o.diskReserveBytes !== undefined ? { diskReserveBytes: o.diskReserveBytes } : {}),
    ...(o.crashAfter ? { crashAfter: o.crashAfter } : {}),
    ...(o.sourceWaitMs !== undefined ? { sourceWaitMs: o.sourceWaitMs } : {}),
  });
  const inbox = new Inbox({
    dir: dirs.inbox,
    quietMs: o.quietMs,
    declaredLength: (path) => o.engine.declaredLength(path),
    readHead: (path) => o.engine.readHead(path),
    hasUnfilledBlock: (path) => o.engine.hasUnfilledBlock(path),
    ...(o.ignoredSuffixes ? { ignoredSuffixes: o.ignoredSuffixes } : {}),
  });

  const reportInventory = async () => {
    const rebuilt = new Map<string, string>();
    for (const entry of await journal.list()) {
      if (entry.outcome === "ready" && entry.digest && entry.sourceDigest)
        rebuilt.set(entry.digest, entry.sourceDigest);
    }
    // Images this module rebuilt are known to the cloud by their registry digest, not the local one.
    const images = (await o.engine.inventory()).map((i) => ({
      ...i,
      digest: rebuilt.get(i.digest) ?? i.digest,
    }));
    await reports.enqueue({ type: "inventory", images });
    return images;
  };
  o.channel.onInventory?.(async () => ({ images: await reportInventory() }));

  let stopped = false;
  const sleepers = new Set<() => void>();
  const pause = (ms: number) =>
    new Promise<void>((resolve) => {
      const timer = setTimeout(wake, ms);
      function wake() {
        clearTimeout(timer);
        sleepers.delete(wake);
        resolve();
      }
      sleepers.add(wake);
    });

  o.log.log("info", "module.start", { inbox: dirs.inbox, state: o.stateDir });
  reports.start(o.channel);

  const inventoryAtStart = (async () => {
    while (!stopped) {
      try {
        const images = await reportInventory();
        o.log.log("info", "inventory", { images: images.length });
        return;
      } catch (error) {
        o.log.log("warn", "inventory.retry", { error: errorText(error), retryInMs: INVENTORY_RETRY_MS });
        await pause(INVENTORY_RETRY_MS);
      }
    }
  })();

  const loop = (async () => {
    let waitingForKeys = false;
    let recovered = false;
    while (!stopped) {
      // Without any trusted key every bundle would fail for a reason that is ours, not the
      // bundle's (the twin may not have been read yet): leave them in the inbox until keys come.
      const haveKeys = Object.keys({ ...o.trustedKeys, ...twinKeys }).length > 0;
      if (!haveKeys && !waitingForKeys) o.log.log("warn", "trust.missing", { waitingFor: "trusted keys" });
      waitingForKeys = !haveKeys;
      try {
        // Bundles a crash left in processing/ are finished or restarted before new ones are looked at.
        if (haveKeys && !recovered) {
          await processor.recover();
          recovered = true;
        }
        for (const arrival of haveKeys && recovered ? await inbox.poll() : []) {
          if (stopped) break;
          if (await processor.waitsForSources(arrival)) {
            inbox.forget(arrival.name);
            continue;
          }
          await processor.handle(arrival);
        }
      } catch (error) {
        // An I/O error on the module's own folders: log it and keep serving; a claimed bundle resumes at restart.
        o.log.log("error", "inbox.error", { error: errorText(error) });
      }
      if (!stopped) await pause(o.pollMs);
    }
  })();

  return {
    reportInventory,
    async stop() {
      stopped = true;
      for (const wake of [...sleepers]) wake();
      await loop;
      await inventoryAtStart;
      await reports.stop();
      o.log.log("info", "module.stop");
    },
  };
}
