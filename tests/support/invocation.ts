import azureFunctions, { type InvocationContext } from "@azure/functions";

/**
 * A recording InvocationContext factory for calling function handlers without a host: each context
 * it makes carries the given trigger metadata, and every line the handler logs lands in `logs`
 * as `level: message`.
 */
export function recordingContexts(
  functionName: string,
  logs: string[],
): (triggerMetadata?: Record<string, unknown>) => InvocationContext {
  return (triggerMetadata = {}) =>
    new azureFunctions.InvocationContext({
      functionName,
      triggerMetadata,
      logHandler: (level, ...args) => logs.push(`${level}: ${args.join(" ")}`),
    });
}
