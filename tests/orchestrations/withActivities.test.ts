// The deploymentSet orchestration replayed through durable-functions with the real activities
// behind it: Azurite for Tables and Blobs, Debian's docker-registry as ACR, the engine's real
// indexer, planner and bundle builder, the real email SDK against the HTTPS stand-in. Devices
// report the way the report trigger does: record the report in Tables, then raise the event
// on the item's `waiter`. IoT Hub is an in-process recorder at the adapter boundary here (the
// real client against the IoT Hub stand-in is tests/activities/pushManifest.test.ts).
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import type { ActivityDeps } from "../../activities/deps.js";
import { resolveImages } from "../../activities/resolveImages.js";
import { pushImage } from "../../delta/image/registry.js";
import type { DeploymentSetOutput } from "../../orchestrations/contract.js";
import type { SetStatus } from "../../orchestrations/decisions.js";
import { buildTar, imageOf, realFiles } from "../bundle/fixtures.js";
import { type ActivityWorld, startActivityWorld } from "../support/activity-world.js";
import { moduleManifest, replayDeploymentSet } from "../support/deployment-set.js";
import type { RaisedEvent } from "../support/durableReplay.js";
import type { HttpsStandin } from "../support/https-standin.js";
import type { TestRegistry } from "../support/registry.js";
import { reportInTransit } from "../support/reports.js";

const ACCESS_KEY = Buffer.from("deltaship-e2e-key").toString("base64");
const T0 = new Date("2026-11-28T09:00:00.000Z");
const DEVICES = ["old-1", "old-2", "new-1"];

let world: ActivityWorld;
let registry: TestRegistry;
let emailService: HttpsStandin;
let deps: ActivityDeps;
let v2: string;
const pushed: { device: string; modulesContent: Record<string, unknown> }[] = [];

before(async () => {
  world = await startActivityWorld({
    accessKey: ACCESS_KEY,
    images: { limit: 10, maxBytes: 1_200_000, baseFiles: 6 },
    iotHub: {
      pushManifest: async (device, modulesContent) => {
        pushed.push({ device, modulesContent });
      },
    },
  });
  ({ registry, emailService, deps, v2 } = world);
  // The old devices run v1, which the pipeline indexed when it was built.
  await resolveImages({ manifest: moduleManifest("telemetry", `${registry.host}/apps/telemetry:1.0`) }, deps);
  for (const device of ["old-1", "old-2"]) {
    await deps.state.deviceImages.apply(device, world.v1, { kind: "present", at: T0.toISOString() });
  }
});
after(() => world?.stop());

/** Devices report every item in transit, the way the report trigger handles a report. */
function devicesReport(setId: string, failOn: string | undefined) {
  return (now: Date): Promise<RaisedEvent[]> =>
    reportInTransit(deps.state, setId, now, (item) =>
      item.device !== failOn
        ? { ok: true, bytes: 4096 }
        : { ok: false, reason: "layer sha256:ab12 is not in the local registry" },
    );
}

function run(setId: string, version: string, failOn?: string) {
  return replayDeploymentSet(
    deps,
    {
      setId,
      manifest: moduleManifest("telemetry", `${registry.host}/apps/telemetry:${version}`),
      devices: DEVICES,
      requestedAt: T0,
      deviceBatchSize: 2,
    },
    devicesReport(setId, failOn),
  );
}

