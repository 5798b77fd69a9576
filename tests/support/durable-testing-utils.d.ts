// Declarations for durable-functions' internal, untyped testing helpers (lib/src/util/testingUtils.js),
// which drive an orchestrator through the library's real replay engine from a recorded history.
declare module "durable-functions/lib/src/util/testingUtils.js" {
  import type { InvocationContext } from "@azure/functions";
  import type { OrchestrationContext, OrchestrationHandler } from "durable-functions";

  export class DummyOrchestrationContext extends InvocationContext implements OrchestrationContext {
    constructor(
      functionName?: string,
      invocationId?: string,
      logHandler?: (level: string, ...args: unknown[]) => void,
    );
    df: OrchestrationContext["df"];
  }

  export class DurableOrchestrationInput {
    constructor(
      instanceId?: string,
      history?: unknown[],
      input?: unknown,
      longRunningTimerIntervalDuration?: string,
      maximumShortTimerDuration?: string,
      defaultHttpAsyncRequestSleepTimeMillseconds?: number,
      schemaVersion?: number,
      isReplaying?: boolean,
      parentInstanceId?: string,
    );
  }

  /** What one replay returns: done or not, every action scheduled so far, output, custom status. */
  export interface ReplayState {
    isDone: boolean;
    actions: ReplayAction[][];
    output?: unknown;
    error?: string;
    customStatus?: unknown;
  }

  export interface ReplayAction {
    actionType: number;
    functionName?: string;
    input?: unknown;
    instanceId?: string;
    fireAt?: Date;
    isCanceled?: boolean;
    retryOptions?: { firstRetryIntervalInMilliseconds: number; maxNumberOfAttempts: number };
    externalEventName?: string;
  }

  export function createOrchestrator(
    fn: OrchestrationHandler,
  ): (input: DurableOrchestrationInput, context: DummyOrchestrationContext) => Promise<ReplayState>;
}
