// The IoT Hub report trigger's logic against real Azurite tables and the real DurableClient.
// The Durable extension's HTTP API is a local stand-in (tests/support/durable-host.ts): no
// Functions host runs in tests. Messages are shaped as the Event Hub trigger delivers them with
// cardinality many: bodies plus triggerMetadata.systemPropertiesArray / enqueuedTimeUtcArray.
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import {
  handleReports,
  messagesOf,
  type ReportDeps,
  type ReportMessage,
} from "../../functions/reports/handle.js";
import { StateStore } from "../../state/store.js";
import { type Azurite, startAzurite } from "../support/azurite.js";
import { type DurableHost, startDurableHost } from "../support/durable-host.js";
import { recordingContexts } from "../support/invocation.js";

const digest = (c: string) => `sha256:${c.repeat(64)}`;
const WEB = digest("a");
const API = digest("b");
const OLD = digest("c");
const SET = "set-7";
const WAITER = `${SET}:batch:0`;
const T0 = "2026-11-28T10:00:00.000Z";

let azurite: Azurite;
let host: DurableHost;
let state: StateStore;
const logs: string[] = [];

const context = recordingContexts("deviceReports", logs);

function message(device: string | undefined, body: unknown, enqueuedAt = T0): ReportMessage {
  return {
    body,
    systemProperties:
      device === undefined
        ? {}
        : { "iothub-connection-device-id": device, "iothub-connection-module-id": "deltaship" },
    enqueuedAt,
  };
}

function ready(d: string, extra: Record<string, unknown> = {}) {
  return {
    type: "imageReady",
    setId: SET,
    bundleId: `${d.replace(":", "-")}/src.bundle`,
    image: "apps/web:2.0",
    digest: d,
    bytes: 1234,
    durationMs: 900,
    ...extra,
  };
}

function deps(durable = host.client()): ReportDeps {
  return { state, durable };
}

before(async () => {
  [azurite, host] = await Promise.all([startAzurite(), startDurableHost()]);
  state = StateStore.fromConnectionString(azurite.connectionString);
  await state.createTables();
  const devices = ["vessel-01", "vessel-02", "vessel-03", "vessel-04", "vessel-06"];
  await state.sets.record({
    setId: SET,
    requestedBy: { name: "Ana Lima", email: "ana@fleet.example" },
    requestedAt: "2026-11-28T09:00:00.000Z",
    manifestRef: "inline",
    deadline: "2026-12-12T09:00:00.000Z",
    images: [{ module: "web", ref: "fleetacr.azurecr.io/apps/web:2.0", digest: WEB, fullBytes: 90_000 }],
    deviceCount: devices.length,
    bytesPlanned: 5000,
    fullBytes: 360_000,
    items: devices.map((device) => ({
      device,
      digest: WEB,
      state: "planned" as const,
      bundleId: `${WEB.replace(":", "-")}/src.bundle`,
      waiter: WAITER,
    })),
  });
  for (const device of devices) {
    await state.sets.applyToItem(SET, device, WEB, { kind: "inTransit", at: "2026-11-28T09:01:00.000Z" });
    await state.deviceImages.apply(device, WEB, {
      kind: "inTransit",
      setId: SET,
      bundleId: `${WEB.replace(":", "-")}/src.bundle`,
      at: "2026-11-28T09:01:00.000Z",
    });
  }
  host.instances.set(WAITER, {
    name: "deviceBatch",
    instanceId: WAITER,
    input: null,
    runtimeStatus: "Running",
    createdTime: "2026-11-28T09:00:00.000Z",
  });
});
after(async () => {
  await host?.close();
  await azurite?.stop();
});

