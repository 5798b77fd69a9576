/**
 * History events in the shape the durable-functions replay library reads (the Durable Task
 * Framework's wire names: EventType, EventId, IsPlayed, Timestamp and per-type fields).
 */

export const EVENT_TYPE = {
  executionStarted: 0,
  taskScheduled: 4,
  taskCompleted: 5,
  taskFailed: 6,
  subOrchestrationInstanceCreated: 7,
  subOrchestrationInstanceCompleted: 8,
  subOrchestrationInstanceFailed: 9,
  timerCreated: 10,
  timerFired: 11,
  orchestratorStarted: 12,
  orchestratorCompleted: 13,
  eventRaised: 15,
} as const;

export interface HistoryEvent {
  EventType: number;
  EventId: number;
  IsPlayed: boolean;
  Timestamp: Date;
  [field: string]: unknown;
}

function event(type: number, eventId: number, fields: Record<string, unknown> = {}): HistoryEvent {
  return { EventType: type, EventId: eventId, IsPlayed: false, Timestamp: new Date(), ...fields };
}

/** JSON text of a result; the library parses it back, so undefined travels as null. */
function json(value: unknown): string {
  return JSON.stringify(value) ?? "null";
}

export const executionStarted = (name: string, input: unknown) =>
  event(EVENT_TYPE.executionStarted, -1, { Name: name, Input: json(input) });
export const orchestratorStarted = (at: Date) => ({
  ...event(EVENT_TYPE.orchestratorStarted, -1),
  Timestamp: at,
});
export const orchestratorCompleted = () => event(EVENT_TYPE.orchestratorCompleted, -1);
export const taskScheduled = (id: number, name: string) =>
  event(EVENT_TYPE.taskScheduled, id, { Name: name });
export const taskCompleted = (id: number, result: unknown) =>
  event(EVENT_TYPE.taskCompleted, -1, { TaskScheduledId: id, Result: json(result) });
export const taskFailed = (id: number, error: unknown) =>
  event(EVENT_TYPE.taskFailed, -1, { TaskScheduledId: id, ...failure(error) });
export const timerCreated = (id: number, fireAt: Date) =>
  event(EVENT_TYPE.timerCreated, id, { FireAt: fireAt });
export const timerFired = (id: number, fireAt: Date) =>
  event(EVENT_TYPE.timerFired, -1, { TimerId: id, FireAt: fireAt });
export const subOrchestrationCreated = (id: number, name: string, instanceId: string) =>
  event(EVENT_TYPE.subOrchestrationInstanceCreated, id, { Name: name, InstanceId: instanceId });
export const subOrchestrationCompleted = (id: number, result: unknown) =>
  event(EVENT_TYPE.subOrchestrationInstanceCompleted, -1, { TaskScheduledId: id, Result: json(result) });
export const subOrchestrationFailed = (id: number, error: unknown) =>
  event(EVENT_TYPE.subOrchestrationInstanceFailed, -1, { TaskScheduledId: id, ...failure(error) });
export const eventRaised = (name: string, input: unknown) =>
  event(EVENT_TYPE.eventRaised, -1, { Name: name, Input: json(input) });

function failure(error: unknown): { Reason: string; Details: string } {
  if (error instanceof Error) return { Reason: error.message, Details: error.stack ?? error.name };
  return { Reason: String(error), Details: "" };
}
