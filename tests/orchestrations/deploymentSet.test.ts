import assert from "node:assert/strict";
import { describe, test } from "node:test";
import type { SendEmailInput, UpdateSetStateInput } from "../../activities/names.js";
import type { DeploymentSetOutput } from "../../orchestrations/contract.js";
import { MAX_STATUS_BYTES, type SetStatus } from "../../orchestrations/decisions.js";
import { deploymentSetOrchestrator } from "../../orchestrations/deploymentSet.js";
import { deviceBatchOrchestrator } from "../../orchestrations/deviceBatch.js";
import { type RaisedEvent, type ReplayResult, replay } from "../support/durableReplay.js";
import { activities, DAY, digest, HOUR, IMAGES, report, setInput, T0, type World } from "./scenario.js";

const [TELEMETRY, CAMERA] = IMAGES as [(typeof IMAGES)[0], (typeof IMAGES)[0]];
const OLD = digest("0");

function run(devices: string[], world: World, events: RaisedEvent[] = [], overrides = {}) {
  return replay({
    orchestrators: { deploymentSet: deploymentSetOrchestrator, deviceBatch: deviceBatchOrchestrator },
    name: "deploymentSet",
    instanceId: "set-1",
    input: setInput(devices, overrides),
    start: T0,
    activity: activities(world),
    events,
  });
}

function calls(result: ReplayResult, name: string) {
  return result.activityCalls.filter((call) => call.name === name);
}

function output(result: ReplayResult): DeploymentSetOutput {
  assert.equal(result.root.state, "completed", `orchestration failed: ${result.root.error}`);
  return result.root.output as DeploymentSetOutput;
}

/** Every item of devices d1..d4 (batch size 2) reported ok, an hour apart. */
function allArrive(devices: string[], from = T0.getTime() + HOUR): RaisedEvent[] {
  return devices.flatMap((device, i) =>
    [TELEMETRY, CAMERA].map((image, j) =>
      report("set-1", Math.floor(i / 2), device, image, from + (i * 2 + j) * HOUR),
    ),
  );
}

const FOUR = ["d1", "d2", "d3", "d4"];
const MIXED: World = {
  inventory: [
    { present: [OLD], devices: ["d1", "d2", "d3"] },
    { present: [], devices: ["d4"] },
  ],
};

