// The query API against real Azurite tables, called through real @azure/functions HttpRequest objects.
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import azureFunctions, { type HttpResponseInit } from "@azure/functions";
import {
  getDeployment,
  getDeviceImages,
  getImageDevices,
  getTransfers,
  listDeployments,
  orchestrationStatusFrom,
  type QueryDeps,
} from "../../functions/query/handlers.js";
import { StateStore } from "../../state/store.js";
import { type Azurite, startAzurite } from "../support/azurite.js";
import { type DurableHost, startDurableHost } from "../support/durable-host.js";

const digest = (c: string) => `sha256:${c.repeat(64)}`;
const WEB = digest("a");
const API = digest("b");

let azurite: Azurite;
let host: DurableHost;
let state: StateStore;
let deps: QueryDeps;

function get(path: string, params: Record<string, string> = {}) {
  return new azureFunctions.HttpRequest({ method: "GET", url: `https://deltaship.example${path}`, params });
}

async function recordSet(setId: string, email: string, devices: string[]) {
  await state.sets.record({
    setId,
    requestedBy: { name: "Ana Lima", email },
    requestedAt: "2026-11-28T09:00:00.000Z",
    manifestRef: "inline",
    deadline: "2026-12-12T09:00:00.000Z",
    images: [{ module: "web", ref: "fleetacr.azurecr.io/apps/web:2.0", digest: WEB, fullBytes: 90_000 }],
    deviceCount: devices.length,
    bytesPlanned: 5000,
    fullBytes: 90_000 * devices.length,
    items: devices.map((device) => ({
      device,
      digest: WEB,
      state: "planned" as const,
      bundleId: "b1",
      waiter: setId,
    })),
  });
}

before(async () => {
  [azurite, host] = await Promise.all([startAzurite(), startDurableHost()]);
  state = StateStore.fromConnectionString(azurite.connectionString);
  await state.createTables();
  deps = { state, defaultPageSize: 2 };
  await recordSet("set-1", "ana@fleet.example", ["vessel-01", "vessel-02", "vessel-03"]);
  await recordSet("set-2", "Ana@Fleet.example", ["vessel-04"]);
  await recordSet("set-3", "bo@fleet.example", ["vessel-05"]);
  await state.sets.applyToItem("set-1", "vessel-02", WEB, {
    kind: "report",
    ok: true,
    bytes: 700,
    at: "2026-11-28T10:00:00.000Z",
  });
  await state.deviceImages.apply("vessel-01", WEB, {
    kind: "present",
    setId: "set-1",
    at: "2026-11-28T10:00:00.000Z",
  });
  await state.deviceImages.apply("vessel-01", API, {
    kind: "inTransit",
    setId: "set-9",
    bundleId: "b2",
    at: "2026-11-28T10:00:00.000Z",
  });
  await state.deviceImages.apply("vessel-02", WEB, { kind: "present", at: "2026-11-28T10:00:00.000Z" });
  const transfer = (at: string, device: string, outcome: "arrived" | "failed", bytes: number) =>
    state.transfers.record({ at, device, digest: WEB, setId: "set-1", outcome, bytes, durationMs: 1000 });
  await transfer("2026-11-27T23:59:00.000Z", "vessel-09", "arrived", 1);
  await transfer("2026-11-28T10:05:00.000Z", "vessel-01", "arrived", 700);
  await transfer("2026-11-28T10:40:00.000Z", "vessel-02", "failed", 0);
  await transfer("2026-11-28T11:10:00.000Z", "vessel-03", "arrived", 650);
  await transfer("2026-11-29T08:00:00.000Z", "vessel-04", "arrived", 640);
});
after(async () => {
  await host?.close();
  await azurite?.stop();
});

// biome-ignore lint/suspicious/noExplicitAny: the tests read JSON bodies of several shapes and assert them exactly
function body(response: HttpResponseInit): any {
  return response.jsonBody;
}

/** Follows continuation tokens to the end, returning every page's items. */
async function allPages(
  handler: (r: ReturnType<typeof get>) => Promise<HttpResponseInit>,
  path: string,
  params = {},
) {
  const pages: unknown[][] = [];
  let token: string | undefined;
  do {
    const url =
      token === undefined
        ? path
        : `${path}${path.includes("?") ? "&" : "?"}continuationToken=${encodeURIComponent(token)}`;
    const response = await handler(get(url, params));
    assert.equal(response.status, 200);
    pages.push(body(response).items);
    token = body(response).continuationToken;
  } while (token !== undefined);
  return pages;
}

