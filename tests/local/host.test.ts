// The local Functions host loads a Function App through the real @azure/functions registration
// path, serves its HTTP routes, answers the real DurableClient through the Durable HTTP API, and
// runs the orchestration on the local engine with history in Azurite.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { TableInstanceStore } from "../../local/durable/store.js";
import { LocalFunctionApp } from "../../local/functions-app.js";
import { LocalFunctionHost } from "../../local/host.js";
import { type Azurite, startAzurite } from "../support/azurite.js";

let azurite: Azurite;
let host: LocalFunctionHost;

before(async () => {
  azurite = await startAzurite();
  const app = await LocalFunctionApp.load(new URL("./fixtures/app.ts", import.meta.url));
  host = new LocalFunctionHost({
    app,
    store: await TableInstanceStore.fromConnectionString(azurite.connectionString),
    port: 0,
  });
  await host.start();
});
after(async () => {
  await host.stop();
  await azurite.stop();
});

async function poll(url: string, until: (body: { runtimeStatus: string; customStatus: unknown }) => boolean) {
  for (let i = 0; i < 200; i++) {
    const res = await fetch(url);
    const body = (await res.json()) as { runtimeStatus: string; customStatus: unknown; output: unknown };
    if (until(body)) return body;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`status at ${url} never reached the expected state`);
}

describe("local Functions host", () => {
  test("registers every function of the app with its trigger", () => {
    const app = (host as unknown as { options: { app: LocalFunctionApp } }).options.app;
    assert.deepEqual([...app.functions.keys()].sort(), [
      "greet",
      "greeting",
      "listGreetings",
      "replies",
      "startGreeting",
    ]);
    assert.equal(app.functions.get("greeting")?.trigger.type, "orchestrationTrigger");
    assert.equal(app.functions.get("replies")?.trigger.cardinality, "many");
  });

  test("runs a deployment-style flow: HTTP start, status polling, event from an Event Hub trigger", async () => {
    const res = await fetch(`${host.origin}/api/greetings/ada`, { method: "POST" });
    assert.equal(res.status, 202);
    const links = (await res.json()) as { id: string; statusQueryGetUri: string };
    assert.equal(links.id, "greeting-ada");
    assert.equal(res.headers.get("location"), links.statusQueryGetUri);

    const waiting = await poll(
      links.statusQueryGetUri,
      (b) => b.runtimeStatus === "Running" && b.customStatus !== null,
    );
    assert.deepEqual((waiting as { customStatus: unknown }).customStatus, { greeting: "hello ada" });

    await host.invokeEventHub(
      "replies",
      [{ name: "ada", text: "hi" }],
      [{ "iothub-connection-device-id": "ship-7" }],
    );
    const done = await poll(links.statusQueryGetUri, (b) => b.runtimeStatus === "Completed");
    assert.deepEqual((done as { output: unknown }).output, {
      greeting: "hello ada",
      reply: { text: "hi", from: "ship-7" },
    });
  });

  test("a second start of a running instance answers an error, not a second instance", async () => {
    const first = await fetch(`${host.origin}/api/greetings/bob`, { method: "POST" });
    assert.equal(first.status, 202);
    const second = await fetch(`${host.origin}/api/greetings/bob`, { method: "POST" });
    assert.equal(second.status, 500);
    assert.match(await second.text(), /409|already/);
  });

  test("literal routes, unknown routes and unknown instances", async () => {
    const list = await fetch(`${host.origin}/api/greetings`);
    assert.deepEqual(await list.json(), { ok: true });
    assert.equal((await fetch(`${host.origin}/api/nothing-here`)).status, 404);
    const status = await fetch(`${host.origin}/runtime/webhooks/durabletask/instances/nobody`);
    assert.equal(status.status, 404);
  });
});
