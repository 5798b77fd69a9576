// The app's entry point: every trigger registered with the bindings the host needs, and a
// registered handler working end to end from app settings. Without the Functions host,
// @azure/functions skips registrations, so this test records them by replacing the app's
// register calls before functions/index.ts loads.
import assert from "node:assert/strict";
import { generateKeyPairSync } from "node:crypto";
import { after, before, describe, it } from "node:test";
import azureFunctions, { type HttpResponseInit } from "@azure/functions";
import { StateStore } from "../../state/store.js";
import { type Azurite, startAzurite } from "../support/azurite.js";

type Registration = { kind: string; name: string; options: Record<string, unknown> };
const registrations: Registration[] = [];
const appObject = azureFunctions.app as unknown as Record<string, unknown>;
for (const kind of ["http", "serviceBusQueue", "eventHub", "generic"]) {
  appObject[kind] = (name: string, options: Record<string, unknown>) =>
    registrations.push({ kind, name, options });
}

let azurite: Azurite;

before(async () => {
  azurite = await startAzurite();
  const key = generateKeyPairSync("ed25519").privateKey.export({ type: "pkcs8", format: "pem" }).toString();
  Object.assign(process.env, {
    AzureWebJobsStorage: azurite.connectionString,
    IOTHUB_CONNECTION_STRING: "HostName=127.0.0.1;SharedAccessKeyName=registryReadWrite;SharedAccessKey=a2V5",
    COMMUNICATION_SERVICES_ENDPOINT: "https://127.0.0.1:9",
    COMMUNICATION_SERVICES_ACCESS_KEY: "a2V5",
    EMAIL_SENDER_ADDRESS: "DoNotReply@deltaship.example",
    ACR_URL: "http://127.0.0.1:9",
    BUNDLE_SIGNING_KEY: key,
    BUNDLE_SIGNING_KEY_ID: "test",
  });
  await import("../../functions/index.js");
});
after(() => azurite?.stop());

function find(name: string): Registration {
  const found = registrations.find((r) => r.name === name);
  assert.ok(
    found,
    `expected a registration named ${name}, found ${registrations.map((r) => r.name).join(", ")}`,
  );
  return found;
}

describe("functions/index.ts", () => {
  it("registers the HTTP routes with function keys", () => {
    const routes = registrations
      .filter((r) => r.kind === "http")
      .map((r) => [r.name, (r.options.methods as string[]).join(","), r.options.route, r.options.authLevel]);
    assert.deepEqual(routes, [
      ["startDeployment", "POST", "deployments", "function"],
      ["getDeployment", "GET", "deployments/{id}", "function"],
      ["listDeployments", "GET", "deployments", "function"],
      ["getDeviceImages", "GET", "devices/{id}/images", "function"],
      ["getImageDevices", "GET", "images/{digest}/devices", "function"],
      ["getTransfers", "GET", "transfers", "function"],
    ]);
    for (const name of ["startDeployment", "getDeployment"]) {
      const inputs = (find(name).options.extraInputs as { type: string }[]).map((i) => i.type);
      assert.deepEqual(inputs, ["durableClient"], name);
    }
  });

  it("registers the queue and IoT Hub triggers on the settings the infrastructure provides", () => {
    const queue = find("deploymentRequests");
    assert.equal(queue.kind, "serviceBusQueue");
    assert.deepEqual(
      [queue.options.queueName, queue.options.connection],
      ["deployment-requests", "SERVICEBUS_CONNECTION"],
    );
    const reports = find("deviceReports");
    assert.equal(reports.kind, "eventHub");
    assert.deepEqual(
      [
        reports.options.connection,
        reports.options.eventHubName,
        reports.options.consumerGroup,
        reports.options.cardinality,
      ],
      ["IOTHUB_EVENTS_CONNECTION", "%IOTHUB_EVENTS_HUB_NAME%", "%IOTHUB_EVENTS_CONSUMER_GROUP%", "many"],
    );
    assert.deepEqual(
      (reports.options.extraInputs as { type: string }[]).map((i) => i.type),
      ["durableClient"],
    );
  });

  it("registers the orchestrations and activities", () => {
    const generic = registrations.filter((r) => r.kind === "generic").map((r) => r.name);
    for (const name of [
      "deploymentSet",
      "deviceBatch",
      "resolveImages",
      "buildBundle",
      "pushManifest",
      "sendEmail",
    ]) {
      assert.ok(generic.includes(name), `expected ${name} among ${generic.join(", ")}`);
    }
  });

  it("serves a query from the app settings alone", async () => {
    const state = StateStore.fromConnectionString(azurite.connectionString);
    await state.createTables();
    await state.deviceImages.apply("vessel-01", `sha256:${"e".repeat(64)}`, {
      kind: "present",
      at: "2026-11-28T10:00:00.000Z",
    });
    const handler = find("getDeviceImages").options.handler as (
      request: unknown,
      context: unknown,
    ) => Promise<HttpResponseInit>;
    const response = await handler(
      new azureFunctions.HttpRequest({
        method: "GET",
        url: "https://deltaship.example/api/devices/vessel-01/images",
        params: { id: "vessel-01" },
      }),
      new azureFunctions.InvocationContext({ functionName: "getDeviceImages" }),
    );
    assert.equal(response.status, 200);
    assert.deepEqual(
      (response.jsonBody as { items: { device: string; state: string }[] }).items.map((r) => [
        r.device,
        r.state,
      ]),
      [["vessel-01", "present"]],
    );
  });
});
