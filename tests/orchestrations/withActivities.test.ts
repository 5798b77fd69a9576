// The deploymentSet orchestration replayed through durable-functions with the real activities
// behind it: Azurite for Tables and Blobs, Debian's docker-registry as ACR, the engine's real
// indexer, planner and bundle builder, the real email SDK against the HTTPS stand-in. Devices
// report the way the report trigger does: record the report in Tables, then raise the event
// on the item's `waiter`. IoT Hub is an in-process recorder at the adapter boundary here (the
// real client against the IoT Hub stand-in is tests/activities/pushManifest.test.ts).
import assert from "node:assert/strict";
import { generateKeyPairSync } from "node:crypto";
import { after, before, describe, test } from "node:test";
import { buildBundle } from "../../activities/buildBundle.js";
import type { ActivityDeps } from "../../activities/deps.js";
import { acrRegistry } from "../../activities/imageRegistry.js";
import { markInTransit } from "../../activities/markInTransit.js";
import { placeBundles } from "../../activities/placeBundles.js";
import { planBundles } from "../../activities/planBundles.js";
import { pushManifest } from "../../activities/pushManifest.js";
import { readDeviceInventory } from "../../activities/readDeviceInventory.js";
import { recordSet } from "../../activities/recordSet.js";
import { resolveImages } from "../../activities/resolveImages.js";
import { sendEmail } from "../../activities/sendEmail.js";
import { updateSetState } from "../../activities/updateSetState.js";
import { createEmailSender } from "../../adapters/email.js";
import { loadSigningKey } from "../../delta/bundle/sign.js";
import { pushImage } from "../../delta/image/registry.js";
import type { DeploymentSetInput, DeploymentSetOutput } from "../../orchestrations/contract.js";
import type { SetStatus } from "../../orchestrations/decisions.js";
import { deploymentSetOrchestrator } from "../../orchestrations/deploymentSet.js";
import { deviceBatchOrchestrator } from "../../orchestrations/deviceBatch.js";
import { BlobStore } from "../../state/blobs.js";
import { StateStore } from "../../state/store.js";
import { buildTar, imageOf, patched, realFiles } from "../bundle/fixtures.js";
import { type Azurite, startAzurite } from "../support/azurite.js";
import { type RaisedEvent, replay } from "../support/durableReplay.js";
import {
  emailResponder,
  type HttpsStandin,
  makeTestCertificates,
  startHttpsStandin,
  type TestCertificates,
} from "../support/https-standin.js";
import { startRegistry, type TestRegistry } from "../support/registry.js";
import { reportInTransit } from "../support/reports.js";

const ACCESS_KEY = Buffer.from("deltaship-e2e-key").toString("base64");
const T0 = new Date("2026-11-28T09:00:00.000Z");
const DEVICES = ["old-1", "old-2", "new-1"];

let azurite: Azurite;
let registry: TestRegistry;
let tls: TestCertificates;
let emailService: HttpsStandin;
let deps: ActivityDeps;
let v1: string;
let v2: string;
const pushed: { device: string; modulesContent: Record<string, unknown> }[] = [];

