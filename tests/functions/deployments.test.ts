// POST /api/deployments and the deployment-requests queue, through the real durable-functions
// DurableClient. Without a Functions host there is no Durable extension to answer the client, so
// tests/support/durable-host.ts stands in for the extension's HTTP API and records what the
// client asked for. Named manifests come from a real Azurite blob container. The twin query
// is answered by a small function standing in for IoT Hub (the adapter itself is tested against
// the IoT Hub stand-in in tests/adapters/iothub.test.ts).
import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import azureFunctions, { type HttpResponse, type HttpResponseInit } from "@azure/functions";
import { BlobServiceClient, type ContainerClient } from "@azure/storage-blob";
import { TooManyDevicesError } from "../../adapters/iothub.js";
import {
  type DeploymentHttpDeps,
  postDeployment,
  SET_STARTED_HEADER,
} from "../../functions/deployments/http.js";
import { readManifestBlob } from "../../functions/deployments/manifests.js";
import { DeadLetterError, receiveDeploymentMessage } from "../../functions/deployments/queue.js";
import { MAX_DEVICES_PER_SET } from "../../functions/deployments/request.js";
import type { DeploymentStartInput } from "../../functions/deployments/start.js";
import { type Azurite, startAzurite } from "../support/azurite.js";
import { type DurableHost, SYSTEM_KEY, startDurableHost, TASK_HUB } from "../support/durable-host.js";
import { recordingContexts } from "../support/invocation.js";

/** A deployment template placeholder, built so the linter does not read it as a mistaken template literal. */
const PLACEHOLDER = "$" + "{MODULES.web}";
const PLACEHOLDER_NOTE = "holds a $" + "{…} placeholder";

const NOW = new Date("2026-11-28T09:00:00.000Z");
const DAY = 86_400_000;

const manifest = {
  modulesContent: {
    $edgeAgent: {
      "properties.desired": {
        schemaVersion: "1.1",
        modules: {
          telemetry: { type: "docker", settings: { image: "fleetacr.azurecr.io/apps/telemetry:1.4.2" } },
          web: { type: "docker", settings: { image: "fleetacr.azurecr.io/apps/web:2.0.0" } },
        },
      },
    },
    $edgeHub: { "properties.desired": { schemaVersion: "1.1", routes: {} } },
  },
};
const requester = { name: "Ana Lima", email: "ana@fleet.example" };
const fleet: Record<string, string[]> = {
  "tags.fleet='atlantic'": ["vessel-01", "vessel-03"],
  "tags.origin='from-yard' AND tags.fleet='atlantic'": ["vessel-03"],
};

let azurite: Azurite;
let host: DurableHost;
let manifests: ContainerClient;

before(async () => {
  [azurite, host] = await Promise.all([startAzurite(), startDurableHost()]);
  manifests = BlobServiceClient.fromConnectionString(azurite.connectionString).getContainerClient(
    "manifests",
  );
  await manifests.create();
  const upload = (name: string, text: string) =>
    manifests.getBlockBlobClient(name).upload(text, Buffer.byteLength(text));
  await upload("atlantic/summer.json", JSON.stringify(manifest));
  await upload("broken.json", "{ not json");
  await upload(
    "template.json",
    JSON.stringify({
      modulesContent: {
        ...manifest.modulesContent,
        $edgeAgent: {
          "properties.desired": { modules: { web: { settings: { image: PLACEHOLDER } } } },
        },
      },
    }),
  );
});
after(async () => {
  await host?.close();
  await azurite?.stop();
});

function deps(overrides: Partial<Omit<DeploymentHttpDeps, "durable">> = {}): DeploymentHttpDeps {
  let n = 0;
  return {
    durable: host.client(),
    readManifest: (name: string) => readManifestBlob(manifests, name),
    queryDevices: async (condition: string, limit: number) => {
      const devices = fleet[condition] ?? [];
      if (devices.length > limit)
        throw new TooManyDevicesError(`matches more than ${limit} devices`, undefined);
      return devices;
    },
    settings: { defaultDeadlineMs: 14 * DAY, deviceBatchSize: 100, localRegistryAddress: "localhost:5000" },
    now: () => NOW,
    newSetId: () => `generated-${++n}`,
    ...overrides,
  };
}

/** Log lines the handlers wrote, as `level: message`. */
const logs: string[] = [];

const context = recordingContexts("test", logs);

