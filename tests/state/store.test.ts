import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import {
  BlobStore,
  bundleBlobName,
  digestPath,
  indexBlobName,
  outboxBlobName,
  sourceSetHash,
} from "../../state/blobs.js";
import { escapeKey, itemRowKey, unescapeKey } from "../../state/keys.js";
import { StateStore } from "../../state/store.js";
import { type Azurite, startAzurite } from "../support/azurite.js";

const DIGEST_A = `sha256:${"a".repeat(64)}`;
const DIGEST_B = `sha256:${"b".repeat(64)}`;
const AT = "2026-11-28T10:00:00.000Z";

let azurite: Azurite;
let store: StateStore;

before(async () => {
  azurite = await startAzurite();
  store = StateStore.fromConnectionString(azurite.connectionString);
  await store.createTables();
  await store.createTables(); // a second call finds the tables and changes nothing
});
after(() => azurite?.stop());

function newSet(setId: string, devices: string[], digests: string[]) {
  return {
    setId,
    requestedBy: { name: "Ada", email: "Ada@Example.com" },
    requestedAt: AT,
    manifestRef: "inline",
    deadline: "2026-12-12T10:00:00.000Z",
    images: digests.map((digest, i) => ({ module: `m${i}`, ref: `acr.io/m${i}:1`, digest, fullBytes: 1000 })),
    deviceCount: devices.length,
    bytesPlanned: 10,
    fullBytes: 1000,
    items: devices.flatMap((device) =>
      digests.map((digest) => ({
        device,
        digest,
        state: "planned" as const,
        bundleId: `bundle-${digest.slice(7, 11)}`,
        waiter: `${setId}:batch:0`,
      })),
    ),
  };
}

describe("table keys", () => {
  test("escape the characters Table Storage forbids and round-trip", () => {
    const id = "dev/1\\x#y?z%w\u0001";
    assert.equal(escapeKey(id), "dev%2F1%5Cx%23y%3Fz%25w%01");
    assert.equal(unescapeKey(escapeKey(id)), id);
    assert.equal(itemRowKey("a:b", DIGEST_A), `item:a%3Ab:${DIGEST_A}`);
  });

  test("reject a key longer than Table Storage allows", () => {
    assert.throws(() => escapeKey("x".repeat(1025)), /at most 1024 characters once escaped, found 1025/);
  });

  test("a device id with forbidden characters is stored and read back", async () => {
    const device = "ship/7#deck?2\\aft%";
    await store.deviceImages.apply(device, DIGEST_A, { kind: "present", at: AT });
    const page = await store.deviceImages.listByDevice(device);
    assert.deepEqual(
      page.items.map((row) => [row.device, row.digest, row.state]),
      [[device, DIGEST_A, "present"]],
    );
    const reverse = await store.deviceImages.listByImage(DIGEST_A);
    assert.deepEqual(
      reverse.items.map((row) => row.device),
      [device],
    );
  });
});

