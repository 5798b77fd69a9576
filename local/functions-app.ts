/**
 * Loads the Function App's real entry point (functions/index.ts) the way the Functions host's
 * Node.js worker does, and keeps what it registers: every trigger, its options and its handler.
 *
 * `@azure/functions` registers through `@azure/functions-core`, a module only the worker
 * provides. Local mode provides it: `installFunctionsCore()` answers that require with an object
 * that records `registerFunction` calls. durable-functions wraps each orchestrator before
 * registering it; the engine needs the generator itself, so its wrapper is patched to keep it.
 */

/**
 * Loads the Function App's real entry point (functions/index.ts) the way the Functions host's
 * Node.js worker does, and keeps what it registers: every trigger, its options and its handler.
 *
 * `@azure/functions` registers through `@azure/functions-core`, a module only the worker
 * provides. Local mode provides it: `installFunctionsCore()` answers that require with an object
 * that records `registerFunction` calls. durable-functions wraps each orchestrator before
 * registering it; the engine needs the generator itself, so its wrapper is patched to keep it.
 */
import Module, { createRequire } from "node:module";
import type { OrchestrationHandler } from "durable-functions";
import type { ActivityHandler } from "./durable/engine.js";

const require = createRequire(import.meta.url);

export interface BindingMetadata {
  type: string;
  direction?: string;
  name: string;
  [property: string]: unknown;
}

export interface RegisteredFunction {
  name: string;
  /** The trigger binding: type (httpTrigger, eventHubTrigger, orchestrationTrigger, …) and its options. */
  trigger: BindingMetadata;
  /** Input bindings other than the trigger, e.g. the durable client. */
  extraInputs: BindingMetadata[];
  handler: (...args: unknown[]) => unknown;
  /** For orchestrations: the generator function itself, for the local engine. */
  orchestrator?: OrchestrationHandler;
}

interface CoreFunctionMetadata {
  name: string;
  bindings: Record<string, BindingMetadata>;
}

/** The name of the worker-provided module that @azure/functions loads lazily. */
const CORE_MODULE = "@azure/functions-core";
const VIRTUAL_FILENAME = "/deltaship-local/@azure/functions-core.js";

/** Where the orchestrator generator is kept on durable-functions' wrapper. */
const ORCHESTRATOR = Symbol.for("deltaship.local.orchestrator");
const registered = new Map<string, RegisteredFunction>();
let installed = false;

type ResolveFilename = (request: string, ...rest: unknown[]) => string;

/**
 * Must run before anything calls `app.*`: @azure/functions looks the core module up once and
 * remembers a failure (that is its "test mode").
 */
export function installFunctionsCore(): void {
  if (installed) return;
  installed = true;
  const core = {
    registerFunction(metadata: CoreFunctionMetadata, handler: (...args: unknown[]) => unknown) {
      const bindings = Object.values(metadata.bindings);
      const trigger = bindings.find((b) => b.direction === "in" && b.type.endsWith("Trigger"));
      if (trigger === undefined) throw new Error(`function ${metadata.name} has no trigger binding`);
      registered.set(metadata.name, {
        name: metadata.name,
        trigger,
        extraInputs: bindings.filter((b) => b !== trigger && b.direction === "in"),
        handler,
        orchestrator: (handler as { [ORCHESTRATOR]?: OrchestrationHandler })[ORCHESTRATOR],
      });
      return { dispose() {} };
    },
    setProgrammingModel() {},
    getProgrammingModel() {
      return undefined;
    },
    registerHook() {
      return { dispose() {} };
    },
    log() {},
  };
  const virtual = new Module(VIRTUAL_FILENAME);
  virtual.filename = VIRTUAL_FILENAME;
  virtual.loaded = true;
  virtual.exports = core;
  require.cache[VIRTUAL_FILENAME] = virtual;
  const moduleWithResolve = Module as unknown as { _resolveFilename: ResolveFilename };
  const resolve = moduleWithResolve._resolveFilename;
  moduleWithResolve._resolveFilename = function (this: unknown, request: string, ...rest: unknown[]) {
    return request === CORE_MODULE ? VIRTUAL_FILENAME : resolve.call(this, request, ...rest);
  };

  const testingUtils = require("durable-functions/lib/src/util/testingUtils.js") as {
    createOrchestrator: (fn: OrchestrationHandler) => unknown;
  };
  const wrap = testingUtils.createOrchestrator;
  testingUtils.createOrchestrator = (fn: OrchestrationHandler) => {
    const wrapped = wrap(fn) as Record<symbol, unknown>;
    wrapped[ORCHESTRATOR] = fn;
    return wrapped;
  };
}

export class LocalFunctionApp {
  private constructor(readonly functions: ReadonlyMap<string, RegisteredFunction>) {}

  /** Imports the app entry point (a module that registers functions) and returns what it registered. */
  static async load(entry: string | URL): Promise<LocalFunctionApp> {
    installFunctionsCore();
    await import(String(entry));
    if (registered.size === 0) {
      throw new Error(
        `loading ${String(entry)} registered no functions; is it the Function App entry point?`,
      );
    }
    return new LocalFunctionApp(new Map(registered));
  }

  withTrigger(type: string): RegisteredFunction[] {
    return [...this.functions.values()].filter((f) => f.trigger.type === type);
  }

  orchestrators(): Map<string, OrchestrationHandler> {
    const map = new Map<string, OrchestrationHandler>();
    for (const f of this.withTrigger("orchestrationTrigger")) {
      if (f.orchestrator === undefined)
        throw new Error(`orchestration ${f.name} was registered without its generator`);
      map.set(f.name, f.orchestrator);
    }
    return map;
  }

  activities(): Map<string, ActivityHandler> {
    const map = new Map<string, ActivityHandler>();
    for (const f of this.withTrigger("activityTrigger")) {
      map.set(f.name, (input, context) => f.handler(input, context));
    }
    return map;
  }
}
