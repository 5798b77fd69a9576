import assert from "node:assert/strict";
import { describe, test } from "node:test";
import type { SendEmailInput } from "../../activities/names.js";
import { localImageRef, rewriteManifest, splitImageRef } from "../../activities/pushManifest.js";
import { groupInventory } from "../../activities/readDeviceInventory.js";
import { moduleImages } from "../../activities/resolveImages.js";
import { composeEmail, MAX_EMAIL_FAILURES } from "../../activities/sendEmail.js";

const DIGEST = `sha256:${"c".repeat(64)}`;

describe("rewriteManifest", () => {
  const manifest = {
    modulesContent: {
      $edgeAgent: {
        "properties.desired": {
          systemModules: { edgeHub: { settings: { image: "mcr.microsoft.com/azureiotedge-hub:1.5" } } },
          modules: {
            telemetry: { settings: { image: "acr.azurecr.io/apps/telemetry:2.0", createOptions: "{}" } },
            camera: { settings: { image: `myacr.azurecr.io:443/vision/camera@${DIGEST}` } },
            plain: { settings: { image: "redis" } },
          },
        },
      },
      telemetry: { "properties.desired": { rate: 5 } },
    },
  };

  test("points custom modules at the device-local registry and leaves the rest as it was", () => {
    const rewritten = rewriteManifest(manifest);
    type Modules = Record<string, { settings: { image: string; createOptions?: string } }>;
    const desired = (
      rewritten.modulesContent.$edgeAgent as Record<string, { modules: Modules; systemModules: Modules }>
    )["properties.desired"]!;
    assert.deepEqual(
      Object.fromEntries(Object.entries(desired.modules).map(([name, m]) => [name, m.settings.image])),
      {
        telemetry: "localhost:5000/apps/telemetry:2.0",
        camera: `localhost:5000/vision/camera@${DIGEST}`,
        plain: "localhost:5000/redis:latest",
      },
    );
    assert.equal(desired.systemModules.edgeHub.settings.image, "mcr.microsoft.com/azureiotedge-hub:1.5");
    assert.equal(desired.modules.telemetry.settings.createOptions, "{}");
    assert.deepEqual(rewritten.modulesContent.telemetry, { "properties.desired": { rate: 5 } });
    // The input is not changed.
    assert.equal(
      (
        manifest.modulesContent.$edgeAgent["properties.desired"].modules.telemetry.settings as {
          image: string;
        }
      ).image,
      "acr.azurecr.io/apps/telemetry:2.0",
    );
  });

  test("takes the local registry address from configuration", () => {
    assert.equal(localImageRef("acr.io/apps/x:1", "edge-registry:5443"), "edge-registry:5443/apps/x:1");
  });

  test("splits references with ports, nested names, tags and digests", () => {
    assert.deepEqual(splitImageRef("localhost:5000/a/b:1.2"), {
      registry: "localhost:5000",
      name: "a/b",
      tag: "1.2",
      digest: undefined,
    });
    assert.deepEqual(splitImageRef(`a/b:1@${DIGEST}`), {
      registry: undefined,
      name: "a/b",
      tag: "1",
      digest: DIGEST,
    });
    assert.deepEqual(splitImageRef("library/redis"), {
      registry: undefined,
      name: "library/redis",
      tag: undefined,
      digest: undefined,
    });
  });
});

describe("moduleImages", () => {
  test("lists each custom module's image in manifest order", () => {
    const manifest = {
      modulesContent: {
        $edgeAgent: {
          "properties.desired": {
            modules: { b: { settings: { image: "r.io/b:1" } }, a: { settings: { image: "r.io/a:2" } } },
          },
        },
      },
    };
    assert.deepEqual(moduleImages(manifest), [
      { module: "b", ref: "r.io/b:1" },
      { module: "a", ref: "r.io/a:2" },
    ]);
  });

  test("says what is missing from a manifest without modules", () => {
    assert.throws(
      () => moduleImages({ modulesContent: {} }),
      /expected modulesContent.\$edgeAgent\['properties.desired'\].modules/,
    );
  });
});