describe("deviceImages", () => {
  test("present is never overwritten by inTransit, in either order", async () => {
    await store.deviceImages.apply("d-order1", DIGEST_A, { kind: "present", at: AT });
    const late = await store.deviceImages.apply("d-order1", DIGEST_A, {
      kind: "inTransit",
      setId: "s1",
      bundleId: "b1",
      at: AT,
    });
    assert.equal(late.changed, false);
    assert.equal((await store.deviceImages.get("d-order1", DIGEST_A))?.state, "present");

    await store.deviceImages.apply("d-order2", DIGEST_A, {
      kind: "inTransit",
      setId: "s1",
      bundleId: "b1",
      at: AT,
    });
    await store.deviceImages.apply("d-order2", DIGEST_A, { kind: "present", setId: "s1", at: AT });
    const row = await store.deviceImages.get("d-order2", DIGEST_A);
    assert.equal(row?.state, "present");
    assert.equal(row?.setId, "s1");
    assert.equal(row?.bundleId, "b1");
  });

  test("a report racing the orchestration's mark in transit always ends present in both views", async () => {
    for (let round = 0; round < 6; round++) {
      const device = `race-${round}`;
      const writes = [
        store.deviceImages.apply(device, DIGEST_B, { kind: "inTransit", setId: "s", bundleId: "b", at: AT }),
        store.deviceImages.apply(device, DIGEST_B, { kind: "present", setId: "s", at: AT }),
        store.deviceImages.apply(device, DIGEST_B, { kind: "inTransit", setId: "s", bundleId: "b", at: AT }),
      ];
      if (round % 2 === 1) writes.reverse();
      await Promise.all(writes);
      assert.equal((await store.deviceImages.get(device, DIGEST_B))?.state, "present", `device ${device}`);
    }
    const reverse = await store.deviceImages.listByImage(DIGEST_B, { pageSize: 1000 });
    const races = reverse.items.filter((row) => row.device.startsWith("race-"));
    assert.equal(races.length, 6);
    assert.deepEqual(new Set(races.map((row) => row.state)), new Set(["present"]));
  });

  test("a failure does not hide an image the device has", async () => {
    await store.deviceImages.apply("d-fail", DIGEST_A, { kind: "present", at: AT });
    await store.deviceImages.apply("d-fail", DIGEST_A, { kind: "failed", reason: "disk full", at: AT });
    assert.equal((await store.deviceImages.get("d-fail", DIGEST_A))?.state, "present");
  });

  test("inventory heals: listed images become present, unlisted present images go", async () => {
    await store.deviceImages.apply("d-heal", DIGEST_A, { kind: "present", at: AT });
    await store.deviceImages.apply("d-heal", DIGEST_B, {
      kind: "inTransit",
      setId: "s",
      bundleId: "b",
      at: AT,
    });
    await store.deviceImages.healInventory("d-heal", [DIGEST_B], AT);
    const rows = (await store.deviceImages.listByDevice("d-heal")).items;
    assert.deepEqual(
      rows.map((row) => [row.digest, row.state]),
      [[DIGEST_B, "present"]],
    );
    const reverseA = (await store.deviceImages.listByImage(DIGEST_A, { pageSize: 1000 })).items;
    assert.equal(
      reverseA.some((row) => row.device === "d-heal"),
      false,
    );
    const present = await store.deviceImages.presentImages(["d-heal", "d-none"]);
    assert.deepEqual([...present.entries()].sort(), [
      ["d-heal", [DIGEST_B]],
      ["d-none", []],
    ]);
  });
});

