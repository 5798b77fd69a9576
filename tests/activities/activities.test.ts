// The activities against real parts: Azurite (Tables and Blobs), Debian's docker-registry as
// ACR, the engine's real indexer, planner and bundle builder, and the real email SDK talking to
// a local HTTPS stand-in for Communication Services.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { buildBundle } from "../../activities/buildBundle.js";
import type { ActivityDeps } from "../../activities/deps.js";
import { markInTransit } from "../../activities/markInTransit.js";
import type { DeploymentManifest, GroupPlan, ResolvedImage } from "../../activities/names.js";
import { placeBundles } from "../../activities/placeBundles.js";
import { planBundles } from "../../activities/planBundles.js";
import { readDeviceInventory } from "../../activities/readDeviceInventory.js";
import { recordSet } from "../../activities/recordSet.js";
import { resolveImages } from "../../activities/resolveImages.js";
import { sendEmail } from "../../activities/sendEmail.js";
import { updateSetState } from "../../activities/updateSetState.js";
import { outboxBlobName } from "../../state/blobs.js";
import { type ActivityWorld, startActivityWorld } from "../support/activity-world.js";
import type { HttpsStandin } from "../support/https-standin.js";
import type { TestRegistry } from "../support/registry.js";

const ACCESS_KEY = Buffer.from("deltaship-activities-key").toString("base64");
const AT = new Date("2026-11-28T09:00:00.000Z");

let world: ActivityWorld;
let registry: TestRegistry;
let emailService: HttpsStandin;
let deps: ActivityDeps;
let v1: string;
let v2: string;

function manifestFor(ref: string): DeploymentManifest {
  return {
    modulesContent: {
      $edgeAgent: {
        "properties.desired": { modules: { telemetry: { settings: { image: ref, createOptions: "{}" } } } },
      },
      $edgeHub: { "properties.desired": { routes: {} } },
    },
  };
}

before(async () => {
  world = await startActivityWorld({
    accessKey: ACCESS_KEY,
    images: { limit: 12, maxBytes: 1_500_000, baseFiles: 8 },
    iotHub: {
      pushManifest: async () => {
        throw new Error("not used here");
      },
    },
  });
  ({ registry, emailService, deps, v1, v2 } = world);
});
after(() => world?.stop());

