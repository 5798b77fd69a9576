// The real azure-iothub client against a local HTTPS stand-in for IoT Hub: no Azure account is
// reachable from test machines. The stand-in checks the SAS signature and answers like IoT Hub's
// service REST API. The client ignores any port in HostName, so the stand-in listens on
// 127.0.0.1:443 (tests run as root), and the client runs in a child process that trusts the
// stand-in's CA through NODE_EXTRA_CA_CERTS.
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { fileURLToPath } from "node:url";
import {
  type HttpsStandin,
  iotHubResponder,
  makeTestCertificates,
  type RecordedRequest,
  runTrustingClient,
  startHttpsStandin,
  type TestCertificates,
} from "../support/https-standin.js";

const POLICY = "registryReadWrite";
const KEY = Buffer.from("deltaship-test-policy-key").toString("base64");
const CONNECTION_STRING = `HostName=127.0.0.1;SharedAccessKeyName=${POLICY};SharedAccessKey=${KEY}`;
const CLIENT = fileURLToPath(new URL("./iothub-client.ts", import.meta.url));

/** A fleet bigger than one query page (1,000), so the client must follow x-ms-continuation. */
const INDIAN_FLEET = Array.from({ length: 1500 }, (_, i) => `ship-${String(i).padStart(4, "0")}`);

const twins = [
  ...INDIAN_FLEET.map((deviceId) => ({ deviceId, tags: { fleet: "indian" } })),
  { deviceId: "vessel-03", tags: { fleet: "atlantic", class: "tanker" } },
  { deviceId: "vessel-01", tags: { fleet: "atlantic", class: "bulk" } },
  { deviceId: "vessel-02", tags: { fleet: "pacific", class: "bulk" } },
  { deviceId: "vessel-04", tags: { fleet: "atlantic", class: "bulk" } },
];

let tls: TestCertificates;
let hub: HttpsStandin;

const modulesContent = {
  $edgeAgent: {
    "properties.desired": { modules: { web: { settings: { image: "localhost:5000/web:2.1" } } } },
  },
  $edgeHub: { "properties.desired": { schemaVersion: "1.1" } },
};
/** One child process runs every call with the right key (a process start costs about a second). */
const calls = [
  { push: { deviceId: "vessel 01", modulesContent } },
  { query: { condition: "tags.fleet='atlantic'", limit: 10 } },
  { query: { condition: "tags.class='bulk'", limit: 2 } },
  { push: { deviceId: "ghost", modulesContent: {} } },
  { query: { condition: "tags.fleet='indian'", limit: 5000 } },
];
/** What each call returned, and the requests the calls made in order. */
let results: { ok?: unknown; error?: string; status?: number }[];
let requests: RecordedRequest[];

before(async () => {
  tls = makeTestCertificates();
  hub = await startHttpsStandin(
    tls,
    iotHubResponder({ twins, policyName: POLICY, policyKey: KEY, unknownDevices: ["ghost"] }),
    { port: 443 },
  );
  results = (await runClient(calls)) as typeof results;
  requests = [...hub.requests];
});
after(async () => {
  await hub?.close();
  tls?.dispose();
});

async function runClient(calls: unknown[], connectionString = CONNECTION_STRING): Promise<unknown[]> {
  const stdout = await runTrustingClient(CLIENT, tls, { connectionString, calls });
  return stdout
    .trim()
    .split("\n")
    .map((line) => JSON.parse(line));
}

describe("IoT Hub adapter (real azure-iothub, local stand-in)", () => {
  it("makes one request per call, two for a query of two pages", () => {
    assert.deepEqual(
      requests.map((r) => `${r.method} ${r.path}`),
      [
        "POST /devices/vessel%2001/applyConfigurationContent",
        "POST /devices/query",
        "POST /devices/query",
        "POST /devices/ghost/applyConfigurationContent",
        "POST /devices/query",
        "POST /devices/query",
      ],
    );
  });

  it("follows x-ms-continuation through a twin query of more than one page", () => {
    assert.deepEqual(results[4], { ok: INDIAN_FLEET });
    assert.equal(requests[4].headers["x-ms-continuation"], undefined);
    assert.equal(requests[5].headers["x-ms-continuation"], "1000");
    assert.deepEqual(requests[5].json, { query: "SELECT deviceId FROM devices WHERE tags.fleet='indian'" });
  });

  it("pushes modulesContent with applyConfigurationContentOnDevice", () => {
    assert.deepEqual(results[0], { ok: null });
    const request = requests[0];
    assert.equal(request.url, "/devices/vessel%2001/applyConfigurationContent?api-version=2021-04-12");
    assert.equal(request.headers["content-type"], "application/json; charset=utf-8");
    assert.match(
      request.headers.authorization,
      /^SharedAccessSignature sr=127\.0\.0\.1&sig=[^&]+&skn=registryReadWrite&se=\d+$/,
    );
    assert.deepEqual(request.json, { modulesContent });
  });

  it("turns a twin query into sorted device ids with one paged query request", () => {
    assert.deepEqual(results[1], { ok: ["vessel-01", "vessel-03", "vessel-04"] });
    const request = requests[1];
    assert.equal(request.url, "/devices/query?api-version=2021-04-12");
    assert.equal(request.headers["x-ms-max-item-count"], "1000");
    assert.deepEqual(request.json, { query: "SELECT deviceId FROM devices WHERE tags.fleet='atlantic'" });
  });

  it("refuses a twin query that matches more devices than the limit", () => {
    assert.deepEqual(results[2], {
      error:
        "twin query \"tags.class='bulk'\" matches more than 2 devices; split the deployment or narrow the query",
    });
  });

  it("says which device IoT Hub does not know and what to check", () => {
    const result = results[3];
    assert.equal(result.status, 404);
    assert.match(result.error ?? "", /^IoT Hub failed pushing the deployment manifest to device ghost: 404 /);
    assert.match(result.error ?? "", /DeviceNotFound/);
    assert.match(result.error ?? "", /check that the device is registered in this IoT hub$/);
  });

  it("reports a wrong policy key as an authorization problem", async () => {
    const wrongKey = `HostName=127.0.0.1;SharedAccessKeyName=${POLICY};SharedAccessKey=${Buffer.from("wrong").toString("base64")}`;
    const [result] = (await runClient(
      [{ push: { deviceId: "vessel-01", modulesContent: {} } }],
      wrongKey,
    )) as {
      error: string;
      status: number;
    }[];
    assert.equal(result.status, 401);
    assert.match(result.error, /check IOTHUB_CONNECTION_STRING/);
  });
});
