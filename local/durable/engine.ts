/**
 * A local Durable Task engine: runs the app's orchestrators through the real durable-functions
 * replay library, the way the Functions host's Durable extension does, so local mode has no
 * second implementation of orchestration logic.
 *
 * Each episode replays an instance's whole history through `Orchestrator.handle`, then reads the
 * library's own table of open tasks (the ids it assigned) to learn what the orchestrator waits
 * for: activities to run, timers to arm, sub-orchestrations to start, retries to schedule.
 * Results come back as history events (TaskCompleted, TimerFired, …) and trigger the next
 * episode. History and status live in an InstanceStore (Azure Table Storage in local mode).
 * Activities run at least once: after a restart, open tasks without a result are started again.
 */
import { randomUUID } from "node:crypto";
import azureFunctions, { type InvocationContext } from "@azure/functions";
import type { OrchestrationHandler } from "durable-functions";
import { DurableOrchestrationBindingInfo } from "durable-functions/lib/src/orchestrations/DurableOrchestrationBindingInfo.js";
import { type OpenTask, Orchestrator } from "durable-functions/lib/src/orchestrations/Orchestrator.js";
import {
  eventRaised,
  executionStarted,
  type HistoryEvent,
  orchestratorCompleted,
  orchestratorStarted,
  subOrchestrationCompleted,
  subOrchestrationCreated,
  subOrchestrationFailed,
  taskCompleted,
  taskFailed,
  taskScheduled,
  timerCreated,
  timerFired,
} from "./history.js";
import type { InstanceRecord, InstanceStore, RuntimeStatus } from "./store.js";

export type ActivityHandler = (input: unknown, context: InvocationContext) => unknown;

/** durable-functions action types (lib/src/actions/ActionType.js). */
const ACTION = {
  callActivity: 0,
  callActivityWithRetry: 1,
  callSubOrchestrator: 2,
  callSubOrchestratorWithRetry: 3,
  continueAsNew: 4,
  createTimer: 5,
  waitForExternalEvent: 6,
} as const;

/** The replay schema the engine offers the library: V1, the one every durable-functions 3.x understands. */
const REPLAY_SCHEMA_V1 = 0;
/** Timers longer than this are split by the library into chained timers (its default, as the host sends). */
const MAXIMUM_SHORT_TIMER = "6.00:00:00";
const LONG_TIMER_INTERVAL = "3.00:00:00";
/** setTimeout cannot wait longer than this; longer timers are re-armed in steps. */
const MAX_TIMEOUT_MS = 2 ** 31 - 1;

export interface EngineOptions {
  store: InstanceStore;
  orchestrators: ReadonlyMap<string, OrchestrationHandler>;
  activities: ReadonlyMap<string, ActivityHandler>;
  /** One line per notable step; silent when absent. */
  log?: (line: string) => void;
}

interface InFlight {
  kind: "activity" | "timer" | "subOrchestration";
  timeout?: NodeJS.Timeout;
}

interface LiveInstance {
  record: InstanceRecord;
  history: HistoryEvent[];
  /** Events that arrived since the last episode; the next episode plays them. */
  pending: HistoryEvent[];
  inFlight: Map<number, InFlight>;
  running?: Promise<void>;
  rerun: boolean;
}

export class InstanceExistsError extends Error {
  constructor(readonly instanceId: string) {
    super(`an instance with id '${instanceId}' is already pending or running`);
    this.name = "InstanceExistsError";
  }
}

export class InstanceNotFoundError extends Error {
  constructor(readonly instanceId: string) {
    super(`no orchestration instance has id '${instanceId}'`);
    this.name = "InstanceNotFoundError";
  }
}

export class InstanceCompletedError extends Error {
  constructor(readonly instanceId: string) {
    super(`orchestration instance '${instanceId}' has already ended`);
    this.name = "InstanceCompletedError";
  }
}

const ENDED: ReadonlySet<RuntimeStatus> = new Set(["Completed", "Failed", "Terminated"]);

export class DurableEngine {
  private readonly live = new Map<string, LiveInstance>();
  private readonly waiters = new Map<string, Array<(record: InstanceRecord) => void>>();
  private closed = false;