describe("deploymentSet with the real activities", () => {
  test("builds two bundles, places them, waits for the reports and pushes the rewritten manifest", async () => {
    emailService.requests.length = 0;
    const result = await run("set-ok", "2.0");
    assert.equal(result.root.state, "completed", result.root.error);
    assert.deepEqual(result.root.output as DeploymentSetOutput, {
      state: "succeeded",
      failures: [],
      failureCount: 0,
    });
    assert.deepEqual(result.rejectedEvents, []);

    const built = result.activityCalls.filter((call) => call.name === "buildBundle");
    assert.equal(built.length, 2, "one bundle from v1, one from nothing");
    const outbox: string[] = [];
    for await (const blob of deps.blobs.outbox.listBlobsFlat()) outbox.push(blob.name.split("/")[0]!);
    assert.deepEqual(outbox.sort(), ["new-1", "old-1", "old-2"]);

    const items = (await deps.state.sets.listItems("set-ok")).items;
    assert.deepEqual(items.map((item) => [item.device, item.state, item.waiter]).sort(), [
      ["new-1", "arrived", "set-ok:batch:1"],
      ["old-1", "arrived", "set-ok:batch:0"],
      ["old-2", "arrived", "set-ok:batch:0"],
    ]);
    assert.equal((await deps.state.sets.getSet("set-ok"))?.state, "succeeded");
    for (const device of DEVICES)
      assert.equal((await deps.state.deviceImages.get(device, v2))?.state, "present");

    assert.deepEqual(pushed.map((p) => p.device).sort(), [...DEVICES].sort());
    const agent = pushed[0]!.modulesContent.$edgeAgent as Record<
      string,
      { modules: Record<string, { settings: { image: string } }> }
    >;
    assert.equal(
      agent["properties.desired"]!.modules.telemetry!.settings.image,
      "localhost:5000/apps/telemetry:2.0",
    );

    const send = emailService.requests.find((r) => r.method === "POST")!;
    assert.equal(
      (send.json as { content: { subject: string } }).content.subject,
      "Deployment set set-ok succeeded on 3 devices",
    );
    const status = result.root.customStatus as SetStatus;
    assert.equal(status.stage, "succeeded");
    assert.equal(status.items.arrived, 3);
    assert.ok(
      status.bytesPlanned < status.fullBytes,
      `${status.bytesPlanned} of ${status.fullBytes} bytes planned`,
    );
  });

  test("a second set for the same image finds it present everywhere and goes straight to the manifest", async () => {
    pushed.length = 0;
    const result = await run("set-again", "2.0");
    assert.deepEqual(result.root.output as DeploymentSetOutput, {
      state: "succeeded",
      failures: [],
      failureCount: 0,
    });
    assert.equal(result.activityCalls.filter((call) => call.name === "buildBundle").length, 0);
    assert.equal(result.instances.size, 1);
    assert.equal(pushed.length, 3);
    const items = (await deps.state.sets.listItems("set-again")).items;
    assert.deepEqual(new Set(items.map((item) => item.state)), new Set(["present"]));
  });

  test("a device that reports a failure fails the set: no manifest, the email names device and reason", async () => {
    // A new image so that every device needs a bundle again.
    const files = realFiles("/usr/bin", "usr/bin", { limit: 4, maxFile: 200_000, skip: 20 });
    const v3 = (
      await pushImage(
        `${registry.host}/apps/telemetry:3.0`,
        imageOf("apps/telemetry", "3.0", [await buildTar(files)]),
      )
    ).manifestDigest;
    pushed.length = 0;
    emailService.requests.length = 0;
    const result = await run("set-fail", "3.0", "old-2");
    const reason = "layer sha256:ab12 is not in the local registry";
    assert.deepEqual(result.root.output as DeploymentSetOutput, {
      state: "failed",
      failures: [{ device: "old-2", digest: v3, reason }],
      failureCount: 1,
    });
    assert.equal(pushed.length, 0);
    assert.equal((await deps.state.sets.getSet("set-fail"))?.state, "failed");
    assert.equal((await deps.state.sets.getItem("set-fail", "old-2", v3))?.state, "failed");
    assert.equal((await deps.state.deviceImages.get("old-2", v3))?.state, "failed");
    const send = emailService.requests.find((r) => r.method === "POST")!;
    const content = (send.json as { content: { subject: string; plainText: string } }).content;
    assert.equal(content.subject, "Deployment set set-fail failed: 1 image(s) on 1 device(s)");
    assert.ok(
      content.plainText.includes(`- old-2: telemetry (${registry.host}/apps/telemetry:3.0): ${reason}`),
    );
  });
});
