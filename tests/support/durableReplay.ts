/**
 * Runs orchestrators the way the Durable Functions host does, in virtual time: every episode
 * appends new history events and replays the whole history through the real durable-functions
 * engine (its testingUtils), with a new DummyOrchestrationContext each time. Activities answer
 * from a function the test gives; timers fire at their time; external events are raised on
 * the instance they name; sub-orchestrations run as instances of their own.
 *
 *   const run = await replay({ orchestrators: { deploymentSet, deviceBatch }, name: "deploymentSet",
 *     instanceId: "set-1", input, start, activity: (name, input, attempt) => result, events: [...] });
 *
 * Task ids follow the engine's rule: assigned in the order tasks are first yielded (external
 * event waits take none); a retried activity takes one id per retry timer and one per attempt.
 */
import type { OrchestrationHandler } from "durable-functions";
import {
  createOrchestrator,
  DummyOrchestrationContext,
  DurableOrchestrationInput,
  type ReplayAction,
  type ReplayState,
} from "durable-functions/lib/src/util/testingUtils.js";
// The history events are the ones local mode's engine writes: the Durable Task Framework's wire shape.
import { EVENT_TYPE, type HistoryEvent } from "../../local/durable/history.js";

export type { HistoryEvent };

const ActionType = {
  CallActivity: 0,
  CallActivityWithRetry: 1,
  CallSubOrchestrator: 2,
  CreateTimer: 5,
  WaitForExternalEvent: 6,
} as const;

/** Stops a runaway scenario (an orchestrator that never finishes) instead of looping forever. */
const MAX_EPISODES = 200_000;

export interface RaisedEvent {
  instanceId: string;
  name: string;
  payload: unknown;
  at: Date;
}

export interface ReplayOptions {
  orchestrators: Record<string, OrchestrationHandler>;
  name: string;
  instanceId: string;
  input: unknown;
  start: Date;
  /** Answers an activity call; throw to fail the attempt. `attempt` counts from 1. */
  activity: (name: string, input: unknown, attempt: number) => unknown | Promise<unknown>;
  /** External events, raised at their time on the instance they name. */
  events?: RaisedEvent[];
  /**
   * Called whenever nothing is due before virtual time moves on (only later timers or events
   * remain): the place where a test plays the outside world, e.g. devices reporting. Events it
   * returns are raised a millisecond later.
   */
  onIdle?: (now: Date) => RaisedEvent[] | Promise<RaisedEvent[]>;
}

export interface InstanceRecord {
  instanceId: string;
  name: string;
  history: HistoryEvent[];
  state: "running" | "completed" | "failed";
  output?: unknown;
  error?: string;
  customStatus?: unknown;
  /** Largest custom status seen, in bytes of JSON. */
  maxCustomStatusBytes: number;
  episodes: number;
}

export interface ReplayResult {
  root: InstanceRecord;
  instances: Map<string, InstanceRecord>;
  /** Every activity attempt, in the order they ran. */
  activityCalls: { instanceId: string; name: string; input: unknown; attempt: number }[];
  /** Events raised on an instance that did not exist (the real client rejects them with 404). */
  rejectedEvents: RaisedEvent[];
  /** Events raised on an instance that had already finished (dropped, as the host does). */
  droppedEvents: RaisedEvent[];
  /** Timers created per instance, with how many ended cancelled. */
  timers: Map<string, { created: number; cancelled: number }>;
  endedAt: Date;
}

type Completion =
  | { kind: "start"; input: unknown; name: string }
  | { kind: "activity"; id: number; attempts: { ok: boolean; value: unknown }[]; retry: boolean }
  | { kind: "timer"; id: number; fireAt: Date }
  | { kind: "sub"; id: number; ok: boolean; value: unknown }
  | { kind: "event"; name: string; payload: unknown };

interface Instance extends InstanceRecord {
  handler: ReturnType<typeof createOrchestrator>;
  input: unknown;
  parent?: { instanceId: string; taskId: number };
  seenActions: number;
  nextId: number;
  timerActions: Map<number, ReplayAction>;
}

interface Delivery {
  at: number;
  seq: number;
  instanceId: string;
  completion: Completion;
}