describe("deploymentSet replayed through durable-functions", () => {
  test("fans out to one waiting batch per two devices and succeeds when every image arrived", async () => {
    const result = await run(FOUR, MIXED, allArrive(FOUR));
    assert.deepEqual(output(result), { state: "succeeded", failures: [], failureCount: 0 });
    assert.deepEqual([...result.instances.keys()], ["set-1", "set-1:batch:0", "set-1:batch:1"]);
    assert.deepEqual(
      calls(result, "placeBundles").map((call) => [
        call.instanceId,
        (call.input as { placements: unknown[] }).placements.length,
      ]),
      [
        ["set-1:batch:0", 4],
        ["set-1:batch:1", 4],
      ],
    );
    const pushes = calls(result, "pushManifest").map((call) => (call.input as { devices: string[] }).devices);
    assert.deepEqual(pushes, [
      ["d1", "d2"],
      ["d3", "d4"],
    ]);
    assert.deepEqual(
      calls(result, "updateSetState").map((call) => (call.input as UpdateSetStateInput).state),
      ["succeeded"],
    );
    const email = calls(result, "sendEmail")[0]!.input as SendEmailInput;
    assert.equal(email.outcome, "succeeded");
    assert.deepEqual(email.failures, []);
    // Every wait ended by its event, so every timer was cancelled; nothing was raised into the void.
    assert.deepEqual(result.timers.get("set-1:batch:0"), { created: 4, cancelled: 4 });
    assert.deepEqual(result.rejectedEvents, []);
    const status = result.root.customStatus as SetStatus;
    assert.equal(status.stage, "succeeded");
    assert.deepEqual(status.items, {
      planned: 0,
      building: 0,
      inTransit: 0,
      arrived: 8,
      failed: 0,
      present: 0,
    });
    assert.deepEqual(status.bundles, { distinct: 4, built: 4 });
    assert.equal(status.bytesPlanned, 3 * (5_000 + 15_000) + 100_000 + 300_000);
    assert.equal(status.fullBytes, 4 * 400_000);
  });

  test("builds each distinct bundle once however many devices need it", async () => {
    const result = await run(FOUR, MIXED, allArrive(FOUR));
    const built = calls(result, "buildBundle").map(
      (call) => (call.input as { bundle: { bundleId: string } }).bundle.bundleId,
    );
    assert.deepEqual(built, [
      "aaaaaaaa-from-00",
      "bbbbbbbb-from-00",
      "aaaaaaaa-from-nothing",
      "bbbbbbbb-from-nothing",
    ]);
  });

  test("retries a bundle build that fails once, then goes on", async () => {
    const world = { ...MIXED, buildFailures: new Map([["aaaaaaaa-from-00", 1]]) };
    const result = await run(FOUR, world, allArrive(FOUR));
    assert.equal(output(result).state, "succeeded");
    const attempts = calls(result, "buildBundle")
      .filter(
        (call) => (call.input as { bundle: { bundleId: string } }).bundle.bundleId === "aaaaaaaa-from-00",
      )
      .map((call) => call.attempt);
    assert.deepEqual(attempts, [1, 2]);
  });

  test("fails the set, names the bundle and places nothing when a build keeps failing", async () => {
    const world = { ...MIXED, buildFailures: new Map([["bbbbbbbb-from-nothing", 99]]) };
    const result = await run(FOUR, world, []);
    assert.deepEqual(output(result), {
      state: "failed",
      failures: [],
      failureCount: 0,
      reason: "could not build bundle(s) bbbbbbbb-from-nothing",
    });
    assert.equal(result.instances.size, 1);
    assert.equal(calls(result, "pushManifest").length, 0);
    assert.equal(
      (calls(result, "sendEmail")[0]!.input as SendEmailInput).reason,
      "could not build bundle(s) bbbbbbbb-from-nothing",
    );
  });

  test("one failed image fails the set: no manifest, and the email names the device, image and reason", async () => {
    const events = allArrive(FOUR);
    const failing = events.findIndex((e) => e.name === `image:d3:${CAMERA.digest}`);
    events[failing] = { ...events[failing]!, payload: { ok: false, reason: "layer sha256:ab12 missing" } };
    const result = await run(FOUR, MIXED, events);
    const failure = { device: "d3", digest: CAMERA.digest, reason: "layer sha256:ab12 missing" };
    assert.deepEqual(output(result), { state: "failed", failures: [failure], failureCount: 1 });
    assert.equal(calls(result, "pushManifest").length, 0);
    const email = calls(result, "sendEmail")[0]!.input as SendEmailInput;
    assert.equal(email.outcome, "failed");
    assert.deepEqual(email.failures, [failure]);
    assert.deepEqual(
      calls(result, "updateSetState").map((call) => (call.input as UpdateSetStateInput).state),
      ["failed"],
    );
  });

  test("a deadline without reports fails the set and lists every item that never reported", async () => {
    const events = allArrive(FOUR).filter((e) => !e.name.startsWith("image:d2:"));
    const result = await run(FOUR, MIXED, events);
    const deadline = new Date(T0.getTime() + 14 * DAY).toISOString();
    const missing = [TELEMETRY, CAMERA].map((image) => ({
      device: "d2",
      digest: image.digest,
      reason: `no report before the deadline ${deadline}`,
    }));
    assert.deepEqual(output(result), { state: "failed", failures: missing, failureCount: 2 });
    assert.equal(calls(result, "pushManifest").length, 0);
    // The batch marks its own timed-out items; the set's history carries only the final state.
    const updates = calls(result, "updateSetState").map((call) => [call.instanceId, call.input]);
    assert.deepEqual(updates, [
      [
        "set-1:batch:0",
        {
          setId: "set-1",
          at: deadline,
          timedOut: [
            { device: "d2", digest: TELEMETRY.digest },
            { device: "d2", digest: CAMERA.digest },
          ],
        },
      ],
      ["set-1", { setId: "set-1", state: "failed", at: deadline }],
    ]);
    assert.deepEqual(result.timers.get("set-1:batch:0"), { created: 4, cancelled: 2 });
  });

  test("duplicate and contradicting duplicate events change nothing", async () => {
    const events = allArrive(FOUR);
    const late = T0.getTime() + 20 * HOUR;
    events.push(
      report("set-1", 0, "d1", TELEMETRY, late),
      report("set-1", 0, "d1", TELEMETRY, late + 1, { ok: false, reason: "replayed by the transfer tool" }),
    );
    const result = await run(FOUR, MIXED, events);
    assert.deepEqual(output(result), { state: "succeeded", failures: [], failureCount: 0 });
    assert.equal(calls(result, "pushManifest").length, 2);
  });

  test("events that arrive before their wait, in any order, are all consumed", async () => {
    // Reverse arrival order: every item but the first waited-for one arrives before its wait begins.
    const events = allArrive(FOUR)
      .reverse()
      .map((event, i) => ({ ...event, at: new Date(T0.getTime() + HOUR + i) }));
    const result = await run(FOUR, MIXED, events);
    assert.deepEqual(output(result), { state: "succeeded", failures: [], failureCount: 0 });
    assert.deepEqual(result.droppedEvents, []);
  });

  test("the first event of an item decides, even when it came before the wait; later ones change nothing", async () => {
    const events = allArrive(FOUR);
    events.unshift(report("set-1", 0, "d2", CAMERA, T0.getTime() + 1, { ok: true, bytes: 7 }));
    const result = await run(FOUR, MIXED, events);
    assert.equal(output(result).state, "succeeded");
    const batch = result.instances.get("set-1:batch:0")!;
    assert.deepEqual(batch.output, { arrived: 4, bytes: 3007, failures: [], timedOut: [] });
  });

  test("items a report already marked present are not waited for", async () => {
    const world = { ...MIXED, presentAtMark: new Set([`d4 ${TELEMETRY.digest}`]) };
    const events = allArrive(FOUR).filter((e) => e.name !== `image:d4:${TELEMETRY.digest}`);
    const result = await run(FOUR, world, events);
    assert.equal(output(result).state, "succeeded");
    assert.equal(result.timers.get("set-1:batch:1")!.created, 3);
  });

  test("when every image is already present, goes straight to the manifest", async () => {
    const world: World = {
      inventory: [{ present: [TELEMETRY.digest, CAMERA.digest].sort(), devices: FOUR }],
    };
    const result = await run(FOUR, world, []);
    assert.deepEqual(output(result), { state: "succeeded", failures: [], failureCount: 0 });
    assert.equal(result.instances.size, 1);
    assert.equal(calls(result, "buildBundle").length, 0);
    assert.equal(calls(result, "placeBundles").length, 0);
    assert.equal(calls(result, "pushManifest").length, 2);
    assert.equal(result.endedAt.getTime(), T0.getTime());
    const status = result.root.customStatus as SetStatus;
    assert.equal(status.items.present, 8);
  });

  test("a 2,000-device set keeps every history to a few thousand events and the status under 16 KB", async () => {
    const devices = Array.from({ length: 2000 }, (_, i) => `vessel-${String(i).padStart(4, "0")}-edge`);
    const world: World = {
      inventory: [
        { present: [OLD], devices: devices.slice(0, 1500) },
        { present: [], devices: devices.slice(1500) },
      ],
    };
    const batchSize = 100;
    // Reports trickle in over four days, five devices' reports at a time: the host hands events
    // that arrived together to one episode, and fewer episodes keep this test quick.
    const events = devices.flatMap((device, i) =>
      [TELEMETRY, CAMERA].map((image) =>
        report(
          "set-1",
          Math.floor(i / batchSize),
          device,
          image,
          T0.getTime() + HOUR + Math.floor(i / 5) * 15 * 60_000,
        ),
      ),
    );
    const result = await run(devices, world, events, { deviceBatchSize: batchSize });
    assert.deepEqual(output(result), { state: "succeeded", failures: [], failureCount: 0 });
    const sizes = [...result.instances.values()].map((instance) => instance.history.length);
    const batchSizes = sizes.slice(1);
    console.log(
      `2,000 devices × 2 images, ${batchSizes.length} batches of ${batchSize}: ` +
        `deploymentSet history ${sizes[0]} events; deviceBatch histories ${Math.min(...batchSizes)}–${Math.max(...batchSizes)} events; ` +
        `largest custom status ${Math.max(...[...result.instances.values()].map((i) => i.maxCustomStatusBytes))} bytes; ` +
        `episodes ${[...result.instances.values()].reduce((n, i) => n + i.episodes, 0)}`,
    );
    assert.equal(batchSizes.length, 20);
    for (const size of sizes) assert.ok(size < 3000, `history of ${size} events, expected under 3,000`);
    for (const instance of result.instances.values()) {
      assert.ok(
        instance.maxCustomStatusBytes < MAX_STATUS_BYTES,
        `${instance.instanceId} status ${instance.maxCustomStatusBytes} bytes`,
      );
    }
    assert.equal(calls(result, "buildBundle").length, 4);
    assert.equal(
      calls(result, "pushManifest").reduce(
        (n, call) => n + (call.input as { devices: string[] }).devices.length,
        0,
      ),
      2000,
    );
  });
});