describe("device reports", () => {
  it("records an imageReady in every table and raises image:<device>:<digest> on the waiting orchestration", async () => {
    const outcomes = await handleReports([message("vessel-01", ready(WEB))], context(), deps());
    assert.deepEqual(outcomes, [
      {
        kind: "raised",
        device: "vessel-01",
        digest: WEB,
        setId: SET,
        waiter: WAITER,
        event: { ok: true, bytes: 1234 },
      },
    ]);
    assert.deepEqual(host.events.at(-1), {
      instanceId: WAITER,
      name: `image:vessel-01:${WEB}`,
      data: { ok: true, bytes: 1234 },
    });
    const row = await state.deviceImages.get("vessel-01", WEB);
    assert.equal(row?.state, "present");
    assert.equal(row?.presentAt, T0);
    assert.deepEqual(
      (await state.deviceImages.listByImage(WEB)).items
        .filter((r) => r.state === "present")
        .map((r) => r.device),
      ["vessel-01"],
    );
    const item = await state.sets.getItem(SET, "vessel-01", WEB);
    assert.deepEqual([item?.state, item?.bytes], ["arrived", 1234]);
    const transfers = (await state.transfers.list("2026-11-28T00:00:00Z", "2026-11-29T00:00:00Z")).items;
    assert.deepEqual(
      transfers.map((t) => [t.at, t.device, t.digest, t.setId, t.outcome, t.bytes, t.durationMs]),
      [[T0, "vessel-01", WEB, SET, "arrived", 1234, 900]],
    );
  });

  it("changes nothing on a duplicate delivery and raises the same event again", async () => {
    const before = host.events.length;
    const outcomes = await handleReports([message("vessel-01", ready(WEB))], context(), deps());
    assert.equal(outcomes[0].kind, "raised");
    assert.deepEqual(host.events.slice(before), [
      { instanceId: WAITER, name: `image:vessel-01:${WEB}`, data: { ok: true, bytes: 1234 } },
    ]);
    const transfers = (await state.transfers.list("2026-11-28T00:00:00Z", "2026-11-29T00:00:00Z")).items;
    assert.equal(transfers.length, 1);
    assert.equal((await state.sets.getItem(SET, "vessel-01", WEB))?.state, "arrived");
  });

  it("keeps the first outcome of an item when a contradicting report arrives later", async () => {
    // vessel-02 fails first, then a success arrives: the item stays failed (the set already knows),
    // while the device's own view says what it holds now.
    const failed = {
      ...ready(WEB),
      type: "imageFailed",
      reason: "layer sha256:dd… missing",
      bytes: 0,
    };
    await handleReports([message("vessel-02", failed, "2026-11-28T10:05:00.000Z")], context(), deps());
    const outcomes = await handleReports(
      [message("vessel-02", ready(WEB), "2026-11-28T10:06:00.000Z")],
      context(),
      deps(),
    );
    assert.deepEqual(outcomes[0], {
      kind: "raised",
      device: "vessel-02",
      digest: WEB,
      setId: SET,
      waiter: WAITER,
      event: { ok: false, reason: "layer sha256:dd… missing" },
    });
    assert.equal((await state.sets.getItem(SET, "vessel-02", WEB))?.state, "failed");
    assert.equal((await state.deviceImages.get("vessel-02", WEB))?.state, "present");
  });

  it("finds the image and set of a failure that names neither, from the device's in-transit bundle", async () => {
    const failure = {
      type: "imageFailed",
      setId: "",
      bundleId: `${WEB.replace(":", "-")}-src.bundle`,
      image: "",
      digest: "",
      bytes: 0,
      durationMs: 0,
      reason: "signature does not verify",
    };
    const outcomes = await handleReports([message("vessel-03", failure)], context(), deps());
    assert.deepEqual(outcomes, [
      {
        kind: "raised",
        device: "vessel-03",
        digest: WEB,
        setId: SET,
        waiter: WAITER,
        event: { ok: false, reason: "signature does not verify" },
      },
    ]);
    assert.equal((await state.deviceImages.get("vessel-03", WEB))?.reason, "signature does not verify");
  });

  it("records a report for an unknown set on the device and notifies nobody", async () => {
    const before = host.events.length;
    const outcomes = await handleReports(
      [message("vessel-04", { ...ready(API), setId: "no-such-set" })],
      context(),
      deps(),
    );
    assert.deepEqual(outcomes, [
      {
        kind: "recorded",
        device: "vessel-04",
        digest: API,
        note: `vessel-04 imageReady ${API}: set "no-such-set" has no such item; nothing to notify`,
      },
    ]);
    assert.equal(host.events.length, before);
    assert.equal((await state.deviceImages.get("vessel-04", API))?.state, "present");
  });

  it("drops malformed messages with a reason and still handles the rest of the batch", async () => {
    const before = host.events.length;
    const outcomes = await handleReports(
      [
        message(undefined, ready(WEB)),
        message("vessel-04", "{not json"),
        message("vessel-04", { type: "reboot" }),
        message("vessel-04", { ...ready(WEB), digest: "sha256:short" }),
        message("vessel-04", { ...ready(WEB), bytes: -1 }),
        message("vessel-04", { type: "inventory", images: [{ image: "a:1" }] }),
        message("vessel-04", {
          ...ready(WEB),
          setId: "",
          bundleId: "unknown.bundle",
          digest: "",
          type: "imageFailed",
        }),
        message("vessel-04", Buffer.from(JSON.stringify(ready(WEB)))),
      ],
      context(),
      deps(),
    );
    assert.deepEqual(outcomes.slice(0, 7), [
      { kind: "dropped", reason: "no iothub-connection-device-id system property: not a device message" },
      { kind: "dropped", reason: 'from vessel-04: report is not JSON: "{not json"' },
      {
        kind: "dropped",
        reason: 'from vessel-04: unknown report type "reboot"; expected imageReady, imageFailed or inventory',
      },
      {
        kind: "dropped",
        reason:
          "from vessel-04: imageReady report needs digest as sha256:<64 hex> (or empty when no image was made)",
      },
      {
        kind: "dropped",
        reason: "from vessel-04: imageReady report needs bytes as a whole number of at least 0",
      },
      {
        kind: "dropped",
        reason: "from vessel-04: inventory images[0] needs an image name and a sha256:<64 hex> digest",
      },
      {
        kind: "dropped",
        reason:
          'from vessel-04: imageFailed for bundle "unknown.bundle" names no image digest and no in-transit image of this device matches it',
      },
    ]);
    assert.equal(outcomes[7].kind, "raised");
    assert.equal(host.events.length, before + 1);
    assert.ok(
      logs.includes('warning: device report dropped: from vessel-04: report is not JSON: "{not json"'),
    );
  });

  it("heals the device's images from an inventory report", async () => {
    await state.deviceImages.apply("vessel-09", OLD, { kind: "present", at: "2026-11-01T00:00:00.000Z" });
    const outcomes = await handleReports(
      [
        message("vessel-09", {
          type: "inventory",
          images: [
            { image: "apps/web:2.0", digest: WEB },
            { image: "apps/web:latest", digest: WEB },
            { image: "apps/api:1", digest: API },
          ],
        }),
      ],
      context(),
      deps(),
    );
    assert.deepEqual(outcomes, [{ kind: "healed", device: "vessel-09", images: 2, resolved: 0 }]);
    const rows = (await state.deviceImages.listByDevice("vessel-09")).items;
    assert.deepEqual(
      rows.map((r) => [r.digest, r.state]),
      [
        [WEB, "present"],
        [API, "present"],
      ].sort(),
    );
    assert.equal(
      (await state.deviceImages.listByImage(OLD)).items.some((r) => r.device === "vessel-09"),
      false,
    );
  });

  it("resolves an in-transit item whose report was lost when the inventory shows the image", async () => {
    const before = host.events.length;
    const outcomes = await handleReports(
      [
        message(
          "vessel-06",
          { type: "inventory", images: [{ image: "apps/web:2.0", digest: WEB }] },
          "2026-11-28T11:00:00.000Z",
        ),
      ],
      context(),
      deps(),
    );
    assert.deepEqual(outcomes, [{ kind: "healed", device: "vessel-06", images: 1, resolved: 1 }]);
    assert.deepEqual(host.events.slice(before), [
      { instanceId: WAITER, name: `image:vessel-06:${WEB}`, data: { ok: true } },
    ]);
    assert.equal((await state.sets.getItem(SET, "vessel-06", WEB))?.state, "arrived");
    assert.equal((await state.deviceImages.get("vessel-06", WEB))?.state, "present");
  });

  it("throws after the batch when the Durable extension is unreachable, so the batch is retried", async () => {
    const gone = await startDurableHost();
    const client = gone.client();
    await gone.close();
    await assert.rejects(
      handleReports(
        [message("vessel-05", { type: "inventory", images: [] }), message("vessel-01", ready(WEB))],
        context(),
        deps(client),
      ),
      (error: AggregateError) => {
        assert.equal(error.message, "1 of 2 device reports could not be stored");
        assert.match(String(error.errors[0].message), /ECONNREFUSED/);
        return true;
      },
    );
  });

  it("pairs each body with its system properties and enqueued time from the trigger metadata", () => {
    const messages = messagesOf(
      [{ type: "inventory", images: [] }, "x"],
      context({
        systemPropertiesArray: [
          { "iothub-connection-device-id": "vessel-01" },
          { "iothub-connection-device-id": "vessel-02" },
        ],
        enqueuedTimeUtcArray: ["2026-11-28T10:00:00Z", "2026-11-28T10:00:01.5Z"],
      }),
    );
    assert.deepEqual(messages, [
      {
        body: { type: "inventory", images: [] },
        systemProperties: { "iothub-connection-device-id": "vessel-01" },
        enqueuedAt: "2026-11-28T10:00:00.000Z",
      },
      {
        body: "x",
        systemProperties: { "iothub-connection-device-id": "vessel-02" },
        enqueuedAt: "2026-11-28T10:00:01.500Z",
      },
    ]);
    const single = messagesOf(
      ["y"],
      context({
        systemProperties: { "iothub-connection-device-id": "vessel-03" },
        enqueuedTimeUtc: "2026-11-28T10:00:02Z",
      }),
    );
    assert.deepEqual(single, [
      {
        body: "y",
        systemProperties: { "iothub-connection-device-id": "vessel-03" },
        enqueuedAt: "2026-11-28T10:00:02.000Z",
      },
    ]);
  });
});