async function post(
  body: unknown,
  overrides: Partial<Omit<DeploymentHttpDeps, "durable">> = {},
): Promise<HttpResponse | HttpResponseInit> {
  const request = new azureFunctions.HttpRequest({
    method: "POST",
    url: "https://deltaship.example/api/deployments",
    body: { string: typeof body === "string" ? body : JSON.stringify(body) },
    headers: { "content-type": "application/json" },
  });
  return postDeployment(request, context(), deps(overrides));
}

async function jsonOf(response: HttpResponse | HttpResponseInit): Promise<unknown> {
  return "json" in response && typeof response.json === "function"
    ? response.json()
    : (response as HttpResponseInit).jsonBody;
}

const valid = { manifest, devices: ["vessel-01"], requestedBy: requester };

describe("POST /api/deployments rejects bad requests with a message naming the field", () => {
  const cases: [string, unknown, string, string][] = [
    ["body not JSON", "{", "body", "request body must be JSON: "],
    ["body an array", [], "body", "body must be a JSON object, found a list of 0"],
    ["no requester", { manifest, devices: ["d"] }, "requestedBy", "requestedBy is required"],
    [
      "requester without email",
      { ...valid, requestedBy: { name: "Ana" } },
      "requestedBy.email",
      "requestedBy.email is required",
    ],
    [
      "malformed email",
      { ...valid, requestedBy: { name: "Ana", email: "ana-at-fleet" } },
      "requestedBy.email",
      'requestedBy.email must be an email address, found "ana-at-fleet"',
    ],
    [
      "unknown field",
      { ...valid, prio: "high" },
      "prio",
      "prio is not a known field; expected only id, manifest, manifestName, devices, twinQuery, requestedBy, deadline, priority",
    ],
    [
      "neither manifest nor name",
      { devices: ["d"], requestedBy: requester },
      "manifest|manifestName",
      "manifest or manifestName is required (exactly one)",
    ],
    [
      "both manifest and name",
      { ...valid, manifestName: "a.json" },
      "manifest|manifestName",
      "give either manifest or manifestName, not both",
    ],
    [
      "neither devices nor query",
      { manifest, requestedBy: requester },
      "devices|twinQuery",
      "devices or twinQuery is required (exactly one)",
    ],
    [
      "manifest without modulesContent",
      { ...valid, manifest: { modules: {} } },
      "manifest.modulesContent",
      "manifest.modulesContent is required",
    ],
    [
      "module without an image",
      {
        ...valid,
        manifest: {
          modulesContent: {
            $edgeHub: {},
            $edgeAgent: { "properties.desired": { modules: { web: { settings: {} } } } },
          },
        },
      },
      "manifest.modulesContent.$edgeAgent.properties.desired.modules.web.settings.image",
      "manifest.modulesContent.$edgeAgent.properties.desired.modules.web.settings.image is required",
    ],
    [
      "template placeholder",
      {
        ...valid,
        manifest: {
          modulesContent: {
            $edgeHub: {},
            $edgeAgent: {
              "properties.desired": { modules: { web: { settings: { image: PLACEHOLDER } } } },
            },
          },
        },
      },
      "manifest.modulesContent.$edgeAgent.properties.desired.modules.web.settings.image",
      "manifest.modulesContent.$edgeAgent.properties.desired.modules.web.settings.image " +
        PLACEHOLDER_NOTE +
        "; expand the deployment template (iotedgedev genconfig) before deploying",
    ],
    [
      "empty device list",
      { ...valid, devices: [] },
      "devices",
      "devices must be a list of 1 to 10000 device ids, found a list of 0",
    ],
    [
      "bad device id",
      { ...valid, devices: ["vessel-01", "bad/id"] },
      "devices[1]",
      `devices[1] must be an IoT Hub device id (1-128 letters, digits or - . % _ * ? ! ( ) , : = @ $ '), found "bad/id"`,
    ],
    ["repeated device", { ...valid, devices: ["a", "b", "a"] }, "devices[2]", "devices[2] repeats device a"],
    [
      "too many devices",
      { ...valid, devices: Array.from({ length: MAX_DEVICES_PER_SET + 1 }, (_, i) => `d${i}`) },
      "devices",
      "devices must be a list of 1 to 10000 device ids, found a list of 10001",
    ],
    [
      "full SQL as twin query",
      { manifest, twinQuery: "SELECT * FROM devices", requestedBy: requester },
      "twinQuery",
      `twinQuery must be only the condition after WHERE, such as tags.fleet='atlantic', found "SELECT * FROM devices"`,
    ],
    [
      "twin query matching nothing",
      { manifest, twinQuery: "tags.fleet='arctic'", requestedBy: requester },
      "twinQuery",
      `twinQuery "tags.fleet='arctic'" matches no device in IoT Hub`,
    ],
    [
      "bad deadline",
      { ...valid, deadline: "two weeks" },
      "deadline",
      'deadline must be an ISO 8601 duration (P14D) or timestamp with a time zone (2026-12-01T00:00:00Z), found "two weeks"',
    ],
    [
      "deadline with months",
      { ...valid, deadline: "P1M" },
      "deadline",
      'deadline must be an ISO 8601 duration (P14D) or timestamp with a time zone (2026-12-01T00:00:00Z), found "P1M"',
    ],
    [
      "deadline without time zone",
      { ...valid, deadline: "2026-12-01T00:00:00" },
      "deadline",
      'deadline must be an ISO 8601 duration (P14D) or timestamp with a time zone (2026-12-01T00:00:00Z), found "2026-12-01T00:00:00"',
    ],
    [
      "deadline in the past",
      { ...valid, deadline: "2026-11-01T00:00:00Z" },
      "deadline",
      'deadline must be between 1 minute and 90 days away, found "2026-11-01T00:00:00Z"',
    ],
    [
      "deadline too far",
      { ...valid, deadline: "P91D" },
      "deadline",
      'deadline must be between 1 minute and 90 days away, found "P91D"',
    ],
    [
      "unknown priority",
      { ...valid, priority: "urgent" },
      "priority",
      'priority must be one of critical, high, normal, bulk, found "urgent"',
    ],
    [
      "id with a slash",
      { ...valid, id: "sets/1" },
      "id",
      `id must be 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit, found "sets/1"`,
    ],
    [
      "missing named manifest",
      { manifestName: "nope.json", devices: ["d"], requestedBy: requester },
      "manifestName",
      'manifestName names no blob: "nope.json" is not in the manifests container; upload it or send the manifest inline',
    ],
    [
      "named manifest not JSON",
      { manifestName: "broken.json", devices: ["d"], requestedBy: requester },
      "manifestName",
      "manifest blob broken.json is not JSON (",
    ],
    [
      "named manifest still a template",
      { manifestName: "template.json", devices: ["d"], requestedBy: requester },
      "manifestName(template.json).modulesContent.$edgeAgent.properties.desired.modules.web.settings.image",
      "manifestName(template.json).modulesContent.$edgeAgent.properties.desired.modules.web.settings.image " +
        PLACEHOLDER_NOTE,
    ],
  ];
  for (const [name, body, field, message] of cases) {
    it(name, async () => {
      const started = host.instances.size;
      const response = await post(body);
      assert.equal(response.status, 400);
      const { error } = (await jsonOf(response)) as { error: { field: string; message: string } };
      assert.equal(error.field, field);
      if (message.endsWith(" ") || message.endsWith("(") || message.endsWith("placeholder")) {
        assert.ok(
          error.message.startsWith(message),
          `expected "${error.message}" to start with "${message}"`,
        );
      } else {
        assert.equal(error.message, message);
      }
      assert.equal(host.instances.size, started, "a rejected request starts nothing");
    });
  }

  it("refuses a body over the size limit before reading it", async () => {
    const request = new azureFunctions.HttpRequest({
      method: "POST",
      url: "https://deltaship.example/api/deployments",
      body: { string: "{}" },
      headers: { "content-length": String(2 * 1024 * 1024) },
    });
    const response = await postDeployment(request, context(), deps());
    assert.equal(response.status, 400);
    assert.deepEqual(await jsonOf(response), {
      error: { field: "body", message: "request body must be at most 1048576 bytes, found 2097152" },
    });
  });
});

