// A critical set started after a large bulk set, on the same device, arrives first, and both
// complete. Both sets run through the real deploymentSet orchestration (durable-functions replay)
// with the real activities on Azurite and docker-registry; the device's bundles travel over local
// mode's simulated link (local/link.ts), which serves the outbox in priority order. The device
// reports an image when its bundle has arrived whole in the inbox, as the report trigger records it.
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import type { ActivityDeps } from "../../activities/deps.js";
import { withoutOutboxPrefix } from "../../config/priorities.js";
import { buildTar } from "../../delta/tar/writer.js";
import { readHead } from "../../edge-module/bundle-file.js";
import { type LinkProgress, SimulatedLink } from "../../local/link.js";
import type { DeploymentSetOutput } from "../../orchestrations/contract.js";
import type { SetStatus } from "../../orchestrations/decisions.js";
import { pushLabelled, realActivityDeps } from "../support/activity-world.js";
import { type Azurite, startAzurite } from "../support/azurite.js";
import { moduleManifest, replayDeploymentSet } from "../support/deployment-set.js";
import type { RaisedEvent } from "../support/durableReplay.js";
import { startRegistry, type TestRegistry } from "../support/registry.js";
import { reportInTransit } from "../support/reports.js";

const T0 = new Date("2026-11-28T09:00:00.000Z");
const DEVICE = "ship-1";
/** Random bytes do not compress: the bulk bundle stays about this large, seconds on the link below. */
const BULK_BYTES = 2_000_000;
const CRITICAL_BYTES = 60_000;
/** 1.5 Mbit/s: the bulk bundle takes about 11 s (room for the critical set to plan, build and place), the critical one 0.3 s. */
const LINK_BITS_PER_SECOND = 1_500_000;
/** Bound on every wait for the link: far above the transfers' few seconds. */
const WAIT_LIMIT_MS = 120_000;
const POLL_MS = 50;

let azurite: Azurite;
let registry: TestRegistry;
let deps: ActivityDeps;
let inbox: string;
let link: SimulatedLink;
let progress: LinkProgress | undefined;

async function pushImageOf(repository: string, bytes: number, labels: Record<string, string>) {
  const layer = await buildTar([
    { path: `app/${repository}.bin`, type: "file", content: randomBytes(bytes), mode: 0o644 },
  ]);
  await pushLabelled(registry, repository, "2.0", [layer], labels);
}

before(async () => {
  azurite = await startAzurite();
  registry = await startRegistry();
  inbox = await mkdtemp(join(tmpdir(), "deltaship-overtake-"));
  await pushImageOf("apps/dashboard", BULK_BYTES, { "deltaship.workstream": "dashboards" });
  await pushImageOf("apps/tempmonitor", CRITICAL_BYTES, { "deltaship.priority": "security" });
  // IoT Hub and email are recorders at the adapter boundary: this test is about the order.
  deps = await realActivityDeps(azurite, registry, {
    iotHub: { pushManifest: async () => {} },
    email: { sendEmail: async () => "op" },
  });
  link = new SimulatedLink({
    device: DEVICE,
    outbox: deps.blobs.outbox,
    inboxDir: inbox,
    bitsPerSecond: LINK_BITS_PER_SECOND,
    latencyMs: 50,
    dropsPerSecond: 0,
    pollMs: POLL_MS,
  });
  link.onProgress((p) => {
    progress = p;
  });
  link.start();
});
after(async () => {
  await link?.stop();
  await Promise.all([azurite?.stop(), registry?.stop()]);
  if (inbox) await rm(inbox, { recursive: true, force: true });
});

async function waitFor(what: string, check: () => boolean): Promise<void> {
  for (let waited = 0; waited < WAIT_LIMIT_MS; waited += POLL_MS) {
    if (check()) return;
    await new Promise((r) => setTimeout(r, POLL_MS));
  }
  throw new Error(
    `expected ${what} within ${WAIT_LIMIT_MS} ms, found it had not happened; is the link running?`,
  );
}

/** The device reports each in-transit item once the link has delivered its bundle whole. */
function deviceReportsArrivals(setId: string) {
  return (now: Date): Promise<RaisedEvent[]> =>
    reportInTransit(deps.state, setId, now, async (item) => {
      const file = item.bundleId!.replace(/\//g, "-");
      const arrived = () => link.transfers.find((t) => withoutOutboxPrefix(t.name) === file);
      await waitFor(`bundle ${file} of ${setId} to arrive`, () => arrived() !== undefined);
      return { ok: true, bytes: arrived()!.bytes };
    });
}

function run(setId: string, module: string, requestedAt: Date) {
  return replayDeploymentSet(
    deps,
    {
      setId,
      manifest: moduleManifest(module, `${registry.host}/apps/${module}:2.0`),
      devices: [DEVICE],
      requestedAt,
      deviceBatchSize: 10,
      priority: "normal",
    },
    deviceReportsArrivals(setId),
  );
}

describe("local mode: priority on one device's link", () => {
  test("a critical set started after a large bulk set arrives first, and both complete", async () => {
    const bulkRun = run("set-bulk", "dashboard", T0);
    // The critical set starts only once the bulk bundle is on the wire.
    await waitFor(
      "the bulk bundle to be in flight",
      () => progress?.state === "sending" && (progress.name ?? "").includes("/p3-bulk-"),
    );
    const criticalRun = run("set-critical", "tempmonitor", new Date(T0.getTime() + 60_000));
    const [bulk, critical] = await Promise.all([bulkRun, criticalRun]);

    for (const result of [bulk, critical]) {
      assert.equal(result.root.state, "completed", result.root.error);
      assert.deepEqual(result.root.output as DeploymentSetOutput, {
        state: "succeeded",
        failures: [],
        failureCount: 0,
      });
    }
    assert.equal((bulk.root.customStatus as SetStatus).priority?.class, "bulk");
    assert.equal((critical.root.customStatus as SetStatus).priority?.class, "critical");
    assert.equal((await deps.state.sets.getSet("set-bulk"))?.state, "succeeded");
    assert.equal((await deps.state.sets.getSet("set-critical"))?.state, "succeeded");

    const arrivals = link.transfers.map((t) => ({
      order: t.order,
      priority: t.priority,
      preempted: t.preempted,
    }));
    assert.deepEqual(arrivals, [
      { order: 1, priority: "critical", preempted: 0 },
      { order: 2, priority: "bulk", preempted: 1 },
    ]);
    // Each file in the inbox is the whole bundle: the bulk one resumed where it stopped.
    for (const transfer of link.transfers) {
      const path = join(inbox, transfer.name);
      const bytes = await readFile(path);
      const placed = await deps.blobs.outbox.getBlobClient(`${DEVICE}/${transfer.name}`).downloadToBuffer();
      assert.ok(bytes.equals(placed), `${transfer.name} arrived byte-exact`);
      await readHead(path);
    }
    assert.ok(
      link.transfers[1]!.bytes > 20 * link.transfers[0]!.bytes,
      `bulk ${link.transfers[1]!.bytes} bytes against critical ${link.transfers[0]!.bytes}`,
    );
  });
});
