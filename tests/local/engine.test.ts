// The local Durable engine runs orchestrators through the real durable-functions replay library,
// with history in real Azure Table Storage (Azurite). These tests use small orchestrators of their
// own that exercise each kind of work the engine must run.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import type { OrchestrationContext, OrchestrationHandler } from "durable-functions";
import * as df from "durable-functions";
import { type ActivityHandler, DurableEngine, InstanceExistsError } from "../../local/durable/engine.js";
import { EVENT_TYPE } from "../../local/durable/history.js";
import { TableInstanceStore } from "../../local/durable/store.js";
import { type Azurite, startAzurite } from "../support/azurite.js";

/** Every wait in these tests is bounded: the engine runs real timers, so a hang means a bug. */
const WAIT_MS = 20_000;

let azurite: Azurite;
const engines: DurableEngine[] = [];

before(async () => {
  azurite = await startAzurite();
});
after(async () => {
  await Promise.all(engines.map((e) => e.close()));
  await azurite.stop();
});

async function engine(
  orchestrators: Record<string, OrchestrationHandler>,
  activities: Record<string, ActivityHandler>,
): Promise<DurableEngine> {
  const e = new DurableEngine({
    store: await TableInstanceStore.fromConnectionString(azurite.connectionString),
    orchestrators: new Map(Object.entries(orchestrators)),
    activities: new Map(Object.entries(activities)),
  });
  engines.push(e);
  return e;
}

const double: ActivityHandler = (input) => (input as number) * 2;

