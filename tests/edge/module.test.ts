/**
 * The edge module's program end to end: real bundles from the engine, a real docker-registry,
 * reports through the real azure-iot-device SDK over MQTT/TLS to mosquitto.
 *
 * Stand-in, and why: outside an IoT Edge runtime `ModuleClient.fromEnvironment` cannot use the
 * `IOTEDGE_*` variables (they need the edge daemon's workload socket to sign tokens and fetch
 * the trust bundle), so the test sets `EdgeHubConnectionString` (a module connection string with
 * HostName=127.0.0.1 and no GatewayHostName) and `EdgeModuleCACertificateFile` (the test CA), the
 * other path the SDK's `fromEnvironment` takes. mosquitto stands in for IoT Hub / edgeHub: it
 * does not check the SAS token, and tests/support/mqtt.ts answers twin and method requests.
 */
import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { parseBundle } from "../../delta/bundle/format.js";
import { type ModuleProcess, startModule } from "./module-process.js";
import {
  configDigest,
  DEVICE_ID,
  type EdgeWorld,
  imageBytes,
  listing,
  MODULE_ID,
  registryImage,
  reportsFor,
  startWorld,
  writeSlowly,
} from "./world.js";

/** The digest the cloud knows the bundle's image by: its registry manifest digest, from the signed manifest. */
function sourceDigest(bundle: Uint8Array): string {
  return parseBundle(bundle).manifest.target.manifestDigest;
}

