// The end-to-end test of local mode (`deltaship demo`, the README's first command): a deployment
// set from HTTP request to manifest push across three simulated devices behind a lossy link, with
// every part real except the IoT Hub manifest push and email, which local mode records to files.
//
// Each run is the real command (`deltaship demo --json`) in its own process, as a user runs it:
// the app's settings and cached clients belong to one run, like one Function App.
import assert from "node:assert/strict";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, test } from "node:test";
import { runDemoJson } from "./run-demo.js";

const workDirs: string[] = [];
after(() => Promise.all(workDirs.map((dir) => rm(dir, { recursive: true, force: true }))));

async function runDemo(...extra: string[]) {
  const dir = await mkdtemp(join(tmpdir(), "deltaship-demo-test-"));
  workDirs.push(dir);
  return runDemoJson(dir, ...extra);
}

/** The keys of the --json object and its parts, exactly as issue 7 gives them. */
const JSON_KEYS = ["outcome", "setId", "devices", "manifestPushes", "emails"];
const DEVICE_KEYS = ["id", "outcome", "images"];
const IMAGE_KEYS = ["image", "digest", "bytesSent", "pullBytes", "outcome"];
const ISO_8601 = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$/;

describe("local mode, end to end", () => {
  test("every device gets every image, digests verified, manifests pushed after the last arrival, one email", async () => {
    const { code, result, record } = await runDemo();
    assert.equal(code, 0);
    assert.equal(result.outcome, "succeeded");
    assert.deepEqual(Object.keys(result), JSON_KEYS);
    for (const device of result.devices) {
      assert.deepEqual(Object.keys(device), DEVICE_KEYS);
      for (const image of device.images) assert.deepEqual(Object.keys(image), IMAGE_KEYS);
    }
    for (const at of [...result.manifestPushes, ...result.emails].map((x) => x.at))
      assert.match(at, ISO_8601);
    assert.deepEqual(
      result.devices.map((d) => d.id),
      ["ship-1", "ship-2", "truck-3"],
    );
    for (const device of result.devices) {
      assert.equal(device.outcome, "succeeded", device.id);
      for (const image of device.images) {
        assert.equal(image.outcome, "arrived", `${device.id} ${image.image}`);
        const read = record.devices
          .find((d) => d.id === device.id)!
          .images.find((i) => i.image === image.image)!;
        assert.equal(read.verified, true, `${device.id} ${image.image} read back from its registry`);
        assert.ok(image.bytesSent > 0, `${device.id} ${image.image} crossed the link`);
      }
    }
    // ship-1 holds telemetry 1.0: the update is a small delta, far below what docker pull moves.
    const update = result.devices[0]!.images.find((i) => i.image === "samples/telemetry:1.1")!;
    assert.ok(
      update.bytesSent * 5 < update.pullBytes,
      `update ${update.bytesSent} B vs pull ${update.pullBytes} B`,
    );
    const sent = result.devices.flatMap((d) => d.images).reduce((n, i) => n + i.bytesSent, 0);
    const pulled = result.devices.flatMap((d) => d.images).reduce((n, i) => n + i.pullBytes, 0);
    assert.ok(sent < pulled, `the set sent ${sent} B, docker pull would move ${pulled} B`);

    assert.deepEqual(result.manifestPushes.map((p) => p.device).sort(), ["ship-1", "ship-2", "truck-3"]);
    const lastArrival = Math.max(...record.arrivals.map((a) => Date.parse(a.at)));
    for (const push of result.manifestPushes) {
      assert.ok(
        Date.parse(push.at) > lastArrival,
        `manifest for ${push.device} pushed after the last bundle arrived`,
      );
    }
    assert.equal(result.emails.length, 1);
    assert.match(result.emails[0]!.subject, /succeeded on 3 devices/);
    const pushed = JSON.parse(
      await readFile(
        `${record.workDir}/iothub-manifests/001-${result.manifestPushes[0]!.device}.json`,
        "utf8",
      ),
    );
    const modules = pushed.modulesContent.$edgeAgent["properties.desired"].modules;
    assert.match(modules.telemetry.settings.image, /^localhost:5000\/samples\/telemetry:1\.1$/);
  });

  test("a corrupted bundle fails the set: no manifest is pushed, the email names the device and the reason", async () => {
    const { code, result, record } = await runDemo("--corrupt", "ship-2");
    assert.equal(code, 1);
    assert.equal(result.outcome, "failed");
    const ship2 = result.devices.find((d) => d.id === "ship-2")!;
    assert.equal(ship2.outcome, "failed");
    assert.ok(ship2.images.some((i) => i.outcome === "failed" && /payload|damaged/.test(i.reason ?? "")));
    assert.deepEqual(Object.keys(ship2.images.find((i) => i.outcome === "failed")!), [
      ...IMAGE_KEYS,
      "reason",
    ]);
    for (const device of result.devices.filter((d) => d.id !== "ship-2")) {
      assert.equal(device.outcome, "succeeded", device.id);
    }
    assert.deepEqual(result.manifestPushes, []);
    assert.equal(result.emails.length, 1);
    const email = JSON.parse(
      await readFile(`${record.workDir}/emails/001-operator@deltaship.example.json`, "utf8"),
    );
    assert.match(email.subject, /failed/);
    assert.match(email.text, /ship-2/);
    assert.match(email.text, /payload/);
  });
});
