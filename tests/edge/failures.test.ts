/**
 * Bad input ends in an `imageFailed` report with a precise reason, the bundle in `failed/` with
 * a reason file, the registry unchanged, and the module still serving the next bundle. Trusted
 * keys come from the module twin's desired properties here (see module.test.ts for the stand-in).
 */

import assert from "node:assert/strict";
import { readdir, readFile, writeFile } from "node:fs/promises";
import { createServer } from "node:net";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { parseBundle } from "../../delta/bundle/format.js";
import { readHead } from "../../edge-module/bundle-file.js";
import { makeBundle, newSigner } from "./fixtures.js";
import { type ModuleProcess, startModule } from "./module-process.js";
import { type EdgeWorld, listing, reportsFor, startWorld } from "./world.js";

async function closedPort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as { port: number };
  await new Promise<void>((resolve) => server.close(() => resolve()));
  return port;
}

function failedReport(world: EdgeWorld, bundleId: string): Record<string, unknown> | undefined {
  return reportsFor(world.hub.events, bundleId).find((e) => e.properties.type === "imageFailed")?.body as
    | Record<string, unknown>
    | undefined;
}

describe("edge module with bad input", () => {
  let world: EdgeWorld;
  let good: Buffer;
  let inventoryBefore: { image: string; digest: string }[];

  before(async () => {
    world = await startWorld();
    good = await world.updateBundle("1.1");
    inventoryBefore = await world.local.inventory();
  });
  after(async () => {
    await world?.close();
  });

  it("rejects wrong signatures, unknown keys, missing source layers, corrupted payloads and non-bundles, then keeps serving", async () => {
    const inbox = await world.newInbox("inbox-bad");
    await world.hub.setDesired({ trustedKeys: { cloud: world.signer.publicPem } });
    const module: ModuleProcess = startModule(world.moduleEnv(inbox, { DELTASHIP_TRUSTED_KEYS: "" }));
    try {
      await module.waitForLog((l) => l.step === "trust.updated", "the twin's trusted keys");

      const manifestLength = good.readUInt32BE(12);
      const badSignature = Buffer.from(good);
      badSignature[40 + manifestLength + 1 + 8 + 10]! ^= 0x01;
      const stranger = newSigner();
      const unknownKey = await makeBundle(
        world.dir,
        "stranger",
        world.images.update("1.1"),
        [world.images.base],
        stranger,
      );
      const missingSource = await makeBundle(
        world.dir,
        "foreign",
        world.images.foreignUpdate,
        [world.images.foreign],
        world.signer,
      );
      const corrupted = Buffer.from(good);
      corrupted[corrupted.length - 1]! ^= 0x01;
      const cases: [string, Uint8Array][] = [
        ["a.bundle-badsig.dsb", badSignature],
        ["b.bundle-stranger.dsb", unknownKey],
        ["c.bundle-foreign.dsb", missingSource],
        ["d.bundle-corrupt.dsb", corrupted],
        ["e.bundle-notes.dsb", Buffer.from("meeting notes, not a bundle at all: nothing to see here\n")],
      ];
      for (const [name, bytes] of cases) await writeFile(join(inbox, name), bytes);
      const ids = ["badsig", "stranger", "foreign", "corrupt", "notes"];
      await world.hub.waitForEvents(
        () => ids.every((id) => failedReport(world, id) !== undefined),
        "five imageFailed reports",
      );
      // Each report is sent just before its bundle is filed away: wait (bounded) until all five are filed.
      for (let i = 0; i < 100; i++) {
        const filed = await readdir(join(inbox, "failed")).catch(() => [] as string[]);
        if (cases.every(([name]) => filed.includes(name))) break;
        await new Promise((r) => setTimeout(r, 100));
      }

      const keyId = world.signer.key.keyId;
      const missing = (await readHead(join(inbox, "failed", "c.bundle-foreign.dsb"))).sourceLayers.filter(
        (diffId) => !world.images.base.layers.some((l) => l.diffId === diffId),
      );
      assert.equal(missing.length, 1, "the foreign base layer is the one the device lacks");
      const foreignId = (await readHead(join(inbox, "failed", "c.bundle-foreign.dsb"))).bundleId;
      const expected: Record<string, string | RegExp> = {
        badsig: `signature check failed: bundle signature at signature: the Ed25519 signature does not verify with key ${keyId}; the bundle was altered or damaged, fetch it again`,
        stranger: `signature check failed: bundle untrusted key at signature: signed by key ${stranger.key.keyId}, which is not trusted here (trusted: ${keyId}); install the cloud's public key or rebuild the bundle with it`,
        foreign: `bundle ${foreignId} needs 1 source layer(s) not in the local registry: ${missing[0]}; deploy the base image first`,
        corrupt:
          /^rebuilding the image failed: bundle payload at layers\[1\]: payload hashes to sha256:[0-9a-f]{64}, the signed manifest says sha256:[0-9a-f]{64}; the bundle was damaged in transit, fetch it again$/,
        notes: /^e\.bundle-notes\.dsb is not a bundle: bundle bad magic at byte 0: /,
      };
      const names = Object.fromEntries(cases.map(([name], i) => [ids[i]!, name]));
      for (const id of ids) {
        const report = failedReport(world, id)!;
        const reason = expected[id]!;
        if (typeof reason === "string") assert.equal(report.reason, reason, id);
        else assert.match(String(report.reason), reason, id);
        assert.equal(report.type, "imageFailed");
        // A readable bundle's failure names the image the cloud waits for; a non-bundle names none.
        const bytes = cases.find(([name]) => name === names[id])![1];
        assert.equal(
          report.digest,
          id === "notes" ? "" : parseBundle(bytes).manifest.target.manifestDigest,
          id,
        );
        assert.equal(
          await readFile(join(inbox, "failed", `${names[id]}.reason.txt`), "utf8"),
          `${report.reason}\n`,
          `${id} reason file`,
        );
      }
      assert.equal(failedReport(world, "foreign")!.image, "apps/other:1.1");
      assert.deepEqual(await world.local.inventory(), inventoryBefore, "the registry is unchanged");
      assert.deepEqual(
        (await world.local.images()).map((i) => i.repository),
        ["apps/telemetry"],
        "nothing of apps/other was pushed",
      );

      await writeFile(join(inbox, "f.bundle-good.dsb"), good);
      await world.hub.waitForEvents(
        (events) => reportsFor(events, "good").length > 0,
        "the good bundle's report",
      );
      assert.equal(reportsFor(world.hub.events, "good")[0]!.properties.type, "imageReady");
      await module.waitForLog(
        (l) => l.step === "bundle.finished" && l.outcome === "ready",
        "the good bundle filed",
      );
      assert.deepEqual(await listing(join(inbox, "done")), ["f.bundle-good.dsb"]);
      assert.deepEqual(await listing(join(inbox, "failed")), [
        "a.bundle-badsig.dsb",
        "a.bundle-badsig.dsb.reason.txt",
        "b.bundle-stranger.dsb",
        "b.bundle-stranger.dsb.reason.txt",
        "c.bundle-foreign.dsb",
        "c.bundle-foreign.dsb.reason.txt",
        "d.bundle-corrupt.dsb",
        "d.bundle-corrupt.dsb.reason.txt",
        "e.bundle-notes.dsb",
        "e.bundle-notes.dsb.reason.txt",
      ]);
    } finally {
      await module.stop();
    }
  });

  it("fails a bundle when the disk lacks room for scratch and output, before writing anything", async () => {
    const inbox = await world.newInbox("inbox-full");
    const before = await world.local.inventory();
    // The operator's reserve stands in for a full disk: the same statfs check, a threshold no disk meets.
    const module = startModule(world.moduleEnv(inbox, { DELTASHIP_DISK_RESERVE_BYTES: String(2 ** 50) }));
    try {
      await writeFile(join(inbox, "g.bundle-full.dsb"), await world.updateBundle("2.0"));
      await world.hub.waitForEvents(() => failedReport(world, "full") !== undefined, "the full-disk report");
      assert.match(
        String(failedReport(world, "full")!.reason),
        new RegExp(
          `^disk space check failed: not enough disk space on the file system of ${join(inbox, ".deltaship", "scratch")}/sha256_[0-9a-f]{64}: need \\d+ bytes \\(scratch \\d+ bytes, reserve ${2 ** 50}\\), \\d+ free; free some space and send the bundle again$`,
        ),
      );
      assert.deepEqual(await world.local.inventory(), before);
      assert.equal(await world.local.digestOf("apps/telemetry", "2.0"), undefined);
      assert.deepEqual(await listing(join(inbox, ".deltaship", "scratch")), [], "no scratch left behind");
    } finally {
      await module.stop();
    }
  });

  it("fails a bundle when the local registry does not answer", async () => {
    const inbox = await world.newInbox("inbox-noregistry");
    const port = await closedPort();
    const module = startModule(world.moduleEnv(inbox, { DELTASHIP_REGISTRY: `127.0.0.1:${port}` }));
    try {
      await writeFile(join(inbox, "h.bundle-noregistry.dsb"), await world.updateBundle("3.0"));
      await world.hub.waitForEvents(
        () => failedReport(world, "noregistry") !== undefined,
        "the registry-down report",
      );
      assert.match(
        String(failedReport(world, "noregistry")!.reason),
        new RegExp(
          `^checking source layers in the local registry failed: GET /v2/_catalog: no answer from http://127\\.0\\.0\\.1:${port} \\(.*ECONNREFUSED.*\\); check that the registry runs`,
        ),
      );
      assert.equal(await world.local.digestOf("apps/telemetry", "3.0"), undefined);
      await module.waitForLog((l) => l.step === "inventory.retry", "the start inventory to be retried");
    } finally {
      await module.stop();
    }
  });
});
