// Declarations for the durable-functions internals the local engine drives: the Orchestrator that
// replays a generator against a history, and its executor's table of open tasks (ids the library
// itself assigned), which tells the engine exactly what the orchestrator is waiting for.
declare module "durable-functions/lib/src/orchestrations/Orchestrator.js" {
  import type { InvocationContext } from "@azure/functions";
  import type { OrchestrationHandler } from "durable-functions";

  export interface OpenTask {
    id: number | string | false;
    actionObj?: Record<string, unknown> & { actionType: number };
    parent?: OpenTaskParent;
    stateObj?: number;
  }
  export interface OpenTaskParent {
    isWaitingOnTimer?: boolean;
    attemptNumber?: number;
    innerTask?: OpenTask;
    retryOptions?: {
      firstRetryIntervalInMilliseconds: number;
      maxNumberOfAttempts: number;
      backoffCoefficient?: number;
      maxRetryIntervalInMilliseconds?: number;
    };
  }
  export interface OrchestratorState {
    isDone: boolean;
    actions: unknown[];
    output?: unknown;
    error?: string;
    customStatus?: unknown;
  }
  export class Orchestrator {
    constructor(fn: OrchestrationHandler);
    handle(trigger: unknown, context: InvocationContext): Promise<OrchestratorState>;
    taskOrchestrationExecutor: {
      openTasks: Record<string, OpenTask>;
      openEvents: Record<string, OpenTask[]>;
      willContinueAsNew: boolean;
      actions: unknown[];
    };
  }
}

declare module "durable-functions/lib/src/orchestrations/DurableOrchestrationBindingInfo.js" {
  export class DurableOrchestrationBindingInfo {
    constructor(
      history: unknown[],
      input: unknown,
      instanceId: string,
      isReplaying: boolean,
      parentInstanceId: string | undefined,
      maximumShortTimerDuration: string,
      longRunningTimerIntervalDuration: string,
      defaultHttpAsyncRequestSleepTimeMillseconds: number,
      upperSchemaVersion: number,
    );
  }
}