describe("edge module program", () => {
  let world: EdgeWorld;
  let inbox: string;
  let module: ModuleProcess;
  let bundle11: Buffer;

  before(async () => {
    world = await startWorld();
    bundle11 = await world.updateBundle("1.1");
    inbox = await world.newInbox("inbox-main");
    module = startModule(world.moduleEnv(inbox));
  });
  after(async () => {
    await module?.stop().catch(() => undefined);
    await world?.close();
  });

  it("reports the local registry's images at start", async () => {
    const [event] = await world.hub.waitForEvents(
      (events) => events.some((e) => e.properties.type === "inventory"),
      "the inventory report",
    );
    assert.ok(event);
    const inventory = world.hub.events.find((e) => e.properties.type === "inventory")!;
    assert.equal(inventory.deviceId, DEVICE_ID);
    assert.equal(inventory.moduleId, MODULE_ID);
    assert.equal(inventory.output, "reports");
    assert.deepEqual(inventory.body, {
      type: "inventory",
      images: [{ image: "apps/telemetry:1.0", digest: world.baseDigest }],
    });
  });

  it("rebuilds a bundle that arrives in slow chunks, pushes it under its tag and reports it", async () => {
    const name = "0100-normal.set-s1.bundle-b11.dsb";
    // Pauses longer than the quiet period: only the declared length keeps the module waiting.
    await writeSlowly(join(inbox, name), bundle11, 6, 500);
    await world.hub.waitForEvents((events) => reportsFor(events, "b11").length > 0, "the report for b11");
    const [report, ...more] = reportsFor(world.hub.events, "b11");
    assert.equal(more.length, 0);
    const target = world.images.update("1.1");
    const held = await registryImage(world.registry.host, "apps/telemetry", "1.1");
    assert.deepEqual(
      held.diffIds,
      target.layers.map((l) => l.diffId),
    );
    assert.equal(held.configDigest, configDigest(target));
    const body = report!.body as Record<string, unknown>;
    assert.equal(typeof body.durationMs, "number");
    assert.deepEqual(
      { ...body, durationMs: 0 },
      {
        type: "imageReady",
        setId: "s1",
        bundleId: "b11",
        image: "apps/telemetry:1.1",
        digest: sourceDigest(bundle11),
        localDigest: held.digest,
        bytes: imageBytes(target),
        durationMs: 0,
      },
    );
    assert.equal(report!.output, "reports");
    assert.equal(report!.properties.type, "imageReady");
    assert.equal(report!.properties.setId, "s1");
    assert.equal(report!.properties.bundleId, "b11");
    assert.equal(report!.properties.image, "apps/telemetry:1.1");
    assert.equal(report!.properties["$.ct"], "application/json");
    assert.equal(report!.properties["$.ce"], "utf-8");
    assert.equal(
      world.hub.events.some((e) => e.properties.type === "imageFailed"),
      false,
      "a partial file was never acted on",
    );
    await module.waitForLog((l) => l.step === "bundle.finished", "the bundle to be filed");
    assert.deepEqual(await listing(join(inbox, "done")), [name]);
    assert.deepEqual(await listing(join(inbox, "processing")), []);
    assert.deepEqual(await listing(join(inbox, "failed")), []);
  });

  it("writes one JSON log line per step with the bundle id and timings", async () => {
    assert.deepEqual(module.stray, []);
    const bundleId = module.logs.find((l) => l.step === "bundle.claimed")!.bundleId!;
    assert.match(bundleId, /^sha256:[0-9a-f]{64}$/);
    const steps = module.logs.filter((l) => l.bundleId === bundleId).map((l) => l.step);
    assert.deepEqual(steps, [
      "bundle.claimed",
      "bundle.verified",
      "bundle.sourcesPresent",
      "apply.start",
      "apply.done",
      "push.done",
      "bundle.finished",
    ]);
    for (const line of module.logs.filter((l) => l.bundleId === bundleId && l.step !== "bundle.claimed")) {
      if (line.step !== "apply.start") assert.equal(typeof line.ms, "number", line.step);
    }
  });

  it("applies a bundle delivered twice once and reports it again", async () => {
    const applies = () => module.logs.filter((l) => l.step === "apply.start").length;
    assert.equal(applies(), 1);
    await writeSlowly(join(inbox, "again.set-s2.bundle-b11.dsb"), bundle11, 1, 0);
    await world.hub.waitForEvents(
      (events) => reportsFor(events, "b11").some((e) => (e.body as { setId: string }).setId === "s2"),
      "the second report for b11",
    );
    const [first, second] = reportsFor(world.hub.events, "b11").map((e) => e.body as Record<string, unknown>);
    assert.equal(second!.type, "imageReady");
    assert.equal(second!.digest, first!.digest);
    assert.equal(second!.image, "apps/telemetry:1.1");
    assert.equal(second!.bytes, first!.bytes);
    await module.waitForLog((l) => l.step === "bundle.duplicate", "the duplicate to be recognised");
    assert.equal(applies(), 1, "the image was not rebuilt a second time");
    assert.deepEqual(await listing(join(inbox, "done")), [
      "0100-normal.set-s1.bundle-b11.dsb",
      "again.set-s2.bundle-b11.dsb",
    ]);
  });

  it("answers the inventory direct method and sends a fresh inventory report", async () => {
    const before = world.hub.events.filter((e) => e.properties.type === "inventory").length;
    const answer = await world.hub.invokeMethod("inventory", {});
    // An image the module rebuilt is reported under the digest the cloud knows it by.
    const images = [
      { image: "apps/telemetry:1.0", digest: world.baseDigest },
      { image: "apps/telemetry:1.1", digest: sourceDigest(bundle11) },
    ];
    assert.deepEqual(answer, { status: 200, payload: { images } });
    await world.hub.waitForEvents(
      (events) => events.filter((e) => e.properties.type === "inventory").length > before,
      "the inventory report after the method",
    );
    const latest = world.hub.events.filter((e) => e.properties.type === "inventory").at(-1)!;
    assert.deepEqual(latest.body, { type: "inventory", images });
  });

  it("keeps reports on disk while IoT Hub is offline and sends them when it is back", async () => {
    const bundle12 = await world.updateBundle("1.2");
    await world.hub.stopBroker();
    await writeSlowly(join(inbox, "b12.bundle-b12.dsb"), bundle12, 1, 0);
    await module.waitForLog(
      (l) => l.step === "bundle.finished" && l.image === "apps/telemetry:1.2",
      "b12 to be filed",
    );
    await module.waitForLog((l) => l.step === "report.retry" && l.report === "imageReady", "a failed send");
    assert.deepEqual(reportsFor(world.hub.events, "b12"), [], "nothing reached the hub while it was away");
    const queued = await listing(join(inbox, ".deltaship", "reports"));
    assert.equal(queued.length, 1);
    assert.match(queued[0]!, /^\d{12}-imageReady\.json$/);
    assert.equal(
      JSON.parse(await readFile(join(inbox, ".deltaship", "reports", queued[0]!), "utf8")).bundleId,
      "b12",
    );
    await world.hub.startBroker();
    await world.hub.waitForEvents(
      (events) => reportsFor(events, "b12").length > 0,
      "b12's report after the hub returned",
    );
    const [report] = reportsFor(world.hub.events, "b12");
    assert.equal((report!.body as { type: string }).type, "imageReady");
    assert.deepEqual(
      [(report!.body as { digest: string }).digest, (report!.body as { localDigest: string }).localDigest],
      [sourceDigest(bundle12), (await registryImage(world.registry.host, "apps/telemetry", "1.2")).digest],
    );
    await module.waitForLog((l) => l.step === "report.sent" && l.bundleId === "b12", "the queue to empty");
    assert.deepEqual(await listing(join(inbox, ".deltaship", "reports")), []);
  });

  it("stops cleanly on SIGTERM", async () => {
    await module.stop();
    assert.equal(module.logs.at(-1)?.step, "module.stop");
  });
});