  constructor(private readonly options: EngineOptions) {}

  /** Starts a new instance; an id in use by a pending or running instance is refused. */
  async startNew(
    name: string,
    instanceId: string | undefined,
    input: unknown,
    parent?: ParentLink,
  ): Promise<string> {
    if (!this.options.orchestrators.has(name)) {
      throw new Error(`no orchestrator is registered under the name '${name}'`);
    }
    const id = instanceId ?? randomUUID().replaceAll("-", "");
    const existing = this.live.get(id)?.record ?? (await this.options.store.load(id))?.record;
    if (existing !== undefined && !ENDED.has(existing.runtimeStatus)) throw new InstanceExistsError(id);
    const now = new Date().toISOString();
    const record: InstanceRecord = {
      instanceId: id,
      name,
      input,
      runtimeStatus: "Pending",
      createdTime: now,
      lastUpdatedTime: now,
      parentInstanceId: parent?.instanceId,
      parentTaskId: parent?.taskId,
      historyLength: 0,
    };
    const history: HistoryEvent[] = [];
    await this.options.store.save(record, history, true);
    const instance: LiveInstance = {
      record,
      history,
      pending: [executionStarted(name, input)],
      inFlight: new Map(),
      rerun: false,
    };
    this.live.set(id, instance);
    this.log(`${name} ${id}: started`);
    this.kick(instance);
    return id;
  }

  /** Delivers an external event; events for an instance that is not waiting yet are buffered by the library. */
  async raiseEvent(instanceId: string, name: string, data: unknown): Promise<void> {
    const instance = await this.instance(instanceId);
    if (ENDED.has(instance.record.runtimeStatus)) throw new InstanceCompletedError(instanceId);
    instance.pending.push(eventRaised(name, data));
    this.kick(instance);
  }

  async terminate(instanceId: string, reason: string): Promise<void> {
    const instance = await this.instance(instanceId);
    if (ENDED.has(instance.record.runtimeStatus)) throw new InstanceCompletedError(instanceId);
    this.stopInFlight(instance);
    await this.finish(instance, "Terminated", reason);
  }

  async getStatus(
    instanceId: string,
  ): Promise<{ record: InstanceRecord; history: HistoryEvent[] } | undefined> {
    const live = this.live.get(instanceId);
    if (live !== undefined) return { record: live.record, history: live.history };
    return this.options.store.load(instanceId);
  }

  listInstances(): Promise<InstanceRecord[]> {
    return this.options.store.list();
  }

  /** Resolves when the instance has ended, or rejects after timeoutMs. */
  waitForEnd(instanceId: string, timeoutMs: number): Promise<InstanceRecord> {
    return new Promise((resolve, reject) => {
      const done = (record: InstanceRecord) => {
        clearTimeout(timer);
        resolve(record);
      };
      const timer = setTimeout(() => {
        const list = this.waiters.get(instanceId) ?? [];
        this.waiters.set(
          instanceId,
          list.filter((w) => w !== done),
        );
        reject(new Error(`instance ${instanceId} did not end within ${timeoutMs} ms`));
      }, timeoutMs);
      this.getStatus(instanceId).then((status) => {
        if (status !== undefined && ENDED.has(status.record.runtimeStatus)) return done(status.record);
        const list = this.waiters.get(instanceId) ?? [];
        list.push(done);
        this.waiters.set(instanceId, list);
      }, reject);
    });
  }

  /** Picks up instances a previous run left running: replays them, restarting their open work. */
  async resume(): Promise<number> {
    let count = 0;
    for (const record of await this.options.store.list()) {
      if (ENDED.has(record.runtimeStatus) || this.live.has(record.instanceId)) continue;
      const instance = await this.instance(record.instanceId);
      this.kick(instance);
      count++;
    }
    return count;
  }

  /** Stops timers and lets running episodes finish; activities already running complete but are not recorded. */
  async close(): Promise<void> {
    this.closed = true;
    for (const instance of this.live.values()) this.stopInFlight(instance);
    await Promise.allSettled([...this.live.values()].map((i) => i.running));
  }