describe("groupInventory", () => {
  test("groups devices by the exact images they hold, in device order", () => {
    const present = new Map([
      ["d1", ["y", "x"]],
      ["d2", []],
      ["d3", ["x", "y", "x"]],
    ]);
    assert.deepEqual(groupInventory(["d1", "d2", "d3", "d4"], present), [
      { present: ["x", "y"], devices: ["d1", "d3"] },
      { present: [], devices: ["d2", "d4"] },
    ]);
  });
});

describe("composeEmail", () => {
  const base: SendEmailInput = {
    setId: "s-9",
    requestedBy: { name: "Ada", email: "ada@example.com" },
    outcome: "succeeded",
    deviceCount: 2,
    images: [
      { module: "cam", ref: "r.io/cam:5", repository: "cam", tag: "5", digest: DIGEST, fullBytes: 9_000_000 },
    ],
    bytesPlanned: 1_200_000,
    fullBytes: 18_000_000,
    failures: [],
    failureCount: 0,
  };

  test("a success names the set, devices, images and the bytes saved", () => {
    const email = composeEmail(base);
    assert.equal(email.subject, "Deployment set s-9 succeeded on 2 devices");
    assert.deepEqual(email.to, { address: "ada@example.com", displayName: "Ada" });
    assert.equal(
      email.text,
      [
        "Hello Ada,",
        "",
        "Every image of deployment set s-9 arrived on all 2 devices, and the deployment manifest was pushed to each of them.",
        "",
        "Images:",
        `- cam: r.io/cam:5 (${DIGEST})`,
        "",
        "Transfer: 1.2 MB planned instead of 18.0 MB for full pulls.",
        "",
      ].join("\n"),
    );
  });

  test("a failure lists which image failed on which device and why, and escapes the HTML", () => {
    const email = composeEmail({
      ...base,
      outcome: "failed",
      failureCount: 2,
      failures: [
        { device: "d<1>", digest: DIGEST, reason: "layer sha256:ab missing" },
        { device: "d2", digest: "sha256:unknown", reason: "disk full" },
      ],
    });
    assert.equal(email.subject, "Deployment set s-9 failed: 2 image(s) on 2 device(s)");
    assert.ok(email.text.includes("No deployment manifest was pushed to any device."));
    assert.ok(
      email.text.includes(
        "- d<1>: cam (r.io/cam:5): layer sha256:ab missing\n- d2: sha256:unknown: disk full\n",
      ),
    );
    assert.ok(email.html!.includes("d&#60;1&#62;"));
  });

  test("a long failure list is cut and points at the query API", () => {
    const failures = Array.from({ length: MAX_EMAIL_FAILURES + 5 }, (_, i) => ({
      device: `d${i}`,
      digest: DIGEST,
      reason: "x",
    }));
    const email = composeEmail({ ...base, outcome: "failed", failures, failureCount: failures.length });
    assert.equal(email.text.split("\n").filter((line) => line.startsWith("- d")).length, MAX_EMAIL_FAILURES);
    assert.ok(email.text.includes("- … and 5 more; GET /api/deployments/s-9 lists all"));
  });
});

test("composeEmail counts the failures the orchestration did not carry", () => {
  const email = composeEmail({
    setId: "s-10",
    requestedBy: { name: "Ada", email: "ada@example.com" },
    outcome: "failed",
    deviceCount: 4000,
    images: [],
    bytesPlanned: 0,
    fullBytes: 0,
    failures: [{ device: "d1", digest: DIGEST, reason: "x" }],
    failureCount: 3999,
  });
  assert.equal(email.subject, "Deployment set s-10 failed: 3999 image(s) on 1 or more device(s)");
  assert.ok(email.text.includes("- … and 3998 more; GET /api/deployments/s-10 lists all"));
});
