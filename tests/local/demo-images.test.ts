// Local mode with a DevOps engineer's own images and without a registry server: images passed as
// docker-archive files and OCI layout folders (written by our own writer), and `--store oci`,
// where the container registry and every device keep images in OCI layout folders. Each run is
// the real `deltaship demo` command; the images are read back from the device stores.
import assert from "node:assert/strict";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { digestOf } from "../../delta/image/digest.js";
import { openOciLayout } from "../../delta/image/oci-layout.js";
import { writeImage } from "../../delta/image/open.js";
import { buildSampleImages, type SampleSet } from "../../local/sample-images.js";
import { runCommand, runDemoJson } from "./run-demo.js";

let dir: string;
let samples: SampleSet;
const paths = { telemetryV1: "", telemetryV2: "", dashboard: "" };

before(async () => {
  dir = await mkdtemp(join(tmpdir(), "deltaship-demo-images-"));
  samples = await buildSampleImages();
  paths.telemetryV1 = join(dir, "telemetry-1.0.tar");
  paths.telemetryV2 = join(dir, "telemetry-1.1");
  paths.dashboard = join(dir, "dashboard-2.0.tar");
  await writeImage(paths.telemetryV1, samples.telemetryV1.image);
  await writeImage(`oci:${paths.telemetryV2}:${samples.telemetryV2.name}`, samples.telemetryV2.image);
  await writeImage(paths.dashboard, samples.dashboard.image);
});

after(() => rm(dir, { recursive: true, force: true }));

async function workDir(name: string): Promise<string> {
  return mkdtemp(join(dir, `${name}-`));
}

describe("local mode with images passed as options", () => {
  test("deploys a docker-archive and an OCI layout to devices holding what --from and --holds say", async () => {
    const { code, result, record } = await runDemoJson(
      await workDir("archives"),
      "--devices",
      "2",
      "--time-factor",
      "200",
      "--from",
      paths.telemetryV1,
      "--image",
      paths.telemetryV2,
      "--image",
      paths.dashboard,
      "--holds",
      "ship-2=",
    );
    assert.equal(code, 0, JSON.stringify(result));
    assert.equal(result.outcome, "succeeded");
    assert.deepEqual(
      result.devices.map((d) => [d.id, d.outcome, d.images.map((i) => [i.image, i.outcome])]),
      [
        [
          "ship-1",
          "succeeded",
          [
            ["samples/telemetry:1.1", "arrived"],
            ["samples/dashboard:2.0", "arrived"],
          ],
        ],
        [
          "ship-2",
          "succeeded",
          [
            ["samples/telemetry:1.1", "arrived"],
            ["samples/dashboard:2.0", "arrived"],
          ],
        ],
      ],
    );
    for (const device of record.devices) {
      for (const image of device.images) {
        assert.equal(image.verified, true, `${device.id} ${image.image}: config and layers read back`);
      }
    }
    // ship-1 started from the --from archive: the update is a small delta; ship-2 started empty.
    const update = (id: string) =>
      result.devices.find((d) => d.id === id)!.images.find((i) => i.image === "samples/telemetry:1.1")!;
    assert.ok(update("ship-1").bytesSent * 5 < update("ship-1").pullBytes, JSON.stringify(update("ship-1")));
    assert.ok(update("ship-1").bytesSent * 20 < update("ship-2").bytesSent, "the first install sends more");
    assert.deepEqual(result.manifestPushes.map((p) => p.device).sort(), ["ship-1", "ship-2"]);
    assert.equal(result.emails.length, 1);
  });

  test("--store oci: no registry server; every device's layout holds the new images, digests checked", async () => {
    const work = await workDir("oci");
    // Two devices keep the run short: an update (ship-1) and new images on a held base (ship-2);
    // the archives run above covers a first install.
    const { code, result, record } = await runDemoJson(
      work,
      "--store",
      "oci",
      "--devices",
      "2",
      "--time-factor",
      "200",
    );
    assert.equal(code, 0, JSON.stringify(result));
    assert.equal(record.store, "oci");
    assert.equal(result.outcome, "succeeded");
    assert.deepEqual(
      result.devices.map((d) => d.id),
      ["ship-1", "ship-2"],
    );
    for (const device of result.devices) {
      for (const target of [samples.telemetryV2, samples.dashboard]) {
        const image = device.images.find((i) => i.image === target.name)!;
        assert.equal(image.outcome, "arrived", `${device.id} ${target.name}`);
        // Read back from the device's layout: the exact config (the image id) and every layer's diff_id.
        const held = await openOciLayout(join(work, "devices", device.id, "images"), { tag: target.name });
        assert.equal(
          held.info.configDigest,
          digestOf(target.image.config),
          `${device.id} ${target.name} config`,
        );
        assert.deepEqual(
          held.info.layers.map((l) => l.diffId),
          target.image.layers.map((l) => l.diffId),
        );
        for (let i = 0; i < held.info.layers.length; i++) {
          // Streaming a layer's tar checks it against its diff_id; a mismatch throws.
          for await (const _ of await held.openLayerTar(i)) {
          }
        }
        await held.close();
      }
    }
    // The container registry was a layout folder too: the set's digests are its manifests.
    const acr = await openOciLayout(join(work, "registry"), { tag: samples.telemetryV2.name });
    assert.equal(result.devices[0]!.images[0]!.digest, acr.info.manifestDigest);
    assert.equal(result.emails.length, 1);
    assert.equal(result.manifestPushes.length, 2);
  });

  test("refuses, before starting anything, paths that are missing or not images and devices not in the fleet", async () => {
    // Each is its own short process; they run side by side.
    const [missing, notImage, noDevice, holdsAlone] = await Promise.all([
      runCommand(["--image", join(dir, "nowhere.tar")]),
      runCommand(["--image", join(import.meta.dirname, "run-demo.ts")]),
      runCommand(["--image", paths.dashboard, "--holds", `boat-9=${paths.telemetryV1}`]),
      runCommand(["--holds", `ship-1=${paths.telemetryV1}`]),
    ]);
    assert.equal(missing.code, 2);
    assert.match(missing.stderr, /--image \S+nowhere\.tar: \S+nowhere\.tar does not exist/);

    assert.equal(notImage.code, 2);
    assert.match(notImage.stderr, /--image \S+run-demo\.ts is not a readable container image/);

    assert.equal(noDevice.code, 2);
    assert.match(
      noDevice.stderr,
      /--holds: there is no device "boat-9"; the fleet is ship-1, ship-2, truck-3/,
    );

    assert.equal(holdsAlone.code, 2);
    assert.match(holdsAlone.stderr, /add --image PATH/);
  });
});