  private log(line: string): void {
    this.options.log?.(line);
  }

  private async instance(instanceId: string): Promise<LiveInstance> {
    const live = this.live.get(instanceId);
    if (live !== undefined) return live;
    const stored = await this.options.store.load(instanceId);
    if (stored === undefined) throw new InstanceNotFoundError(instanceId);
    const instance: LiveInstance = {
      record: stored.record,
      history: stored.history,
      pending: [],
      inFlight: new Map(),
      rerun: false,
    };
    this.live.set(instanceId, instance);
    return instance;
  }

  /** Runs episodes until nothing new arrived meanwhile; one episode at a time per instance. */
  private kick(instance: LiveInstance): void {
    if (this.closed) return;
    if (instance.running !== undefined) {
      instance.rerun = true;
      return;
    }
    instance.running = (async () => {
      do {
        instance.rerun = false;
        try {
          await this.episode(instance);
        } catch (error) {
          this.log(`${instance.record.name} ${instance.record.instanceId}: engine error: ${describe(error)}`);
          await this.finish(instance, "Failed", `local engine error: ${describe(error)}`);
        }
      } while (instance.rerun && !ENDED.has(instance.record.runtimeStatus) && !this.closed);
      instance.running = undefined;
    })();
  }

  private async episode(instance: LiveInstance): Promise<void> {
    const { record } = instance;
    if (ENDED.has(record.runtimeStatus)) return;
    const handler = this.options.orchestrators.get(record.name);
    if (handler === undefined)
      throw new Error(`no orchestrator is registered under the name '${record.name}'`);

    const played = instance.history;
    const fresh = [orchestratorStarted(new Date()), ...instance.pending.splice(0)];
    const replay = [
      ...played.map((e) => ({ ...e, IsPlayed: true })),
      ...fresh.map((e) => ({ ...e, IsPlayed: false })),
    ];
    const orchestrator = new Orchestrator(handler);
    const context = new azureFunctions.InvocationContext({
      functionName: record.name,
      invocationId: randomUUID(),
    });
    const trigger = new DurableOrchestrationBindingInfo(
      replay,
      record.input,
      record.instanceId,
      false,
      record.parentInstanceId,
      MAXIMUM_SHORT_TIMER,
      LONG_TIMER_INTERVAL,
      30_000,
      REPLAY_SCHEMA_V1,
    );

    let state: Awaited<ReturnType<Orchestrator["handle"]>> | undefined;
    let failure: string | undefined;
    try {
      state = await orchestrator.handle(trigger, context);
    } catch (error) {
      const inner = (error as { state?: { error?: string } }).state?.error;
      failure = inner ?? describe(error);
    }
    instance.history = [...played, ...fresh];
    if (record.runtimeStatus === "Pending") record.runtimeStatus = "Running";
    if (state?.customStatus !== undefined) record.customStatus = state.customStatus;

    if (failure !== undefined) {
      instance.history.push(orchestratorCompleted());
      this.stopInFlight(instance);
      await this.finish(instance, "Failed", failure);
      return;
    }
    const executor = orchestrator.taskOrchestrationExecutor;
    if (executor.willContinueAsNew) {
      const next = findContinueAsNew(executor.actions);
      this.stopInFlight(instance);
      record.input = next;
      instance.history = [];
      instance.pending = [executionStarted(record.name, next), ...instance.pending];
      instance.rerun = true;
      await this.options.store.save(record, instance.history, false);
      this.log(`${record.name} ${record.instanceId}: continued as new`);
      return;
    }
    if (state?.isDone) {
      instance.history.push(orchestratorCompleted());
      this.stopInFlight(instance);
      await this.finish(instance, "Completed", state.output);
      return;
    }

    const scheduled = this.startOpenWork(instance, executor.openTasks);
    instance.history.push(...scheduled, orchestratorCompleted());
    record.lastUpdatedTime = new Date().toISOString();
    record.historyLength = instance.history.length;
    await this.options.store.save(record, instance.history, false);
  }