export async function replay(options: ReplayOptions): Promise<ReplayResult> {
  const handlers = new Map<string, ReturnType<typeof createOrchestrator>>();
  for (const [name, fn] of Object.entries(options.orchestrators)) handlers.set(name, createOrchestrator(fn));
  const instances = new Map<string, Instance>();
  const queue: Delivery[] = [];
  let seq = 0;
  // The queue stays sorted by time, then arrival: insert after every delivery due at the same time or earlier.
  const enqueue = (delivery: Delivery) => {
    let low = 0;
    let high = queue.length;
    while (low < high) {
      const mid = (low + high) >>> 1;
      if (queue[mid]!.at <= delivery.at) low = mid + 1;
      else high = mid;
    }
    queue.splice(low, 0, delivery);
  };
  const deliver = (at: number, instanceId: string, completion: Completion) =>
    enqueue({ at, seq: seq++, instanceId, completion });
  const result: ReplayResult = {
    root: undefined as unknown as InstanceRecord,
    instances: instances as Map<string, InstanceRecord>,
    activityCalls: [],
    rejectedEvents: [],
    droppedEvents: [],
    timers: new Map(),
    endedAt: options.start,
  };

  const create = (
    name: string,
    instanceId: string,
    input: unknown,
    at: number,
    parent?: Instance["parent"],
  ) => {
    const handler = handlers.get(name);
    if (!handler) throw new Error(`expected an orchestrator named ${name}, found none in the scenario`);
    if (instances.has(instanceId)) throw new Error(`instance id ${instanceId} started twice`);
    const instance: Instance = {
      instanceId,
      name,
      history: [],
      state: "running",
      maxCustomStatusBytes: 0,
      episodes: 0,
      handler,
      input: roundTrip(input),
      parent,
      seenActions: 0,
      nextId: 0,
      timerActions: new Map(),
    };
    instances.set(instanceId, instance);
    result.timers.set(instanceId, { created: 0, cancelled: 0 });
    deliver(at, instanceId, { kind: "start", input, name });
    return instance;
  };

  result.root = create(options.name, options.instanceId, options.input, options.start.getTime());
  for (const event of options.events ?? []) {
    enqueue({
      at: event.at.getTime(),
      seq: seq++,
      instanceId: event.instanceId,
      completion: eventCompletion(event),
    });
  }

  let episodes = 0;
  let now = options.start.getTime();
  while (queue.length > 0) {
    if (options.onIdle && queue[0]!.at > now) {
      const raisedNow = await options.onIdle(new Date(now));
      for (const event of raisedNow) {
        enqueue({
          at: now + 1,
          seq: seq++,
          instanceId: event.instanceId,
          completion: eventCompletion(event),
        });
      }
      now = queue[0]!.at;
      continue;
    }
    if (++episodes > MAX_EPISODES) throw new Error(`scenario still running after ${MAX_EPISODES} episodes`);
    // One episode: everything due for the first instance at the first time, as the host batches it.
    const first = queue[0]!;
    let end = 0;
    while (end < queue.length && queue[end]!.at === first.at) end++;
    const due = queue.slice(0, end);
    const batch = due.filter((d) => d.instanceId === first.instanceId);
    queue.splice(0, end, ...due.filter((d) => d.instanceId !== first.instanceId));
    const instance = instances.get(first.instanceId);
    if (!instance) {
      for (const d of batch) if (d.completion.kind === "event") result.rejectedEvents.push(raised(d));
      continue;
    }
    if (instance.state !== "running") {
      for (const d of batch) if (d.completion.kind === "event") result.droppedEvents.push(raised(d));
      continue;
    }
    now = first.at;
    result.endedAt = new Date(first.at);
    await runEpisode(
      instance,
      first.at,
      batch.map((d) => d.completion),
    );
  }
  return result;

  async function runEpisode(instance: Instance, at: number, completions: Completion[]) {
    const timestamp = new Date(at);
    for (const event of instance.history) event.IsPlayed = true;
    const events: HistoryEvent[] = [historyEvent(EVENT_TYPE.orchestratorStarted, -1, timestamp)];
    // Retry failures first: the engine gives their timers and re-attempts ids as it meets them,
    // before any completion in this episode can resume the orchestrator and schedule more.
    const finals: HistoryEvent[] = [];
    for (const completion of completions) {
      switch (completion.kind) {
        case "start":
          events.push(
            historyEvent(EVENT_TYPE.executionStarted, -1, timestamp, {
              Name: completion.name,
              Input: JSON.stringify(completion.input),
            }),
          );
          break;
        case "activity": {
          let id = completion.id;
          completion.attempts.forEach((attempt, index) => {
            const last = index === completion.attempts.length - 1;
            const outcome = outcomeEvent("task", id, attempt.ok, attempt.value, timestamp);
            // A success, or a failure with no retry to follow, ends the call.
            if (attempt.ok || !completion.retry) {
              finals.push(outcome);
              return;
            }
            events.push(outcome);
            const timerId = instance.nextId++;
            events.push(historyEvent(EVENT_TYPE.timerCreated, timerId, timestamp, { FireAt: timestamp }));
            const fired = historyEvent(EVENT_TYPE.timerFired, -1, timestamp, {
              TimerId: timerId,
              FireAt: timestamp,
            });
            if (last) {
              finals.push(fired);
            } else {
              events.push(fired);
              id = instance.nextId++;
              events.push(historyEvent(EVENT_TYPE.taskScheduled, id, timestamp, { Name: "retry" }));
            }
          });
          break;
        }
        case "timer":
          finals.push(
            historyEvent(EVENT_TYPE.timerFired, -1, timestamp, {
              TimerId: completion.id,
              FireAt: completion.fireAt,
            }),
          );
          break;
        case "sub":
          finals.push(outcomeEvent("sub", completion.id, completion.ok, completion.value, timestamp));
          break;
        case "event":
          finals.push(
            historyEvent(EVENT_TYPE.eventRaised, -1, timestamp, {
              Name: completion.name,
              Input: JSON.stringify(completion.payload),
            }),
          );
          break;
      }
    }
    instance.history.push(...events, ...finals);
    instance.episodes++;

    let state: ReplayState;
    try {
      state = await instance.handler(
        new DurableOrchestrationInput(instance.instanceId, instance.history, instance.input),
        new DummyOrchestrationContext(instance.name, undefined, () => {}),
      );
    } catch (error) {
      finish(instance, at, false, failureMessage(error));
      return;
    }
    instance.history.push(historyEvent(EVENT_TYPE.orchestratorCompleted, -1, timestamp));
    instance.customStatus = state.customStatus;
    if (state.customStatus !== undefined) {
      instance.maxCustomStatusBytes = Math.max(
        instance.maxCustomStatusBytes,
        Buffer.byteLength(JSON.stringify(state.customStatus)),
      );
    }
    const actions = state.actions.flat();
    for (const action of actions.slice(instance.seenActions)) await schedule(instance, action, at);
    instance.seenActions = actions.length;
    // Cancellation is a flag on an action object that each replay builds anew: read the latest.
    let cancelled = 0;
    for (const action of actions)
      if (action.actionType === ActionType.CreateTimer && action.isCanceled) cancelled++;
    result.timers.get(instance.instanceId)!.cancelled = cancelled;
    if (state.isDone) finish(instance, at, true, state.output);
  }

  async function schedule(instance: Instance, action: ReplayAction, at: number) {
    const timestamp = new Date(at);
    switch (action.actionType) {
      case ActionType.WaitForExternalEvent:
        return; // takes no task id and writes no history
      case ActionType.CallActivity:
      case ActionType.CallActivityWithRetry: {
        const id = instance.nextId++;
        const input = typeof action.input === "string" ? JSON.parse(action.input) : roundTrip(action.input);
        instance.history.push(
          historyEvent(EVENT_TYPE.taskScheduled, id, timestamp, { Name: action.functionName }),
        );
        const retry = action.actionType === ActionType.CallActivityWithRetry;
        const maxAttempts = retry ? action.retryOptions!.maxNumberOfAttempts : 1;
        const attempts: { ok: boolean; value: unknown }[] = [];
        for (let attempt = 1; attempt <= maxAttempts; attempt++) {
          result.activityCalls.push({
            instanceId: instance.instanceId,
            name: action.functionName!,
            input,
            attempt,
          });
          try {
            attempts.push({
              ok: true,
              value: roundTrip(await options.activity(action.functionName!, input, attempt)),
            });
            break;
          } catch (error) {
            attempts.push({ ok: false, value: (error as Error).message });
          }
        }
        deliver(at, instance.instanceId, { kind: "activity", id, attempts, retry });
        return;
      }
      case ActionType.CreateTimer: {
        const id = instance.nextId++;
        const fireAt = new Date(action.fireAt!);
        instance.history.push(historyEvent(EVENT_TYPE.timerCreated, id, timestamp, { FireAt: fireAt }));
        result.timers.get(instance.instanceId)!.created++;
        deliver(Math.max(at, fireAt.getTime()), instance.instanceId, { kind: "timer", id, fireAt });
        return;
      }
      case ActionType.CallSubOrchestrator: {
        const id = instance.nextId++;
        instance.history.push(
          historyEvent(EVENT_TYPE.subOrchestrationInstanceCreated, id, timestamp, {
            Name: action.functionName,
            InstanceId: action.instanceId,
          }),
        );
        create(action.functionName!, action.instanceId!, action.input, at, {
          instanceId: instance.instanceId,
          taskId: id,
        });
        return;
      }
      default:
        throw new Error(`the replay harness does not support action type ${action.actionType}`);
    }
  }

  function finish(instance: Instance, at: number, ok: boolean, value: unknown) {
    instance.state = ok ? "completed" : "failed";
    if (ok) instance.output = value;
    else instance.error = String(value);
    if (instance.parent)
      deliver(at, instance.parent.instanceId, { kind: "sub", id: instance.parent.taskId, ok, value });
  }
}