before(async () => {
  // One after the other: the registry probes for a free port and binds it later.
  azurite = await startAzurite();
  registry = await startRegistry();
  tls = makeTestCertificates();
  emailService = await startHttpsStandin(tls, emailResponder({ accessKey: ACCESS_KEY }));
  const files = realFiles("/usr/bin", "usr/bin", { limit: 10, maxFile: 300_000, maxBytes: 1_200_000 });
  const base = await buildTar(files.slice(0, 6));
  const appV1 = await buildTar(files.slice(6));
  const appV2 = await buildTar(
    files.slice(6).map((f, i) => ({ ...f, content: patched(f.content as Uint8Array, i) })),
  );
  v1 = (
    await pushImage(`${registry.host}/apps/telemetry:1.0`, imageOf("apps/telemetry", "1.0", [base, appV1]))
  ).manifestDigest;
  v2 = (
    await pushImage(`${registry.host}/apps/telemetry:2.0`, imageOf("apps/telemetry", "2.0", [base, appV2]))
  ).manifestDigest;
  const state = StateStore.fromConnectionString(azurite.connectionString);
  const blobs = BlobStore.fromConnectionString(azurite.connectionString);
  await state.createTables();
  await blobs.createContainers();
  deps = {
    state,
    blobs,
    registry: acrRegistry({ acrUrl: registry.url, acrUsername: "", acrPassword: "" }),
    iotHub: {
      pushManifest: async (device, modulesContent) => {
        pushed.push({ device, modulesContent });
      },
    },
    email: createEmailSender(
      {
        communicationEndpoint: emailService.origin,
        communicationAccessKey: ACCESS_KEY,
        emailSenderAddress: "DoNotReply@deltaship.example",
      },
      {
        clientOptions: { tlsOptions: { ca: tls.caPem }, retryOptions: { maxRetries: 0 } },
        pollIntervalMs: 10,
      },
    ),
    signingKey: loadSigningKey(
      generateKeyPairSync("ed25519").privateKey.export({ type: "pkcs8", format: "pem" }).toString(),
    ),
  };
  // The old devices run v1, which the pipeline indexed when it was built.
  await resolveImages({ manifest: manifestFor(`${registry.host}/apps/telemetry:1.0`) }, deps);
  for (const device of ["old-1", "old-2"]) {
    await state.deviceImages.apply(device, v1, { kind: "present", at: T0.toISOString() });
  }
});
after(async () => {
  await Promise.all([azurite?.stop(), registry?.stop(), emailService?.close()]);
  tls?.dispose();
});

function manifestFor(ref: string) {
  return {
    modulesContent: {
      $edgeAgent: { "properties.desired": { modules: { telemetry: { settings: { image: ref } } } } },
      $edgeHub: { "properties.desired": { routes: {} } },
    },
  };
}

const handlers: Record<string, (input: never, deps: ActivityDeps) => Promise<unknown>> = {
  resolveImages,
  readDeviceInventory,
  planBundles,
  buildBundle: (input, d) => buildBundle(input, d),
  placeBundles,
  markInTransit: (input, d) => markInTransit(input, d),
  recordSet,
  updateSetState,
  pushManifest,
  sendEmail,
};

/** Devices report every item in transit, the way the report trigger handles a report. */
function devicesReport(setId: string, failOn: string | undefined) {
  return (now: Date): Promise<RaisedEvent[]> =>
    reportInTransit(deps.state, setId, now, (item) =>
      item.device !== failOn
        ? { ok: true, bytes: 4096 }
        : { ok: false, reason: "layer sha256:ab12 is not in the local registry" },
    );
}

function run(setId: string, failOn?: string) {
  const input: DeploymentSetInput = {
    setId,
    requestedBy: { name: "Ada", email: "ada@example.com" },
    requestedAt: T0.toISOString(),
    manifest: manifestFor(`${registry.host}/apps/telemetry:2.0`),
    manifestRef: "inline",
    devices: DEVICES,
    deadline: new Date(T0.getTime() + 14 * 86_400_000).toISOString(),
    deviceBatchSize: 2,
    localRegistry: "localhost:5000",
  };
  return replay({
    orchestrators: { deploymentSet: deploymentSetOrchestrator, deviceBatch: deviceBatchOrchestrator },
    name: "deploymentSet",
    instanceId: setId,
    input,
    start: T0,
    activity: (name, activityInput) => handlers[name]!(activityInput as never, deps),
    onIdle: devicesReport(setId, failOn),
  });
}

describe("deploymentSet with the real activities", () => {
  test("builds two bundles, places them, waits for the reports and pushes the rewritten manifest", async () => {
    emailService.requests.length = 0;
    const result = await run("set-ok");
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
    const result = await run("set-again");
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
    const result = await replay({
      orchestrators: { deploymentSet: deploymentSetOrchestrator, deviceBatch: deviceBatchOrchestrator },
      name: "deploymentSet",
      instanceId: "set-fail",
      input: {
        setId: "set-fail",
        requestedBy: { name: "Ada", email: "ada@example.com" },
        requestedAt: T0.toISOString(),
        manifest: manifestFor(`${registry.host}/apps/telemetry:3.0`),
        manifestRef: "inline",
        devices: DEVICES,
        deadline: new Date(T0.getTime() + 14 * 86_400_000).toISOString(),
        deviceBatchSize: 2,
        localRegistry: "localhost:5000",
      } satisfies DeploymentSetInput,
      start: T0,
      activity: (name, activityInput) => handlers[name]!(activityInput as never, deps),
      onIdle: devicesReport("set-fail", "old-2"),
    });
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