  /** Starts every open task the engine is not already working on; returns the events that record it. */
  private startOpenWork(instance: LiveInstance, openTasks: Record<string, OpenTask>): HistoryEvent[] {
    const events: HistoryEvent[] = [];
    const open = new Set<number>();
    for (const task of Object.values(openTasks)) {
      if (typeof task.id !== "number") continue;
      const id = task.id;
      open.add(id);
      // Retry placeholders carry the string "noOp" instead of an action.
      const action = typeof task.actionObj === "object" ? task.actionObj : undefined;
      const running = instance.inFlight.get(id);
      if (running !== undefined) {
        if (running.kind === "timer" && action?.isCanceled === true) this.cancelTimer(instance, id);
        continue;
      }
      const retried = task.parent?.innerTask?.actionObj;
      if (action === undefined && task.parent !== undefined && retried !== undefined) {
        // A retry placeholder: first a timer for the back-off, then the next attempt.
        const retry = task.parent;
        if (retry.isWaitingOnTimer) {
          const delay = retryDelay(retry);
          const fireAt = new Date(Date.now() + delay);
          events.push(timerCreated(id, fireAt));
          this.armTimer(instance, id, fireAt);
        } else {
          events.push(...this.startAction(instance, id, retried));
        }
        continue;
      }
      if (action === undefined) continue;
      events.push(...this.startAction(instance, id, action));
    }
    for (const [id, work] of instance.inFlight) {
      if (work.kind === "timer" && !open.has(id)) this.cancelTimer(instance, id);
    }
    return events;
  }

  private startAction(
    instance: LiveInstance,
    id: number,
    action: NonNullable<OpenTask["actionObj"]>,
  ): HistoryEvent[] {
    switch (action.actionType) {
      case ACTION.callActivity:
      case ACTION.callActivityWithRetry: {
        const name = String(action.functionName);
        this.runActivity(instance, id, name, deserializeInput(action.input));
        return [taskScheduled(id, name)];
      }
      case ACTION.createTimer: {
        if (action.isCanceled === true) return [];
        const fireAt = new Date(action.fireAt as Date | string);
        this.armTimer(instance, id, fireAt);
        return [timerCreated(id, fireAt)];
      }
      case ACTION.callSubOrchestrator:
      case ACTION.callSubOrchestratorWithRetry: {
        const name = String(action.functionName);
        const childId =
          typeof action.instanceId === "string" && action.instanceId !== ""
            ? action.instanceId
            : `${instance.record.instanceId}:${id}`;
        this.runSubOrchestration(instance, id, name, childId, deserializeInput(action.input));
        return [subOrchestrationCreated(id, name, childId)];
      }
      case ACTION.waitForExternalEvent:
        return [];
      default:
        throw new Error(
          `orchestrator ${instance.record.name} used action type ${action.actionType}, which local mode does not run (entities and durable HTTP are not used by Deltaship)`,
        );
    }
  }

  private runActivity(instance: LiveInstance, id: number, name: string, input: unknown): void {
    instance.inFlight.set(id, { kind: "activity" });
    const handler = this.options.activities.get(name);
    const context = new azureFunctions.InvocationContext({ functionName: name, invocationId: randomUUID() });
    const started = Date.now();
    (async () => {
      if (handler === undefined) throw new Error(`no activity is registered under the name '${name}'`);
      return handler(input, context);
    })().then(
      (result) => {
        this.log(`${instance.record.instanceId}: activity ${name} #${id} done in ${Date.now() - started} ms`);
        this.deliver(instance, id, taskCompleted(id, result));
      },
      (error) => {
        this.log(`${instance.record.instanceId}: activity ${name} #${id} failed: ${describe(error)}`);
        this.deliver(instance, id, taskFailed(id, error));
      },
    );
  }

