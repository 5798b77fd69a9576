// The pushManifest activity with the real azure-iothub client against the local HTTPS stand-in
// for IoT Hub (port 443: the client ignores ports in HostName; the client runs in a child
// process that trusts the stand-in's CA through NODE_EXTRA_CA_CERTS).
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { fileURLToPath } from "node:url";
import type { PushManifestInput } from "../../activities/names.js";
import {
  type HttpsStandin,
  iotHubResponder,
  makeTestCertificates,
  runTrustingClient,
  startHttpsStandin,
  type TestCertificates,
} from "../support/https-standin.js";

const POLICY = "registryReadWrite";
const KEY = Buffer.from("deltaship-push-key").toString("base64");
const CONNECTION_STRING = `HostName=127.0.0.1;SharedAccessKeyName=${POLICY};SharedAccessKey=${KEY}`;
const CLIENT = fileURLToPath(new URL("./push-client.ts", import.meta.url));

let tls: TestCertificates;
let hub: HttpsStandin;

before(async () => {
  tls = makeTestCertificates();
  hub = await startHttpsStandin(
    tls,
    iotHubResponder({ twins: [], policyName: POLICY, policyKey: KEY, unknownDevices: ["ghost"] }),
    { port: 443 },
  );
});
after(async () => {
  await hub?.close();
  tls?.dispose();
});

async function push(input: PushManifestInput): Promise<{ ok?: unknown; error?: string }> {
  const stdout = await runTrustingClient(CLIENT, tls, { connectionString: CONNECTION_STRING, input });
  return JSON.parse(stdout.trim().split("\n").at(-1)!);
}

const manifest = {
  modulesContent: {
    $edgeAgent: {
      "properties.desired": {
        modules: { telemetry: { settings: { image: "acr.azurecr.io/apps/telemetry:2.0" } } },
      },
    },
    $edgeHub: { "properties.desired": { routes: { up: "FROM /messages/* INTO $upstream" } } },
  },
};

describe("pushManifest (real azure-iothub, local stand-in)", () => {
  test("applies the rewritten manifest to every device of the batch", async () => {
    hub.requests.length = 0;
    const result = await push({
      setId: "s",
      devices: ["vessel-1", "vessel-2"],
      manifest,
      localRegistry: "localhost:5000",
    });
    assert.deepEqual(result, { ok: { pushed: 2 } });
    assert.deepEqual(
      hub.requests.map((r) => `${r.method} ${r.path}`),
      [
        "POST /devices/vessel-1/applyConfigurationContent",
        "POST /devices/vessel-2/applyConfigurationContent",
      ],
    );
    const body = hub.requests[0]!.json as { modulesContent: typeof manifest.modulesContent };
    assert.equal(
      body.modulesContent.$edgeAgent["properties.desired"].modules.telemetry.settings.image,
      "localhost:5000/apps/telemetry:2.0",
    );
    assert.deepEqual(body.modulesContent.$edgeHub, manifest.modulesContent.$edgeHub);
  });

  test("fails with the device IoT Hub does not know, so the orchestration's retry and failure path run", async () => {
    const result = await push({ setId: "s", devices: ["ghost"], manifest, localRegistry: "localhost:5000" });
    assert.match(result.error ?? "", /^IoT Hub failed pushing the deployment manifest to device ghost: 404 /);
  });
});