describe("deploymentSets", () => {
  test("records a set of 250 items in batches and pages through them", async () => {
    const devices = Array.from({ length: 125 }, (_, i) => `dev-${String(i).padStart(3, "0")}`);
    await store.sets.record(newSet("set-paging", devices, [DIGEST_A, DIGEST_B]));
    const set = await store.sets.getSet("set-paging");
    assert.equal(set?.state, "running");
    assert.equal(set?.itemCount, 250);
    assert.equal(set?.requestedByEmail, "ada@example.com");
    const seen: string[] = [];
    let token: string | undefined;
    let pages = 0;
    do {
      const page = await store.sets.listItems("set-paging", { pageSize: 100, continuationToken: token });
      seen.push(...page.items.map((item) => `${item.device} ${item.digest.slice(7, 8)}`));
      token = page.continuationToken;
      pages++;
    } while (token);
    assert.equal(pages, 3);
    assert.equal(new Set(seen).size, 250);
    assert.equal(seen[0], "dev-000 a");
  });

  test("recording a set again keeps what reports already changed", async () => {
    const set = newSet("set-again", ["d1", "d2"], [DIGEST_A]);
    await store.sets.record(set);
    const { item } = await store.recordImageReport({
      device: "d1",
      digest: DIGEST_A,
      setId: "set-again",
      ok: true,
      bytes: 42,
      at: AT,
    });
    assert.equal(item?.state, "arrived");
    assert.equal(item?.waiter, "set-again:batch:0");
    await store.sets.record(set);
    assert.equal((await store.sets.getItem("set-again", "d1", DIGEST_A))?.state, "arrived");
    assert.equal((await store.sets.getItem("set-again", "d2", DIGEST_A))?.state, "planned");
  });

  test("item states: in transit only from planned, the first final report wins, timeouts only while waiting", async () => {
    await store.sets.record(newSet("set-items", ["d1", "d2"], [DIGEST_A]));
    assert.equal(
      (await store.sets.applyToItem("set-items", "d1", DIGEST_A, { kind: "inTransit", at: AT })).changed,
      true,
    );
    await store.sets.applyToItem("set-items", "d1", DIGEST_A, {
      kind: "report",
      ok: false,
      reason: "bad sig",
      at: AT,
    });
    const again = await store.sets.applyToItem("set-items", "d1", DIGEST_A, {
      kind: "report",
      ok: true,
      at: AT,
    });
    assert.equal(again.changed, false);
    assert.equal(again.row?.state, "failed");
    assert.equal(again.row?.reason, "bad sig");
    await store.sets.applyToItem("set-items", "d1", DIGEST_A, { kind: "inTransit", at: AT });
    assert.equal((await store.sets.getItem("set-items", "d1", DIGEST_A))?.state, "failed");
    await store.sets.applyToItem("set-items", "d2", DIGEST_A, { kind: "timedOut", at: AT });
    const late = await store.sets.applyToItem("set-items", "d2", DIGEST_A, {
      kind: "report",
      ok: true,
      at: AT,
    });
    assert.equal(late.row?.state, "arrived");
    const unknown = await store.sets.applyToItem("set-items", "nobody", DIGEST_A, {
      kind: "inTransit",
      at: AT,
    });
    assert.deepEqual(unknown, { row: undefined, changed: false });
  });

  test("a finished set never changes state again", async () => {
    await store.sets.record(newSet("set-final", ["d1"], [DIGEST_A]));
    assert.equal((await store.sets.setState("set-final", "failed", AT, "timeout"))?.state, "failed");
    assert.equal((await store.sets.setState("set-final", "succeeded", AT))?.state, "failed");
    assert.equal((await store.sets.getSet("set-final"))?.reason, "timeout");
    assert.equal(await store.sets.setState("no-such-set", "failed", AT), undefined);
  });

  test("lists sets by requester, case-insensitively", async () => {
    const page = await store.sets.listByRequester("ADA@example.COM", { pageSize: 2 });
    assert.equal(page.items.length, 2);
    assert.ok(page.continuationToken);
    const all: string[] = [];
    let token: string | undefined;
    do {
      const next = await store.sets.listByRequester("ada@example.com", {
        pageSize: 2,
        continuationToken: token,
      });
      all.push(...next.items.map((set) => set.setId));
      token = next.continuationToken;
    } while (token);
    assert.deepEqual(all.sort(), ["set-again", "set-final", "set-items", "set-paging"]);
    assert.deepEqual((await store.sets.listByRequester("nobody@example.com")).items, []);
  });
});