describe("deploymentSet failures outside the devices", () => {
  test("an image that cannot be resolved fails the set before anything is placed, and says why", async () => {
    const result = await run(FOUR, {
      ...MIXED,
      fails: (name) => (name === "resolveImages" ? "acr.io/apps/camera:5.1: manifest unknown" : undefined),
    });
    const out = output(result);
    assert.equal(out.state, "failed");
    assert.match(out.reason ?? "", /^could not plan the set: .*acr\.io\/apps\/camera:5\.1: manifest unknown/);
    assert.equal(calls(result, "resolveImages").length, 5);
    assert.deepEqual(
      result.activityCalls.filter((call) => call.name !== "resolveImages").map((call) => call.name),
      ["updateSetState", "sendEmail"],
    );
    assert.equal((calls(result, "sendEmail")[0]!.input as SendEmailInput).reason, out.reason);
  });

  test("a batch whose bundles cannot be placed fails the set; the other batch's reports still count", async () => {
    const result = await run(
      FOUR,
      {
        ...MIXED,
        fails: (name, input) =>
          name === "placeBundles" && JSON.stringify(input).includes('"d3"')
            ? "outbox container missing"
            : undefined,
      },
      allArrive(FOUR),
    );
    const out = output(result);
    assert.equal(out.state, "failed");
    assert.match(out.reason ?? "", /^waiting batch\(es\) failed: set-1:batch:1: .*outbox container missing/);
    assert.deepEqual(out.failures, []);
    assert.equal(result.instances.get("set-1:batch:0")!.state, "completed");
    assert.equal(result.instances.get("set-1:batch:1")!.state, "failed");
    assert.equal(calls(result, "pushManifest").length, 0);
  });
});