describe("local durable engine", () => {
  test("runs a fan-out of activities and completes with their results", async () => {
    const fanOut: OrchestrationHandler = function* (context: OrchestrationContext) {
      const numbers = context.df.getInput() as number[];
      const results = yield context.df.Task.all(numbers.map((n) => context.df.callActivity("double", n)));
      return (results as number[]).reduce((a, b) => a + b, 0);
    };
    const e = await engine({ fanOut }, { double });
    const id = await e.startNew("fanOut", "fan-1", [1, 2, 3, 4]);
    const record = await e.waitForEnd(id, WAIT_MS);
    assert.equal(record.runtimeStatus, "Completed");
    assert.equal(record.output, 20);
    const status = await e.getStatus(id);
    const scheduled = status?.history.filter((h) => h.EventType === EVENT_TYPE.taskScheduled) ?? [];
    assert.deepEqual(
      scheduled.map((h) => h.EventId),
      [0, 1, 2, 3],
    );
  });

  test("keeps history in Table Storage, readable by a new engine", async () => {
    const one: OrchestrationHandler = function* (context: OrchestrationContext) {
      return yield context.df.callActivity("double", 21);
    };
    const e = await engine({ one }, { double });
    await e.waitForEnd(await e.startNew("one", "stored-1", null), WAIT_MS);
    const fresh = await engine({ one }, { double });
    const status = await fresh.getStatus("stored-1");
    assert.equal(status?.record.output, 42);
    assert.equal(status?.record.runtimeStatus, "Completed");
    assert.deepEqual(
      status?.history.map((h) => h.EventType),
      [
        EVENT_TYPE.orchestratorStarted,
        EVENT_TYPE.executionStarted,
        EVENT_TYPE.taskScheduled,
        EVENT_TYPE.orchestratorCompleted,
        EVENT_TYPE.orchestratorStarted,
        EVENT_TYPE.taskCompleted,
        EVENT_TYPE.orchestratorCompleted,
      ],
    );
  });

  test("an event beats the timer, and the cancelled timer does not keep the instance running", async () => {
    const race: OrchestrationHandler = function* (context: OrchestrationContext) {
      const deadline = new Date(context.df.currentUtcDateTime.getTime() + 60 * 60 * 1000);
      const timer = context.df.createTimer(deadline);
      const report = context.df.waitForExternalEvent("image:dev-1:sha256:aa");
      const winner = yield context.df.Task.any([report, timer]);
      if (winner === report) {
        timer.cancel();
        return { outcome: "arrived", report: report.result };
      }
      return { outcome: "timeout" };
    };
    const e = await engine({ race }, {});
    const id = await e.startNew("race", "race-1", null);
    await new Promise((r) => setTimeout(r, 200));
    await e.raiseEvent(id, "image:dev-1:sha256:aa", { ok: true });
    const record = await e.waitForEnd(id, WAIT_MS);
    assert.deepEqual(record.output, { outcome: "arrived", report: { ok: true } });
  });

  test("a timer that fires first ends the wait", async () => {
    const race: OrchestrationHandler = function* (context: OrchestrationContext) {
      const timer = context.df.createTimer(new Date(context.df.currentUtcDateTime.getTime() + 300));
      const report = context.df.waitForExternalEvent("never");
      const winner = yield context.df.Task.any([report, timer]);
      return winner === timer ? "timeout" : "arrived";
    };
    const e = await engine({ race }, {});
    const record = await e.waitForEnd(await e.startNew("race", "timeout-1", null), WAIT_MS);
    assert.equal(record.output, "timeout");
  });

  test("events raised before the orchestrator waits are kept until it does", async () => {
    const late: OrchestrationHandler = function* (context: OrchestrationContext) {
      yield context.df.callActivity("slow", null);
      const a = yield context.df.waitForExternalEvent("a");
      const b = yield context.df.waitForExternalEvent("b");
      return [a, b];
    };
    let release: () => void = () => {};
    const gate = new Promise<void>((r) => {
      release = r;
    });
    const e = await engine({ late }, { slow: () => gate });
    const id = await e.startNew("late", "early-events", null);
    await e.raiseEvent(id, "b", 2);
    await e.raiseEvent(id, "a", 1);
    release();
    const record = await e.waitForEnd(id, WAIT_MS);
    assert.deepEqual(record.output, [1, 2]);
  });

  test("retries a failing activity with the orchestrator's retry options", async () => {
    let calls = 0;
    const flaky: ActivityHandler = () => {
      calls++;
      if (calls < 3) throw new Error(`transient failure ${calls}`);
      return "ok";
    };
    const retrying: OrchestrationHandler = function* (context: OrchestrationContext) {
      return yield context.df.callActivityWithRetry("flaky", new df.RetryOptions(50, 4), null);
    };
    const e = await engine({ retrying }, { flaky });
    const record = await e.waitForEnd(await e.startNew("retrying", "retry-1", null), WAIT_MS);
    assert.equal(record.runtimeStatus, "Completed");
    assert.equal(record.output, "ok");
    assert.equal(calls, 3);
  });

  test("an activity failure the orchestrator does not catch fails the instance with the activity's message", async () => {
    const failing: OrchestrationHandler = function* (context: OrchestrationContext) {
      yield context.df.callActivity("broken", null);
      return "unreachable";
    };
    const e = await engine(
      { failing },
      {
        broken: () => {
          throw new Error("registry at 10.0.0.1 refused the push");
        },
      },
    );
    const record = await e.waitForEnd(await e.startNew("failing", "fail-1", null), WAIT_MS);
    assert.equal(record.runtimeStatus, "Failed");
    assert.match(String(record.output), /registry at 10\.0\.0\.1 refused the push/);
  });

  test("runs sub-orchestrations and returns their outputs to the parent", async () => {
    const child: OrchestrationHandler = function* (context: OrchestrationContext) {
      const n = context.df.getInput() as number;
      return yield context.df.callActivity("double", n);
    };
    const parent: OrchestrationHandler = function* (context: OrchestrationContext) {
      const tasks = [1, 2, 3].map((n) =>
        context.df.callSubOrchestrator("child", n, `${context.df.instanceId}:child:${n}`),
      );
      return yield context.df.Task.all(tasks);
    };
    const e = await engine({ child, parent }, { double });
    const record = await e.waitForEnd(await e.startNew("parent", "parent-1", null), WAIT_MS);
    assert.deepEqual(record.output, [2, 4, 6]);
    const childStatus = await e.getStatus("parent-1:child:2");
    assert.equal(childStatus?.record.runtimeStatus, "Completed");
    assert.equal(childStatus?.record.parentInstanceId, "parent-1");
  });

  test("continue-as-new restarts the instance with the new input and fresh history", async () => {
    const counter: OrchestrationHandler = function* (context: OrchestrationContext) {
      const n = context.df.getInput() as number;
      yield context.df.callActivity("double", n);
      if (n < 3) {
        context.df.continueAsNew(n + 1);
        return undefined;
      }
      return n;
    };
    const e = await engine({ counter }, { double });
    const record = await e.waitForEnd(await e.startNew("counter", "can-1", 1), WAIT_MS);
    assert.equal(record.output, 3);
    const status = await e.getStatus("can-1");
    assert.equal(status?.history.filter((h) => h.EventType === EVENT_TYPE.executionStarted).length, 1);
  });

  test("refuses a second start of a running instance id", async () => {
    const waits: OrchestrationHandler = function* (context: OrchestrationContext) {
      return yield context.df.waitForExternalEvent("go");
    };
    const e = await engine({ waits }, {});
    await e.startNew("waits", "dup-1", null);
    await assert.rejects(e.startNew("waits", "dup-1", null), InstanceExistsError);
    await e.raiseEvent("dup-1", "go", "went");
    assert.equal((await e.waitForEnd("dup-1", WAIT_MS)).output, "went");
  });

  test("a new engine resumes a running instance and runs its open work again", async () => {
    const twoSteps: OrchestrationHandler = function* (context: OrchestrationContext) {
      const first = yield context.df.callActivity("double", 1);
      const event = yield context.df.waitForExternalEvent("next");
      const second = yield context.df.callActivity("double", event as number);
      return [first, second];
    };
    const e1 = await engine({ twoSteps }, { double });
    await e1.startNew("twoSteps", "resume-1", null);
    // Wait until the first activity's result is recorded and the instance waits for "next".
    for (let i = 0; i < 100; i++) {
      const s = await e1.getStatus("resume-1");
      if (s?.history.some((h) => h.EventType === EVENT_TYPE.taskCompleted)) break;
      await new Promise((r) => setTimeout(r, 50));
    }
    await e1.close();
    const e2 = await engine({ twoSteps }, { double });
    assert.equal(await e2.resume(), 1);
    await e2.raiseEvent("resume-1", "next", 5);
    const record = await e2.waitForEnd("resume-1", WAIT_MS);
    assert.deepEqual(record.output, [2, 10]);
  });

  test("custom status is visible while the instance runs", async () => {
    const status: OrchestrationHandler = function* (context: OrchestrationContext) {
      context.df.setCustomStatus({ phase: "waiting" });
      yield context.df.waitForExternalEvent("done");
      context.df.setCustomStatus({ phase: "done" });
      return null;
    };
    const e = await engine({ status }, {});
    await e.startNew("status", "status-1", null);
    for (let i = 0; i < 100; i++) {
      const s = await e.getStatus("status-1");
      if (s?.record.runtimeStatus === "Running") break;
      await new Promise((r) => setTimeout(r, 20));
    }
    assert.deepEqual((await e.getStatus("status-1"))?.record.customStatus, { phase: "waiting" });
    await e.raiseEvent("status-1", "done", null);
    await e.waitForEnd("status-1", WAIT_MS);
    assert.deepEqual((await e.getStatus("status-1"))?.record.customStatus, { phase: "done" });
  });
});
