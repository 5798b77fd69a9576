/**
 * A crash or power loss at any step: the module's program is killed with SIGKILL right after
 * each journaled step (DELTASHIP_CRASH_AFTER) and once from outside in the middle of an apply,
 * then restarted on the same inbox and state. Before the push the tag must not exist; after
 * the restart the image is under its tag, verified, reported, and the bundle filed in `done/`.
 */
import assert from "node:assert/strict";
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import type { CrashPoint } from "../../edge-module/processor.js";
import { startModule } from "./module-process.js";
import { configDigest, type EdgeWorld, listing, registryImage, reportsFor, startWorld } from "./world.js";

/** "verified" recovers exactly like "claimed" and "applied" (start over), so it is left out to save a restart. */
const POINTS: readonly CrashPoint[] = ["claimed", "applied", "pushed", "reported"];
/** Crash points after which the manifest is already under its tag. */
const PUSHED: readonly CrashPoint[] = ["pushed", "reported"];

describe("edge module after a crash", () => {
  let world: EdgeWorld;
  let inbox: string;
  const bundles = new Map<string, Buffer>();

  before(async () => {
    world = await startWorld();
    inbox = await world.newInbox("inbox-crash");
    for (const name of [...POINTS, "outside"]) bundles.set(name, await world.updateBundle(`crash-${name}`));
  });
  after(async () => {
    await world?.close();
  });

  /** Restarts the module normally and checks the bundle ends applied, reported and filed. */
  async function recoverAndCheck(name: string, reportsAtMost: number): Promise<void> {
    const id = `crash-${name}`;
    const module = startModule(world.moduleEnv(inbox));
    try {
      await world.hub.waitForEvents((events) => reportsFor(events, id).length > 0, `the report for ${id}`);
      await module.waitForLog(
        (l) => l.step === "bundle.finished" && l.image === `apps/telemetry:${id}`,
        `${id} filed`,
      );
      const held = await registryImage(world.registry.host, "apps/telemetry", id);
      const target = world.images.update(id);
      assert.deepEqual(
        held.diffIds,
        target.layers.map((l) => l.diffId),
      );
      assert.equal(held.configDigest, configDigest(target));
      const reports = reportsFor(world.hub.events, id);
      assert.ok(
        reports.length >= 1 && reports.length <= reportsAtMost,
        `${reports.length} reports for ${id}`,
      );
      for (const report of reports) {
        assert.equal(report.properties.type, "imageReady");
        assert.equal((report.body as { digest: string }).digest, held.digest);
      }
      assert.ok((await listing(join(inbox, "done"))).includes(`${id}.bundle-${id}.dsb`));
      assert.deepEqual(await listing(join(inbox, "processing")), []);
      assert.deepEqual(await listing(join(inbox, ".deltaship", "scratch")), []);
    } finally {
      await module.stop();
    }
  }

  for (const point of POINTS) {
    it(`resumes or restarts a bundle after a crash right after "${point}"`, async () => {
      const id = `crash-${point}`;
      const crashing = startModule(world.moduleEnv(inbox, { DELTASHIP_CRASH_AFTER: point }));
      await writeFile(join(inbox, `${id}.bundle-${id}.dsb`), bundles.get(point)!);
      const ended = await crashing.exited;
      assert.deepEqual(ended, { code: null, signal: "SIGKILL" });
      assert.ok(crashing.logs.some((l) => l.step === "crash.injected" && l.after === point));
      const tagged = await world.local.digestOf("apps/telemetry", id);
      if (PUSHED.includes(point)) assert.match(tagged ?? "", /^sha256:[0-9a-f]{64}$/);
      else assert.equal(tagged, undefined, "no image under the tag before the push");
      assert.deepEqual(await listing(join(inbox, "processing")), [
        `${crashing.logs.find((l) => l.step === "bundle.claimed")!.bundleId!.replace(":", "_")}.bundle`,
      ]);
      // A report queued just before the kill may also have been sent: at-least-once.
      await recoverAndCheck(point, point === "reported" ? 2 : 1);
    });
  }

  it("recovers after being killed from outside in the middle of an apply", async () => {
    const module = startModule(world.moduleEnv(inbox));
    await writeFile(join(inbox, "crash-outside.bundle-crash-outside.dsb"), bundles.get("outside")!);
    await module.waitForLog((l) => l.step === "apply.start", "the apply to start");
    module.child.kill("SIGKILL");
    assert.deepEqual(await module.exited, { code: null, signal: "SIGKILL" });
    await recoverAndCheck("outside", 1);
  });
});