describe("POST /api/deployments starts the deployment set", () => {
  it("answers 202 with the Durable check-status payload and starts deploymentSet with the resolved input", async () => {
    const response = (await post({
      ...valid,
      id: "summer-1",
      devices: ["vessel-01", "vessel-02"],
    })) as HttpResponse;
    assert.equal(response.status, 202);
    assert.equal(response.headers.get(SET_STARTED_HEADER), "true");
    const instance = "https://deltaship.example/runtime/webhooks/durabletask/instances/summer-1";
    const query = `taskHub=${TASK_HUB}&connection=Storage&code=${SYSTEM_KEY}`;
    assert.equal(response.headers.get("location"), `${instance}?${query}`);
    assert.deepEqual(await response.json(), {
      id: "summer-1",
      statusQueryGetUri: `${instance}?${query}`,
      sendEventPostUri: `${instance}/raiseEvent/{eventName}?${query}`,
      terminatePostUri: `${instance}/terminate?reason={text}&${query}`,
      rewindPostUri: `${instance}/rewind?reason={text}&${query}`,
      purgeHistoryDeleteUri: `${instance}?${query}`,
      restartPostUri: `${instance}/restart?${query}`,
      suspendPostUri: `${instance}/suspend?reason={text}&${query}`,
      resumePostUri: `${instance}/resume?reason={text}&${query}`,
    });
    const started = host.instances.get("summer-1")!;
    assert.equal(started.name, "deploymentSet");
    const expected: DeploymentStartInput = {
      setId: "summer-1",
      requestedBy: requester,
      requestedAt: NOW.toISOString(),
      manifest,
      manifestRef: "inline",
      devices: ["vessel-01", "vessel-02"],
      deadline: new Date(NOW.getTime() + 14 * DAY).toISOString(),
      deviceBatchSize: 100,
      localRegistry: "localhost:5000",
      priority: "normal",
    };
    assert.deepEqual(started.input, expected);
  });

  it("starts one orchestration for the same client id sent twice, and answers both with 202", async () => {
    const before = host.requests.filter((r) => r.startsWith("POST /durabletask/orchestrators/")).length;
    const first = (await post({ ...valid, id: "twice" })) as HttpResponse;
    const second = (await post({ ...valid, id: "twice", devices: ["other"] })) as HttpResponse;
    assert.deepEqual([first.status, second.status], [202, 202]);
    assert.deepEqual(
      [first.headers.get(SET_STARTED_HEADER), second.headers.get(SET_STARTED_HEADER)],
      ["true", "false"],
    );
    assert.equal(
      host.requests.filter((r) => r.startsWith("POST /durabletask/orchestrators/")).length - before,
      1,
    );
    assert.deepEqual((host.instances.get("twice")!.input as DeploymentStartInput).devices, ["vessel-01"]);
  });

  it("starts one orchestration when two requests with one id race", async () => {
    const [a, b] = (await Promise.all([
      post({ ...valid, id: "race" }),
      post({ ...valid, id: "race" }),
    ])) as HttpResponse[];
    assert.deepEqual([a.status, b.status], [202, 202]);
    assert.deepEqual([a.headers.get(SET_STARTED_HEADER), b.headers.get(SET_STARTED_HEADER)].sort(), [
      "false",
      "true",
    ]);
    assert.equal(
      host.requests.filter((r) => r === "POST /durabletask/orchestrators/deploymentSet/race").length,
      2,
    );
  });

  it("reads a named manifest, resolves a twin query, and takes an absolute deadline and priority", async () => {
    const response = await post({
      id: "named",
      manifestName: "atlantic/summer.json",
      twinQuery: "tags.fleet='atlantic'",
      requestedBy: requester,
      deadline: "2026-12-05T12:00:00+01:00",
      priority: "critical",
    });
    assert.equal(response.status, 202);
    const input = host.instances.get("named")!.input as DeploymentStartInput;
    assert.deepEqual(
      {
        manifest: input.manifest,
        ref: input.manifestRef,
        devices: input.devices,
        deadline: input.deadline,
        priority: input.priority,
      },
      {
        manifest,
        ref: "atlantic/summer.json",
        devices: ["vessel-01", "vessel-03"],
        deadline: "2026-12-05T11:00:00.000Z",
        priority: "critical",
      },
    );
  });

  it("passes a twin query whose values contain SQL words", async () => {
    const response = await post({
      ...valid,
      id: "words",
      devices: undefined,
      twinQuery: "tags.origin='from-yard' AND tags.fleet='atlantic'",
    });
    assert.equal(response.status, 202);
    assert.deepEqual((host.instances.get("words")!.input as DeploymentStartInput).devices, ["vessel-03"]);
  });

  it("picks a set id when the client gives none, and counts a duration deadline from acceptance", async () => {
    const response = (await post(
      { ...valid, deadline: "PT36H" },
      { newSetId: () => "server-chosen" },
    )) as HttpResponse;
    assert.equal(response.status, 202);
    assert.equal(((await response.json()) as { id: string }).id, "server-chosen");
    const input = host.instances.get("server-chosen")!.input as DeploymentStartInput;
    assert.equal(input.deadline, new Date(NOW.getTime() + 36 * 3_600_000).toISOString());
  });
});

