// The simulated satellite link copies a device's outbox (real Blob Storage in Azurite) into its
// inbox folder: byte-exact, resuming after drops, in priority order, with overtaking.
import assert from "node:assert/strict";
import { randomBytes } from "node:crypto";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { BlobServiceClient, type ContainerClient } from "@azure/storage-blob";
import { SimulatedLink } from "../../local/link.js";
import { type Azurite, startAzurite } from "../support/azurite.js";

let azurite: Azurite;
let outbox: ContainerClient;
const dirs: string[] = [];

before(async () => {
  azurite = await startAzurite();
  outbox = BlobServiceClient.fromConnectionString(azurite.connectionString).getContainerClient("outbox");
  await outbox.create();
});
after(async () => {
  await azurite.stop();
  await Promise.all(dirs.map((d) => rm(d, { recursive: true, force: true })));
});

async function inbox(): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), "deltaship-link-"));
  dirs.push(dir);
  return dir;
}

async function place(name: string, bytes: Buffer, priority?: string): Promise<void> {
  await outbox
    .getBlockBlobClient(name)
    .uploadData(bytes, { metadata: priority === undefined ? undefined : { priority } });
}

async function until(what: string, check: () => boolean): Promise<void> {
  for (let i = 0; i < 600; i++) {
    if (check()) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`gave up waiting for ${what}`);
}

describe("simulated satellite link", () => {
  test("delivers bundles byte-exact and resumes after drops", async () => {
    const dir = await inbox();
    const a = randomBytes(150_000);
    const b = randomBytes(60_000);
    await place("dev-a/one.bundle", a);
    await place("dev-a/two.bundle", b);
    // 1 Mbit/s at 50x: 150 KB takes 1.2 simulated s; a drop rate of 1/s makes drops certain.
    const link = new SimulatedLink({
      device: "dev-a",
      outbox,
      inboxDir: dir,
      bitsPerSecond: 1_000_000,
      dropsPerSecond: 1,
      downtimeMs: 200,
      latencyMs: 50,
      timeFactor: 50,
      pollMs: 20,
    });
    link.start();
    await until("two transfers", () => link.transfers.length === 2);
    await link.stop();
    assert.deepEqual(await readFile(join(dir, "one.bundle")), a);
    assert.deepEqual(await readFile(join(dir, "two.bundle")), b);
    const drops = link.transfers.reduce((n, t) => n + t.drops, 0);
    assert.ok(drops > 0, "expected the link to drop at least once");
    assert.ok(link.bytesSent >= a.length + b.length);
    assert.deepEqual(
      link.transfers.map((t) => [t.name, t.order]),
      [
        ["one.bundle", 1],
        ["two.bundle", 2],
      ],
    );
  });

  test("a critical bundle overtakes a bulk one in flight, which then resumes", async () => {
    const dir = await inbox();
    const bulk = randomBytes(400_000);
    const critical = randomBytes(20_000);
    await place("dev-b/bulk.bundle", bulk, "bulk");
    const link = new SimulatedLink({
      device: "dev-b",
      outbox,
      inboxDir: dir,
      bitsPerSecond: 800_000,
      dropsPerSecond: 0,
      latencyMs: 10,
      timeFactor: 20,
      pollMs: 20,
    });
    let bulkStarted = false;
    link.onProgress((p) => {
      if (p.name === "dev-b/bulk.bundle" && p.sent > 0) bulkStarted = true;
    });
    link.start();
    await until("the bulk bundle to start", () => bulkStarted);
    await place("dev-b/critical.bundle", critical, "critical");
    await until("both transfers", () => link.transfers.length === 2);
    await link.stop();
    assert.deepEqual(
      link.transfers.map((t) => t.name),
      ["critical.bundle", "bulk.bundle"],
    );
    assert.equal(link.transfers[1].preempted, 1);
    assert.deepEqual(await readFile(join(dir, "bulk.bundle")), bulk);
    assert.deepEqual(await readFile(join(dir, "critical.bundle")), critical);
  });
});