describe("activities against Azurite and a real registry", () => {
  let images: ResolvedImage[];
  let groups: GroupPlan[];

  test("resolveImages resolves tags to digests and indexes each image once", async () => {
    const old = await resolveImages({ manifest: manifestFor(`${registry.host}/apps/telemetry:1.0`) }, deps);
    assert.equal(old.images[0]!.digest, v1);
    const resolved = await resolveImages(
      { manifest: manifestFor(`${registry.host}/apps/telemetry:2.0`) },
      deps,
    );
    images = resolved.images;
    assert.equal(images.length, 1);
    assert.deepEqual(
      {
        module: images[0]!.module,
        repository: images[0]!.repository,
        tag: images[0]!.tag,
        digest: images[0]!.digest,
      },
      { module: "telemetry", repository: "apps/telemetry", tag: "2.0", digest: v2 },
    );
    assert.ok(images[0]!.fullBytes > 100_000, `full size ${images[0]!.fullBytes}`);
    assert.equal(await deps.blobs.hasIndex(v1), true);
    assert.equal(await deps.blobs.hasIndex(v2), true);
  });

  test("resolveImages names the module whose image is a template variable", async () => {
    await assert.rejects(
      // biome-ignore lint/suspicious/noTemplateCurlyInString: an unsubstituted deployment template variable
      resolveImages({ manifest: manifestFor("${MODULES.telemetry}") }, deps),
      /expected module telemetry to have settings.image with a concrete reference, found "\$\{MODULES.telemetry\}"/,
    );
  });

  test("readDeviceInventory groups devices that hold the same images", async () => {
    for (const device of ["old-1", "old-2"]) {
      await deps.state.deviceImages.apply(device, v1, { kind: "present", at: AT.toISOString() });
    }
    const inventory = await readDeviceInventory({ devices: ["old-1", "new-1", "old-2", "old-1"] }, deps);
    assert.deepEqual(inventory.groups, [
      { present: [v1], devices: ["old-1", "old-2"] },
      { present: [], devices: ["new-1"] },
    ]);
    const plan = await planBundles(
      { targets: [{ digest: v2, fullBytes: images[0]!.fullBytes }], groups: inventory.groups },
      deps,
    );
    groups = plan.groups;
  });

  test("planBundles picks the held image as source and estimates far less than a full pull", () => {
    const [fromOld, fromNothing] = groups.map((group) => group.needs[0]!.bundle);
    assert.deepEqual(fromOld!.sourceDigests, [v1]);
    assert.ok(fromOld!.sourceLayers.length >= 1);
    assert.ok(
      fromOld!.estimatedBytes < fromOld!.fullBytes / 2,
      `estimate ${fromOld!.estimatedBytes} of ${fromOld!.fullBytes}`,
    );
    assert.deepEqual(fromNothing!.sourceDigests, []);
    // The shared base layer is referenced as present, never sent, and is part of the bundle's identity.
    assert.equal(fromOld!.presentLayers.length, 1);
    assert.deepEqual(fromNothing!.presentLayers, []);
    assert.notEqual(fromOld!.bundleId, fromNothing!.bundleId);
    assert.match(fromOld!.bundleId, new RegExp(`^sha256-${v2.slice(7)}/[0-9a-f]{64}\\.bundle$`));
  });

  test("buildBundle builds a content-addressed bundle once and skips it afterwards", async () => {
    const bundle = groups[0]!.needs[0]!.bundle;
    const first = await buildBundle({ bundle }, deps, () => AT);
    assert.equal(first.built, true);
    assert.ok(first.size > 0 && first.size < bundle.fullBytes, `bundle of ${first.size} bytes`);
    const second = await buildBundle({ bundle }, deps, () => AT);
    assert.deepEqual(second, { bundleId: bundle.bundleId, size: first.size, built: false });
    const row = await deps.state.bundles.get(v2, bundle.bundleId.split("/")[1]!.replace(".bundle", ""));
    assert.equal(row?.size, first.size);
    console.log(`bundle ${bundle.bundleId}: ${first.size} bytes for an image of ${bundle.fullBytes} bytes`);
  });

  test("placeBundles copies the bundle into each device's outbox, once", async () => {
    const bundleId = groups[0]!.needs[0]!.bundle.bundleId;
    const placements = ["old-1", "old-2"].map((device) => ({ device, bundleId }));
    assert.deepEqual(await placeBundles({ setId: "set-a", placements }, deps), { placed: 2 });
    await placeBundles({ setId: "set-a", placements }, deps);
    const names: string[] = [];
    for await (const blob of deps.blobs.outbox.listBlobsFlat()) names.push(blob.name);
    assert.deepEqual(
      names.sort(),
      [outboxBlobName("old-1", bundleId), outboxBlobName("old-2", bundleId)].sort(),
    );
    const size = await deps.blobs.bundleSize(bundleId);
    const copy = await deps.blobs.outbox.getBlobClient(outboxBlobName("old-1", bundleId)).getProperties();
    assert.equal(copy.contentLength, size);
  });

  test("recordSet, markInTransit and updateSetState keep the set's items true to the reports", async () => {
    await recordSet(
      {
        setId: "set-a",
        requestedBy: { name: "Ada", email: "ada@example.com" },
        requestedAt: AT.toISOString(),
        manifestRef: "inline",
        deadline: "2026-12-12T09:00:00.000Z",
        images,
        groups,
        waiters: [
          { device: "old-1", waiter: "set-a:batch:0" },
          { device: "old-2", waiter: "set-a:batch:0" },
          { device: "new-1", waiter: "set-a:batch:1" },
        ],
        bytesPlanned: 1,
        fullBytes: 2,
      },
      deps,
    );
    // A report for old-2 lands before the orchestration marks it in transit.
    const { item } = await deps.state.recordImageReport({
      device: "old-2",
      digest: v2,
      setId: "set-a",
      ok: true,
      bytes: 9,
      at: AT.toISOString(),
    });
    assert.equal(item?.waiter, "set-a:batch:0");
    const items = ["old-1", "old-2"].map((device) => ({
      device,
      digest: v2,
      bundleId: groups[0]!.needs[0]!.bundle.bundleId,
    }));
    const marked = await markInTransit({ setId: "set-a", items }, deps, () => AT);
    assert.deepEqual(marked, { alreadyPresent: [{ device: "old-2", digest: v2 }] });
    assert.equal((await deps.state.deviceImages.get("old-1", v2))?.state, "inTransit");
    assert.equal((await deps.state.deviceImages.get("old-2", v2))?.state, "present");

    await updateSetState(
      {
        setId: "set-a",
        state: "failed",
        at: "2026-12-12T09:00:00.000Z",
        timedOut: [{ device: "old-1", digest: v2 }],
      },
      deps,
    );
    const page = await deps.state.sets.listItems("set-a");
    assert.deepEqual(page.items.map((row) => [row.device, row.state]).sort(), [
      ["new-1", "planned"],
      ["old-1", "timedOut"],
      ["old-2", "arrived"],
    ]);
    const set = await deps.state.sets.getSet("set-a");
    assert.equal(set?.state, "failed");
    assert.equal(set?.deviceCount, 3);
  });

  test("sendEmail sends the failure email through the real SDK, naming device, image and reason", async () => {
    emailService.requests.length = 0;
    const result = await sendEmail(
      {
        setId: "set-a",
        requestedBy: { name: "Ada", email: "ada@example.com" },
        outcome: "failed",
        deviceCount: 3,
        images,
        bytesPlanned: 1,
        fullBytes: 2,
        failures: [
          { device: "old-1", digest: v2, reason: "no report before the deadline 2026-12-12T09:00:00.000Z" },
        ],
        failureCount: 1,
      },
      deps,
    );
    assert.deepEqual(result, { sent: true });
    const send = emailService.requests.find((r) => r.method === "POST")!;
    const body = send.json as {
      recipients: { to: { address: string }[] };
      content: { subject: string; plainText: string };
    };
    assert.deepEqual(
      body.recipients.to.map((to) => to.address),
      ["ada@example.com"],
    );
    assert.equal(body.content.subject, "Deployment set set-a failed: 1 image(s) on 1 device(s)");
    assert.ok(
      body.content.plainText.includes(
        `- old-1: telemetry (${registry.host}/apps/telemetry:2.0): no report before the deadline 2026-12-12T09:00:00.000Z`,
      ),
      body.content.plainText,
    );
  });
});