/**
 * The orchestrator's own error message. The engine wraps it as `<text>$OutOfProcData$:<state JSON>`,
 * and the state's `error` is what the host records as the failure reason.
 */
function failureMessage(error: unknown): string {
  const text = error instanceof Error ? error.message : String(error);
  const label = "\n\n$OutOfProcData$:";
  const at = text.indexOf(label);
  if (at < 0) return text;
  try {
    const state = JSON.parse(text.slice(at + label.length)) as { error?: string };
    return state.error ?? text.slice(0, at);
  } catch {
    return text.slice(0, at);
  }
}

function eventCompletion(event: RaisedEvent): Completion {
  return { kind: "event", name: event.name, payload: event.payload };
}

function raised(delivery: Delivery): RaisedEvent {
  const completion = delivery.completion as { name: string; payload: unknown };
  return {
    instanceId: delivery.instanceId,
    name: completion.name,
    payload: completion.payload,
    at: new Date(delivery.at),
  };
}

function historyEvent(
  type: number,
  eventId: number,
  timestamp: Date,
  fields: Record<string, unknown> = {},
): HistoryEvent {
  return { EventType: type, EventId: eventId, IsPlayed: false, Timestamp: timestamp, ...fields };
}

/** The event that ends a task or a sub-orchestration: its result as JSON, or its failure's reason. */
function outcomeEvent(
  of: "task" | "sub",
  id: number,
  ok: boolean,
  value: unknown,
  timestamp: Date,
): HistoryEvent {
  if (ok) {
    const type = of === "task" ? EVENT_TYPE.taskCompleted : EVENT_TYPE.subOrchestrationInstanceCompleted;
    return historyEvent(type, -1, timestamp, { TaskScheduledId: id, Result: JSON.stringify(value ?? null) });
  }
  const type = of === "task" ? EVENT_TYPE.taskFailed : EVENT_TYPE.subOrchestrationInstanceFailed;
  return historyEvent(type, -1, timestamp, { TaskScheduledId: id, Reason: String(value), Details: "" });
}

/** Inputs and outputs pass through JSON in the real host; so they do here. */
function roundTrip<T>(value: T): T {
  return value === undefined ? value : JSON.parse(JSON.stringify(value));
}
