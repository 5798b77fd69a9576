#!/usr/bin/env node
// Starts a deployment set through Deltaship's HTTP API and polls the Durable status URL until the
// set ends. Exit 0 when it succeeded, 1 when it failed, 3 when this wait ran out (the set goes on).
// The function key comes from DELTASHIP_FUNCTION_KEY, never from the command line.
import { parseArgs } from "node:util";

const { values } = parseArgs({
  options: {
    url: { type: "string" },
    manifest: { type: "string" },
    "device-query": { type: "string" },
    devices: { type: "string" },
    "requester-name": { type: "string" },
    "requester-email": { type: "string" },
    id: { type: "string" },
    priority: { type: "string" },
    "wait-minutes": { type: "string", default: "60" },
    "poll-seconds": { type: "string", default: "30" },
  },
});

function fail(message, code = 2) {
  console.error(`start-deployment: ${message}`);
  process.exit(code);
}

for (const required of ["url", "manifest", "requester-name", "requester-email"]) {
  if (!values[required]) fail(`--${required} is required`);
}
if (!values["device-query"] === !values.devices)
  fail("give exactly one of --device-query and --devices (comma-separated)");
const key = process.env.DELTASHIP_FUNCTION_KEY;
if (!key) fail("DELTASHIP_FUNCTION_KEY is not set: put the Function App's function key in a secret variable");

const body = {
  manifestName: values.manifest,
  requestedBy: { name: values["requester-name"], email: values["requester-email"] },
  ...(values["device-query"]
    ? { twinQuery: values["device-query"] }
    : { devices: values.devices.split(",") }),
  ...(values.id ? { id: values.id.replace(/[^A-Za-z0-9._-]/g, "-").slice(0, 64) } : {}),
  ...(values.priority ? { priority: values.priority } : {}),
};

const headers = { "content-type": "application/json", "x-functions-key": key };
const start = await fetch(new URL("/api/deployments", values.url), {
  method: "POST",
  headers,
  body: JSON.stringify(body),
});
const started = await start.json().catch(() => ({}));
if (start.status !== 202)
  fail(`POST /api/deployments answered ${start.status}: ${JSON.stringify(started)}`, 1);
console.log(`deployment set ${started.id} started; status: ${started.statusQueryGetUri}`);

const deadline = Date.now() + Number(values["wait-minutes"]) * 60_000;
const pollMs = Number(values["poll-seconds"]) * 1000;
while (Date.now() < deadline) {
  await new Promise((resolve) => setTimeout(resolve, pollMs));
  const res = await fetch(started.statusQueryGetUri, { headers });
  if (!res.ok) {
    console.warn(`status answered ${res.status}; trying again`);
    continue;
  }
  const status = await res.json();
  console.log(`${status.runtimeStatus}: ${JSON.stringify(status.customStatus?.counts ?? {})}`);
  if (status.runtimeStatus === "Completed") {
    const outcome = status.output?.outcome ?? "succeeded";
    if (outcome === "succeeded") process.exit(0);
    fail(`deployment set ${started.id} ended ${outcome}: ${JSON.stringify(status.output)}`, 1);
  }
  if (["Failed", "Terminated"].includes(status.runtimeStatus)) {
    fail(`deployment set ${started.id} ended ${status.runtimeStatus}: ${JSON.stringify(status.output)}`, 1);
  }
}
fail(
  `deployment set ${started.id} still running after ${values["wait-minutes"]} minutes; watch it at ${started.statusQueryGetUri}`,
  3,
);
