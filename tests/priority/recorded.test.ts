// The priority decision end to end: deploymentSet replayed through durable-functions with the
// real activities (Azurite, docker-registry as ACR, the real bundle builder). Image labels come
// from the pushed image configs; the decision lands on the set row, in the custom status and in
// GET /api/deployments/{id}; each device's outbox blob carries class and sort key in its name,
// metadata and blob index tags, and the edge module's inbox still recognises the renamed file.
import assert from "node:assert/strict";
import { mkdir, mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import azureFunctions from "@azure/functions";
import type { ActivityDeps } from "../../activities/deps.js";
import { placeBundles } from "../../activities/placeBundles.js";
import type { EmailMessage } from "../../adapters/email.js";
import { withoutOutboxPrefix } from "../../config/priorities.js";
import { declaredLength, hasUnfilledBlock, readHead } from "../../edge-module/bundle-file.js";
import { Inbox } from "../../edge-module/inbox.js";
import { getDeployment } from "../../functions/query/handlers.js";
import type { DeploymentSetInput } from "../../orchestrations/contract.js";
import type { SetStatus } from "../../orchestrations/decisions.js";
import { buildTar, realFiles } from "../bundle/fixtures.js";
import { pushLabelled, realActivityDeps } from "../support/activity-world.js";
import { type Azurite, startAzurite } from "../support/azurite.js";
import { moduleManifest, replayDeploymentSet } from "../support/deployment-set.js";
import type { RaisedEvent } from "../support/durableReplay.js";
import { startRegistry, type TestRegistry } from "../support/registry.js";
import { reportInTransit } from "../support/reports.js";

const T0 = new Date("2026-11-28T09:00:00.000Z");
const DEVICE = "vessel-1";
const SET_DEADLINE = "2026-12-12T09:00:00.000Z";

let azurite: Azurite;
let registry: TestRegistry;
let deps: ActivityDeps;
let scratch: string;
const emails: EmailMessage[] = [];

/** An image of three real files, starting at the `files`th, whose config carries the labels. */
async function pushLabelledFiles(repository: string, files: number, labels: Record<string, string>) {
  const layer = await buildTar(realFiles("/usr/bin", "usr/bin", { limit: 3, maxFile: 200_000, skip: files }));
  await pushLabelled(registry, repository, "2.0", [layer], labels);
}

before(async () => {
  azurite = await startAzurite();
  registry = await startRegistry();
  scratch = await mkdtemp(join(tmpdir(), "deltaship-priority-"));
  await pushLabelledFiles("apps/tempmonitor", 0, { "deltaship.priority": "security" });
  await pushLabelledFiles("apps/dashboard", 3, { "deltaship.workstream": "dashboards" });
  // IoT Hub and email are recorders at the adapter boundary: this test is about priorities.
  deps = await realActivityDeps(azurite, registry, {
    iotHub: { pushManifest: async () => {} },
    email: {
      sendEmail: async (message) => {
        emails.push(message);
        return `op-${emails.length}`;
      },
    },
  });
});
after(async () => {
  await Promise.all([azurite?.stop(), registry?.stop()]);
  if (scratch) await rm(scratch, { recursive: true, force: true });
});

function devicesReport(setId: string) {
  return (now: Date): Promise<RaisedEvent[]> =>
    reportInTransit(deps.state, setId, now, () => ({ ok: true, bytes: 1 }));
}

function run(setId: string, module: string, requested: DeploymentSetInput["priority"]) {
  return replayDeploymentSet(
    deps,
    {
      setId,
      manifest: moduleManifest(module, `${registry.host}/apps/${module}:2.0`),
      devices: [DEVICE],
      requestedAt: T0,
      deadline: SET_DEADLINE,
      deviceBatchSize: 10,
      priority: requested,
    },
    devicesReport(setId),
  );
}

async function bundleOf(setId: string): Promise<string> {
  const page = await deps.state.sets.listItems(setId);
  assert.equal(page.items.length, 1);
  return page.items[0]!.bundleId!.replace(/\//g, "-");
}

describe("priority decisions recorded and placed", () => {
  test("a labelled security fix and a dashboard update: set rows, status, query API, outbox order", async () => {
    const critical = await run("set-fix", "tempmonitor", "bulk");
    assert.equal(critical.root.state, "completed", critical.root.error);
    const bulk = await run("set-dash", "dashboard", "high");
    assert.equal(bulk.root.state, "completed", bulk.root.error);

    assert.deepEqual((critical.root.customStatus as SetStatus).priority, {
      class: "critical",
      rule: "cold-chain-security-fix",
      rulesVersion: "2026-11-28.1",
      deadline: "2026-11-28T15:00:00.000Z",
    });
    assert.deepEqual((bulk.root.customStatus as SetStatus).priority, {
      class: "bulk",
      rule: "cosmetic-bulk",
      rulesVersion: "2026-11-28.1",
      cappedFrom: "high",
    });

    const fixRow = await deps.state.sets.getSet("set-fix");
    assert.equal(fixRow?.state, "succeeded");
    assert.deepEqual(
      {
        priority: fixRow?.priority,
        priorityClass: fixRow?.priorityClass,
        priorityRule: fixRow?.priorityRule,
        priorityRulesVersion: fixRow?.priorityRulesVersion,
        priorityDeadline: fixRow?.priorityDeadline,
        priorityCappedFrom: fixRow?.priorityCappedFrom,
      },
      {
        priority: 0,
        priorityClass: "critical",
        priorityRule: "cold-chain-security-fix",
        priorityRulesVersion: "2026-11-28.1",
        priorityDeadline: "2026-11-28T15:00:00.000Z",
        priorityCappedFrom: undefined,
      },
    );

    const response = await getDeployment(
      new azureFunctions.HttpRequest({
        method: "GET",
        url: "https://deltaship.example/api/deployments/set-dash",
        params: { id: "set-dash" },
      }),
      { state: deps.state, defaultPageSize: 10 },
    );
    assert.equal(response.status ?? 200, 200);
    const { set } = response.jsonBody as { set: Record<string, unknown> };
    assert.deepEqual(
      [set.priority, set.priorityClass, set.priorityRule, set.priorityCappedFrom, set.priorityDeadline],
      [3, "bulk", "cosmetic-bulk", "high", undefined],
    );

    const fixBundle = await bundleOf("set-fix");
    const dashBundle = await bundleOf("set-dash");
    const listed: { name: string; metadata?: Record<string, string>; tags?: Record<string, string> }[] = [];
    for await (const blob of deps.blobs.outbox.listBlobsFlat({
      prefix: `${DEVICE}/`,
      includeMetadata: true,
      includeTags: true,
    })) {
      listed.push({ name: blob.name, metadata: blob.metadata, tags: blob.tags });
    }
    const fixName = `${DEVICE}/p0-critical-20261128T150000Z-20261128T090000Z-${fixBundle}`;
    const dashName = `${DEVICE}/p3-bulk-20261212T090000Z-20261128T090000Z-${dashBundle}`;
    const fixOrder = { priority: "critical", sortkey: "20261128T150000Z-20261128T090000Z" };
    const dashOrder = { priority: "bulk", sortkey: "20261212T090000Z-20261128T090000Z" };
    // Listing is by name, so the listing is the serving order.
    assert.deepEqual(listed, [
      { name: fixName, metadata: fixOrder, tags: fixOrder },
      { name: dashName, metadata: dashOrder, tags: dashOrder },
    ]);
    const tagged: string[] = [];
    for await (const blob of deps.blobs.outbox.findBlobsByTags(`priority='critical'`)) tagged.push(blob.name);
    assert.deepEqual(tagged, [fixName]);

    // Placing again (an activity retry) finds the same blob and adds none.
    await placeBundles(
      {
        setId: "set-fix",
        placements: [
          { device: DEVICE, bundleId: (await deps.state.sets.listItems("set-fix")).items[0]!.bundleId! },
        ],
        order: { priority: "critical", sortKey: fixOrder.sortkey },
      },
      deps,
    );
    let count = 0;
    for await (const _ of deps.blobs.outbox.listBlobsFlat({ prefix: `${DEVICE}/` })) count++;
    assert.equal(count, 2);

    // The edge module reads the bundle header, not the name: the prefixed file is a complete bundle.
    const inboxDir = join(scratch, "inbox");
    await rm(inboxDir, { recursive: true, force: true });
    await mkdir(inboxDir);
    const fileName = fixName.slice(DEVICE.length + 1);
    await writeFile(
      join(inboxDir, fileName),
      await deps.blobs.outbox.getBlobClient(fixName).downloadToBuffer(),
    );
    let clock = 0;
    const inbox = new Inbox({
      dir: inboxDir,
      quietMs: 10,
      declaredLength,
      readHead,
      hasUnfilledBlock,
      now: () => clock,
    });
    assert.deepEqual(await inbox.poll(), []);
    clock += 20;
    const arrivals = await inbox.poll();
    assert.deepEqual(
      arrivals.map((a) => [a.kind, a.name]),
      [["complete", fileName]],
    );
    // Reports name the file; the cloud strips the prefix to find the bundle.
    assert.equal(withoutOutboxPrefix(fileName), fixBundle);
  });
});
