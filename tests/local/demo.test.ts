// The end-to-end test of local mode (`deltaship demo`, the README's first command): a deployment
// set from HTTP request to manifest push across three simulated devices behind a lossy link, with
// every part real except the IoT Hub manifest push and email, which local mode records to files.
//
// Each run is the real command (`deltaship demo --json`) in its own process, as a user runs it:
// the app's settings and cached clients belong to one run, like one Function App.
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { describe, test } from "node:test";

interface DemoJson {
  outcome: string;
  setId: string;
  devices: {
    id: string;
    outcome: string;
    images: {
      image: string;
      digest: string;
      bytesSent: number;
      pullBytes: number;
      outcome: string;
      verified: boolean;
      reason?: string;
    }[];
  }[];
  manifestPushes: { device: string; at: string }[];
  emails: { to: string; subject: string; at: string }[];
  arrivals: { device: string; image: string; at: string }[];
  workDir: string;
}

/** A run takes about a minute; past this something hangs. */
const RUN_LIMIT_MS = 6 * 60 * 1000;

/** Runs the demo; port 0 lets the host pick a free port so a developer's running demo does not collide. */
function runDemo(...extra: string[]): Promise<{ code: number | null; result: DemoJson }> {
  const root = join(import.meta.dirname, "../..");
  const child = spawn(
    process.execPath,
    ["bin/deltaship.mjs", "demo", "--json", "--port", "0", "--time-factor", "60", ...extra],
    { cwd: root, stdio: ["ignore", "pipe", "pipe"] },
  );
  let stdout = "";
  let stderr = "";
  child.stdout.on("data", (c: Buffer) => (stdout += c.toString()));
  child.stderr.on("data", (c: Buffer) => (stderr = (stderr + c.toString()).slice(-4000)));
  const timer = setTimeout(() => child.kill("SIGKILL"), RUN_LIMIT_MS);
  return new Promise((resolve, reject) => {
    child.on("exit", (code) => {
      clearTimeout(timer);
      try {
        resolve({ code, result: JSON.parse(stdout) as DemoJson });
      } catch {
        reject(
          new Error(`deltaship demo exited ${code} without one JSON object on stdout: ${stdout}\n${stderr}`),
        );
      }
    });
  });
}

describe("local mode, end to end", () => {
  test("every device gets every image, digests verified, manifests pushed after the last arrival, one email", async () => {
    const { code, result } = await runDemo();
    assert.equal(code, 0);
    assert.equal(result.outcome, "succeeded");
    assert.deepEqual(
      result.devices.map((d) => d.id),
      ["ship-1", "ship-2", "truck-3"],
    );
    for (const device of result.devices) {
      assert.equal(device.outcome, "succeeded", device.id);
      for (const image of device.images) {
        assert.equal(image.outcome, "arrived", `${device.id} ${image.image}`);
        assert.equal(image.verified, true, `${device.id} ${image.image} read back from its registry`);
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
    const lastArrival = Math.max(...result.arrivals.map((a) => Date.parse(a.at)));
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
        `${result.workDir}/iothub-manifests/001-${result.manifestPushes[0]!.device}.json`,
        "utf8",
      ),
    );
    const modules = pushed.modulesContent.$edgeAgent["properties.desired"].modules;
    assert.match(modules.telemetry.settings.image, /^localhost:5000\/samples\/telemetry:1\.1$/);
  });

  test("a corrupted bundle fails the set: no manifest is pushed, the email names the device and the reason", async () => {
    const { code, result } = await runDemo("--corrupt", "ship-2");
    assert.equal(code, 1);
    assert.equal(result.outcome, "failed");
    const ship2 = result.devices.find((d) => d.id === "ship-2")!;
    assert.equal(ship2.outcome, "failed");
    assert.ok(ship2.images.some((i) => i.outcome === "failed" && /payload|damaged/.test(i.reason ?? "")));
    for (const device of result.devices.filter((d) => d.id !== "ship-2")) {
      assert.equal(device.outcome, "succeeded", device.id);
    }
    assert.deepEqual(result.manifestPushes, []);
    assert.equal(result.emails.length, 1);
    const email = JSON.parse(
      await readFile(`${result.workDir}/emails/001-operator@deltaship.example.json`, "utf8"),
    );
    assert.match(email.subject, /failed/);
    assert.match(email.text, /ship-2/);
    assert.match(email.text, /payload/);
  });
});