describe("POST /api/deployments when a service fails", () => {
  it("answers 503 with Retry-After and starts nothing", async () => {
    const started = host.instances.size;
    const response = (await post(
      { manifestName: "atlantic/summer.json", devices: ["d"], requestedBy: requester },
      {
        readManifest: async () => {
          throw new Error("connect ECONNREFUSED 127.0.0.1:10000");
        },
      },
    )) as HttpResponseInit;
    assert.deepEqual(response, {
      status: 503,
      headers: { "Retry-After": "30" },
      jsonBody: {
        error: {
          field: "",
          message:
            "could not start the deployment set (connect ECONNREFUSED 127.0.0.1:10000); retry later, with an id so a retry cannot start a second set",
        },
      },
    });
    assert.equal(host.instances.size, started);
  });
});

describe("deployment-requests queue", () => {
  it("starts a set whose id derives from the message id, once across redeliveries", async () => {
    const message = { manifest, devices: ["vessel-07"], requestedBy: requester };
    const first = await receiveDeploymentMessage(
      message,
      context({ messageId: "m-1", deliveryCount: 1 }),
      deps(),
    );
    const again = await receiveDeploymentMessage(
      message,
      context({ messageId: "m-1", deliveryCount: 2 }),
      deps(),
    );
    assert.match(first.setId, /^sb-[0-9a-f]{32}$/);
    assert.deepEqual(again, { setId: first.setId, started: false });
    assert.equal(first.started, true);
    assert.deepEqual((host.instances.get(first.setId)!.input as DeploymentStartInput).devices, ["vessel-07"]);
  });

  it("accepts the request as text or bytes and keeps a client-chosen id", async () => {
    const text = JSON.stringify({ ...valid, id: "from-text" });
    assert.deepEqual(await receiveDeploymentMessage(text, context({ messageId: "m-2" }), deps()), {
      setId: "from-text",
      started: true,
    });
    const bytes = Buffer.from(JSON.stringify({ ...valid, id: "from-bytes" }));
    assert.deepEqual(await receiveDeploymentMessage(bytes, context({ messageId: "m-3" }), deps()), {
      setId: "from-bytes",
      started: true,
    });
  });

  it("throws DeadLetterError with the reason for a message that cannot become a deployment", async () => {
    const started = host.instances.size;
    for (const [message, description] of [
      ["not json", "request body must be JSON: "],
      [
        { ...valid, devices: "vessel-01" },
        'devices must be a list of 1 to 10000 device ids, found "vessel-01"',
      ],
    ] as const) {
      await assert.rejects(
        receiveDeploymentMessage(message, context({ messageId: "bad" }), deps()),
        (error: Error) => {
          assert.ok(error instanceof DeadLetterError, `expected DeadLetterError, got ${error.name}`);
          assert.equal(error.reason, "InvalidDeploymentRequest");
          assert.ok(error.description.startsWith(description), error.description);
          return true;
        },
      );
    }
    assert.equal(host.instances.size, started);
    assert.ok(
      logs.includes(
        'error: message bad (delivery 1) is not a valid deployment request and will be dead-lettered: devices must be a list of 1 to 10000 device ids, found "vessel-01"',
      ),
    );
  });

  it("rethrows a transient failure so Service Bus delivers the message again", async () => {
    const unreachable = deps({
      readManifest: async () => {
        throw Object.assign(new Error("connect ECONNREFUSED 127.0.0.1:10000"), { code: "ECONNREFUSED" });
      },
    });
    const message = { manifestName: "atlantic/summer.json", devices: ["d"], requestedBy: requester };
    await assert.rejects(
      receiveDeploymentMessage(message, context({ messageId: "m-4" }), unreachable),
      (error: Error) => {
        assert.ok(!(error instanceof DeadLetterError));
        assert.equal(error.message, "connect ECONNREFUSED 127.0.0.1:10000");
        return true;
      },
    );
    // Once storage is back the same message starts the set.
    const retried = await receiveDeploymentMessage(
      message,
      context({ messageId: "m-4", deliveryCount: 2 }),
      deps(),
    );
    assert.equal(retried.started, true);
  });
});