describe("query API", () => {
  it("GET /api/deployments/{id} gives the set summary and its items page by page", async () => {
    const first = await getDeployment(get("/api/deployments/set-1", { id: "set-1" }), deps);
    assert.equal(first.status, 200);
    const { set } = body(first);
    assert.deepEqual(
      [set.setId, set.state, set.requestedByEmail, set.deviceCount, set.itemCount, set.images],
      [
        "set-1",
        "running",
        "ana@fleet.example",
        3,
        3,
        [{ module: "web", ref: "fleetacr.azurecr.io/apps/web:2.0", digest: WEB, fullBytes: 90_000 }],
      ],
    );
    const pages = await allPages((r) => getDeployment(r, deps), "/api/deployments/set-1", { id: "set-1" });
    assert.deepEqual(
      pages.map((p) => (p as { device: string; state: string }[]).map((i) => `${i.device}:${i.state}`)),
      [["vessel-01:planned", "vessel-02:arrived"], ["vessel-03:planned"]],
    );
  });

  it("GET /api/deployments/{id} adds the orchestration's own status, even before the set row exists", async () => {
    // The Durable extension is a local stand-in (no Functions host in tests); the client is the real one.
    const customStatus = { stage: "building", counts: { planned: 3, building: 1 } };
    for (const instanceId of ["set-1", "set-new"]) {
      host.instances.set(instanceId, {
        name: "deploymentSet",
        instanceId,
        input: null,
        runtimeStatus: "Running",
        customStatus,
        createdTime: "2026-11-28T09:00:00.000Z",
      });
    }
    const withStatus = { ...deps, orchestrationStatus: orchestrationStatusFrom(host.client()) };
    const known = await getDeployment(get("/api/deployments/set-1", { id: "set-1" }), withStatus);
    assert.deepEqual(body(known).orchestration, { runtimeStatus: "Running", customStatus });
    assert.equal(body(known).set.setId, "set-1");
    const early = await getDeployment(get("/api/deployments/set-new", { id: "set-new" }), withStatus);
    assert.deepEqual(early, {
      status: 200,
      jsonBody: { set: null, orchestration: { runtimeStatus: "Running", customStatus }, items: [] },
    });
    const unknown = await getDeployment(get("/api/deployments/nope", { id: "nope" }), withStatus);
    assert.equal(unknown.status, 404);
  });

  it("GET /api/deployments/{id} answers 404 for an unknown set", async () => {
    const response = await getDeployment(get("/api/deployments/nope", { id: "nope" }), deps);
    assert.deepEqual(response, {
      status: 404,
      jsonBody: { error: { field: "id", message: 'no deployment set "nope"' } },
    });
  });

  it("GET /api/deployments?requestedBy= lists one requester's sets, whatever the email's case", async () => {
    const pages = await allPages(
      (r) => listDeployments(r, deps),
      "/api/deployments?requestedBy=ANA%40fleet.example",
    );
    assert.deepEqual(
      pages
        .flat()
        .map((s) => (s as { setId: string }).setId)
        .sort(),
      ["set-1", "set-2"],
    );
    const missing = await listDeployments(get("/api/deployments"), deps);
    assert.deepEqual(missing, {
      status: 400,
      jsonBody: {
        error: { field: "requestedBy", message: "requestedBy is required: the requester's email address" },
      },
    });
  });

  it("GET /api/devices/{id}/images lists one device's images", async () => {
    const response = await getDeviceImages(get("/api/devices/vessel-01/images", { id: "vessel-01" }), deps);
    assert.deepEqual(
      body(response).items.map((r: { digest: string; state: string }) => [r.digest, r.state]),
      [
        [WEB, "present"],
        [API, "inTransit"],
      ],
    );
    assert.equal(body(response).continuationToken, undefined);
  });

  it("GET /api/images/{digest}/devices lists the devices of one image, and checks the digest", async () => {
    const pages = await allPages((r) => getImageDevices(r, deps), `/api/images/${WEB}/devices?pageSize=1`, {
      digest: WEB,
    });
    assert.deepEqual(
      pages.map((p) => (p as { device: string }[]).map((r) => r.device)),
      [["vessel-01"], ["vessel-02"]],
    );
    const bad = await getImageDevices(get("/api/images/latest/devices", { digest: "latest" }), deps);
    assert.deepEqual(bad, {
      status: 400,
      jsonBody: {
        error: { field: "digest", message: 'digest must be sha256:<64 lowercase hex>, found "latest"' },
      },
    });
  });

  it("GET /api/transfers?from=&to= lists transfers in the range, oldest first", async () => {
    const pages = await allPages(
      (r) => getTransfers(r, deps),
      "/api/transfers?from=2026-11-28T00:00:00Z&to=2026-11-29T00:00:00Z&pageSize=5",
    );
    assert.deepEqual(
      pages.flat().map((t) => {
        const row = t as { at: string; device: string; outcome: string; bytes: number };
        return [row.at, row.device, row.outcome, row.bytes];
      }),
      [
        ["2026-11-28T10:05:00.000Z", "vessel-01", "arrived", 700],
        ["2026-11-28T10:40:00.000Z", "vessel-02", "failed", 0],
        ["2026-11-28T11:10:00.000Z", "vessel-03", "arrived", 650],
      ],
    );
  });

  it("GET /api/transfers with interval gives the time series of arrivals, failures and bytes", async () => {
    const hourly = await getTransfers(
      get("/api/transfers?from=2026-11-28&to=2026-11-30&interval=hour"),
      deps,
    );
    assert.deepEqual(body(hourly), {
      from: "2026-11-28T00:00:00.000Z",
      to: "2026-11-30T00:00:00.000Z",
      interval: "hour",
      series: [
        { start: "2026-11-28T10:00:00.000Z", arrived: 1, failed: 1, bytes: 700 },
        { start: "2026-11-28T11:00:00.000Z", arrived: 1, failed: 0, bytes: 650 },
        { start: "2026-11-29T08:00:00.000Z", arrived: 1, failed: 0, bytes: 640 },
      ],
    });
    const daily = await getTransfers(get("/api/transfers?from=2026-11-27&to=2026-11-30&interval=day"), deps);
    assert.deepEqual(body(daily).series, [
      { start: "2026-11-27T00:00:00.000Z", arrived: 1, failed: 0, bytes: 1 },
      { start: "2026-11-28T00:00:00.000Z", arrived: 2, failed: 1, bytes: 1350 },
      { start: "2026-11-29T00:00:00.000Z", arrived: 1, failed: 0, bytes: 640 },
    ]);
  });

  it("rejects bad query parameters with a message naming the parameter", async () => {
    const cases: [string, string, string][] = [
      [
        "/api/transfers?to=2026-11-29T00:00:00Z",
        "from",
        'from must be an ISO 8601 date or time with a time zone (2026-11-28 or 2026-11-28T10:00:00Z), found ""',
      ],
      [
        "/api/transfers?from=2026-11-28T10:00:00&to=2026-11-29T00:00:00Z",
        "from",
        'from must be an ISO 8601 date or time with a time zone (2026-11-28 or 2026-11-28T10:00:00Z), found "2026-11-28T10:00:00"',
      ],
      [
        "/api/transfers?from=2026-11-29&to=2026-11-28",
        "to",
        "to (2026-11-28T00:00:00.000Z) must be after from (2026-11-29T00:00:00.000Z)",
      ],
      ["/api/transfers?from=2026-01-01&to=2026-11-28", "to", "from and to may be at most 92 days apart"],
      [
        "/api/transfers?from=2026-11-28&to=2026-11-29&interval=minute",
        "interval",
        'interval must be hour or day, found "minute"',
      ],
      [
        "/api/transfers?from=2026-11-28&to=2026-11-29&pageSize=0",
        "pageSize",
        'pageSize must be a whole number from 1 to 1000, found "0"',
      ],
      [
        "/api/transfers?from=2026-11-28&to=2026-11-29&pageSize=abc",
        "pageSize",
        'pageSize must be a whole number from 1 to 1000, found "abc"',
      ],
    ];
    for (const [url, field, message] of cases) {
      const response = await getTransfers(get(url), deps);
      assert.deepEqual(response, { status: 400, jsonBody: { error: { field, message } } }, url);
    }
  });

  it("answers 400 for a set or device id that cannot exist", async () => {
    const set = await getDeployment(get("/api/deployments/x", { id: "a/b" }), deps);
    assert.deepEqual(set, {
      status: 400,
      jsonBody: {
        error: {
          field: "id",
          message: `id must be a deployment set id (letters, digits, '.', '_', '-'), found "a/b"`,
        },
      },
    });
    const device = await getDeviceImages(get("/api/devices/x/images", { id: "d".repeat(129) }), deps);
    assert.equal(device.status, 400);
    assert.equal((device.jsonBody as { error: { field: string } }).error.field, "id");
  });

  it("answers 400 for a continuation token storage did not issue", async () => {
    const response = await getDeviceImages(
      get("/api/devices/vessel-01/images?continuationToken=not-a-token", { id: "vessel-01" }),
      deps,
    );
    assert.equal(response.status, 400);
    assert.equal(body(response).error.field, "continuationToken");
  });
});