  private runSubOrchestration(
    instance: LiveInstance,
    id: number,
    name: string,
    childId: string,
    input: unknown,
  ): void {
    instance.inFlight.set(id, { kind: "subOrchestration" });
    (async () => {
      const existing = await this.getStatus(childId);
      if (existing === undefined || ENDED.has(existing.record.runtimeStatus)) {
        if (existing !== undefined && existing.record.parentInstanceId === instance.record.instanceId) {
          // Ended while this parent was not listening (a restart): deliver its outcome again.
          this.onChildEnded(existing.record);
          return;
        }
        await this.startNew(name, childId, input, { instanceId: instance.record.instanceId, taskId: id });
      }
    })().catch((error) => this.deliver(instance, id, subOrchestrationFailed(id, error)));
  }

  private armTimer(instance: LiveInstance, id: number, fireAt: Date): void {
    const arm = () => {
      const wait = fireAt.getTime() - Date.now();
      if (wait > MAX_TIMEOUT_MS) {
        instance.inFlight.set(id, { kind: "timer", timeout: setTimeout(arm, MAX_TIMEOUT_MS) });
        return;
      }
      const timeout = setTimeout(() => this.deliver(instance, id, timerFired(id, fireAt)), Math.max(0, wait));
      instance.inFlight.set(id, { kind: "timer", timeout });
    };
    arm();
  }

  private cancelTimer(instance: LiveInstance, id: number): void {
    const work = instance.inFlight.get(id);
    if (work?.timeout !== undefined) clearTimeout(work.timeout);
    instance.inFlight.delete(id);
  }

  private stopInFlight(instance: LiveInstance): void {
    for (const work of instance.inFlight.values()) {
      if (work.timeout !== undefined) clearTimeout(work.timeout);
    }
    instance.inFlight.clear();
  }

  private deliver(instance: LiveInstance, id: number, event: HistoryEvent): void {
    if (this.closed || ENDED.has(instance.record.runtimeStatus)) return;
    instance.inFlight.delete(id);
    instance.pending.push(event);
    this.kick(instance);
  }

  private async finish(instance: LiveInstance, status: RuntimeStatus, output: unknown): Promise<void> {
    const { record } = instance;
    record.runtimeStatus = status;
    record.output = output;
    record.lastUpdatedTime = new Date().toISOString();
    record.historyLength = instance.history.length;
    await this.options.store.save(record, instance.history, false);
    this.log(`${record.name} ${record.instanceId}: ${status.toLowerCase()}`);
    this.onChildEnded(record);
    for (const waiter of this.waiters.get(record.instanceId) ?? []) waiter(record);
    this.waiters.delete(record.instanceId);
  }

  private onChildEnded(record: InstanceRecord): void {
    if (record.parentInstanceId === undefined || record.parentTaskId === undefined) return;
    const parent = this.live.get(record.parentInstanceId);
    if (parent === undefined) return;
    const id = record.parentTaskId;
    const event =
      record.runtimeStatus === "Completed"
        ? subOrchestrationCompleted(id, record.output)
        : subOrchestrationFailed(
            id,
            new Error(`sub-orchestration ${record.instanceId} ${String(record.output)}`),
          );
    this.deliver(parent, id, event);
  }
}

export interface ParentLink {
  instanceId: string;
  taskId: number;
}

/** Inputs pass through JSON as they would through the host; strings were JSON-encoded by the library. */
function deserializeInput(input: unknown): unknown {
  if (typeof input === "string") {
    try {
      return JSON.parse(input);
    } catch {
      return input;
    }
  }
  return input === undefined ? undefined : JSON.parse(JSON.stringify(input));
}

function findContinueAsNew(actions: unknown[]): unknown {
  for (const action of actions.flat(2) as Array<{ actionType?: number; input?: unknown }>) {
    if (action?.actionType === ACTION.continueAsNew) return deserializeInput(action.input);
  }
  return undefined;
}

function retryDelay(retry: NonNullable<OpenTask["parent"]>): number {
  const options = retry.retryOptions;
  if (options === undefined) return 0;
  const attempt = Math.max(1, (retry.attemptNumber ?? 2) - 1);
  const coefficient = options.backoffCoefficient ?? 1;
  const delay = options.firstRetryIntervalInMilliseconds * coefficient ** (attempt - 1);
  const cap = options.maxRetryIntervalInMilliseconds;
  return cap !== undefined && cap > 0 ? Math.min(delay, cap) : delay;
}

function describe(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}
