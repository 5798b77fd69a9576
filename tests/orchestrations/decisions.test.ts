import assert from "node:assert/strict";
import { describe, test } from "node:test";
import type { GroupPlan } from "../../activities/names.js";
import {
  deviceBatches,
  distinctBundles,
  initialStatus,
  MAX_CHANGE_LENGTH,
  MAX_LATEST_CHANGES,
  MAX_STATUS_BYTES,
  plannedStatus,
  statusBytes,
  waiters,
  withChange,
} from "../../orchestrations/decisions.js";
import { readReport } from "../../orchestrations/deviceBatch.js";
import { bundleFor, digest, IMAGES } from "./scenario.js";

const [TELEMETRY, CAMERA] = IMAGES as [(typeof IMAGES)[0], (typeof IMAGES)[0]];
const AT = "2026-11-28T09:00:00.000Z";

function plan(present: string[], devices: string[]): GroupPlan {
  return {
    devices,
    needs: [TELEMETRY, CAMERA]
      .filter((image) => !present.includes(image.digest))
      .map((image) => ({ digest: image.digest, bundle: bundleFor(image, present) })),
  };
}

describe("deployment set decisions", () => {
  test("distinctBundles lists each bundle once, in first-seen order", () => {
    const groups = [plan([digest("0")], ["d1"]), plan([], ["d2"]), plan([digest("0")], ["d3"])];
    assert.deepEqual(
      distinctBundles(groups).map((b) => b.bundleId),
      ["aaaaaaaa-from-00", "bbbbbbbb-from-00", "aaaaaaaa-from-nothing", "bbbbbbbb-from-nothing"],
    );
  });

  test("deviceBatches cuts devices that miss something into batches, skipping devices that miss nothing", () => {
    const groups = [
      plan([TELEMETRY.digest, CAMERA.digest], ["full"]),
      plan([], ["a", "b", "c"]),
      plan([CAMERA.digest], ["d"]),
    ];
    const batches = deviceBatches("s", AT, groups, 2);
    assert.deepEqual(
      batches.map((b) => [
        b.instanceId,
        b.input.items.map((item) => `${item.device}:${item.digest.slice(7, 8)}`),
      ]),
      [
        ["s:batch:0", ["a:a", "a:b", "b:a", "b:b"]],
        ["s:batch:1", ["c:a", "c:b", "d:a"]],
      ],
    );
    assert.deepEqual(waiters(batches), [
      { device: "a", waiter: "s:batch:0" },
      { device: "b", waiter: "s:batch:0" },
      { device: "c", waiter: "s:batch:1" },
      { device: "d", waiter: "s:batch:1" },
    ]);
    assert.throws(
      () => deviceBatches("s", AT, groups, 0),
      /expected a device batch size of at least 1, found 0/,
    );
  });

  test("the status stays far under 16 KB for a huge fleet and long failure reasons", () => {
    const devices = Array.from({ length: 100_000 }, (_, i) => `device-${i}`);
    let status = plannedStatus(
      initialStatus("s", devices.length, AT),
      AT,
      2,
      [plan([], devices)],
      2,
      2,
      1000,
    );
    assert.deepEqual(status.items, {
      planned: 200_000,
      building: 0,
      inTransit: 0,
      arrived: 0,
      failed: 0,
      present: 0,
    });
    for (let i = 0; i < 50; i++)
      status = withChange(status, AT, `${"d".repeat(128)} failed: ${"x".repeat(5000)}`);
    assert.equal(status.latest.length, MAX_LATEST_CHANGES);
    assert.equal(status.latest[0]!.length, AT.length + 1 + MAX_CHANGE_LENGTH);
    assert.ok(statusBytes(status) < MAX_STATUS_BYTES / 4, `${statusBytes(status)} bytes`);
  });

  test("a report payload counts as success only when it says ok: true", () => {
    assert.deepEqual(readReport({ ok: true, bytes: 12 }), { ok: true, bytes: 12 });
    assert.deepEqual(readReport({ ok: true, bytes: -1 }), { ok: true, bytes: 0 });
    assert.deepEqual(readReport({ ok: false }), { ok: false, reason: "no reason given" });
    assert.deepEqual(readReport({ ok: "yes" }), {
      ok: false,
      reason: 'malformed report event payload {"ok":"yes"}',
    });
    assert.deepEqual(readReport(undefined), {
      ok: false,
      reason: "malformed report event payload undefined",
    });
  });
});