describe("reports and transfers", () => {
  test("the same report twice writes one transfer and changes nothing the second time", async () => {
    const report = { device: "t1", digest: DIGEST_A, ok: true, bytes: 1234, durationMs: 5000, at: AT };
    await store.recordImageReport(report);
    await store.recordImageReport(report);
    const page = await store.transfers.list("2026-11-28T00:00:00Z", "2026-11-29T00:00:00Z");
    const mine = page.items.filter((row) => row.device === "t1");
    assert.equal(mine.length, 1);
    assert.equal(mine[0]!.outcome, "arrived");
    assert.equal(mine[0]!.bytes, 1234);
    assert.equal((await store.deviceImages.get("t1", DIGEST_A))?.state, "present");
  });

  test("lists transfers by time range across days, oldest first, paged", async () => {
    const times = [
      "2026-11-01T23:59:59.000Z",
      "2026-11-02T00:00:00.000Z",
      "2026-11-02T12:00:00.000Z",
      "2026-11-03T00:00:00.000Z",
    ];
    for (const [i, at] of times.entries()) {
      await store.transfers.record({
        at,
        device: `r${i}`,
        digest: DIGEST_B,
        outcome: i === 2 ? "failed" : "arrived",
        bytes: i,
      });
    }
    const first = await store.transfers.list("2026-11-01T23:59:59Z", "2026-11-03T00:00:00Z", { pageSize: 2 });
    const rest = first.continuationToken
      ? await store.transfers.list("2026-11-01T23:59:59Z", "2026-11-03T00:00:00Z", {
          pageSize: 2,
          continuationToken: first.continuationToken,
        })
      : { items: [] };
    assert.deepEqual(
      [...first.items, ...rest.items].map((row) => [row.at, row.outcome]),
      [
        [times[0], "arrived"],
        [times[1], "arrived"],
        [times[2], "failed"],
      ],
    );
    assert.throws(
      () => store.transfers.list("yesterday", AT),
      /expected an ISO 8601 time, found "yesterday"/,
    );
  });

  test("rejects a page size outside 1..1000", async () => {
    await assert.rejects(
      store.deviceImages.listByDevice("x", { pageSize: 0 }),
      /page size from 1 to 1000, found 0/,
    );
  });
});

describe("blobs", () => {
  test("names bundles by target and ordered source layers, and outboxes by device", () => {
    const layers = ["sha256:l1", "sha256:l2"];
    assert.equal(
      bundleBlobName(DIGEST_A, layers),
      `sha256-${"a".repeat(64)}/${sourceSetHash(layers)}.bundle`,
    );
    assert.notEqual(sourceSetHash(layers), sourceSetHash([...layers].reverse()));
    // Two devices with the same delta source but different layers already present get different bundles.
    assert.notEqual(bundleBlobName(DIGEST_A, [], ["sha256:l1"]), bundleBlobName(DIGEST_A, []));
    assert.notEqual(sourceSetHash(layers, ["sha256:l3"]), sourceSetHash(layers, ["sha256:l4"]));
    assert.equal(outboxBlobName("ship-1", "sha256-ab/cd.bundle"), "ship-1/sha256-ab-cd.bundle");
    assert.equal(indexBlobName(DIGEST_B), `sha256-${"b".repeat(64)}.json`);
    assert.throws(
      () => digestPath("sha256:xyz"),
      /expected a digest like sha256:<64 hex>, found "sha256:xyz"/,
    );
  });

  test("writes and reads indexes and named manifests, and says which blob is missing or not JSON", async () => {
    const blobs = BlobStore.fromConnectionString(azurite.connectionString);
    await blobs.createContainers();
    await blobs.createContainers();
    assert.equal(await blobs.hasIndex(DIGEST_A), false);
    await blobs.writeIndex(DIGEST_A, { version: 1, layers: [] });
    assert.equal(await blobs.hasIndex(DIGEST_A), true);
    assert.deepEqual(await blobs.readIndex(DIGEST_A), { version: 1, layers: [] });
    await blobs.manifests.getBlockBlobClient("fleet/atlantic.json").upload('{"modulesContent":{}}', 21);
    assert.deepEqual(await blobs.readManifest("fleet/atlantic.json"), { modulesContent: {} });
    await assert.rejects(
      blobs.readManifest("nope.json"),
      /expected deployment manifest manifests\/nope.json, found no such blob; upload it first/,
    );
    await blobs.manifests.getBlockBlobClient("broken.json").upload("{", 1);
    await assert.rejects(
      blobs.readManifest("broken.json"),
      /expected deployment manifest manifests\/broken.json to be JSON/,
    );
    assert.equal(await blobs.bundleSize("sha256-none/none.bundle"), undefined);
  });
});
