/**
 * JSON logs, one line per step: `{"time","level","step","bundleId"?,"ms"?,…}`. IoT Edge keeps a
 * module's stdout, so an operator reads them with `iotedge logs`; tests parse them.
 */

export type LogLevel = "info" | "warn" | "error";

export interface Logger {
  log(level: LogLevel, step: string, fields?: Record<string, unknown>): void;
}

export function jsonLogger(write: (line: string) => void = (line) => process.stdout.write(line)): Logger {
  return {
    log(level, step, fields = {}) {
      write(`${JSON.stringify({ time: new Date().toISOString(), level, step, ...fields })}\n`);
    },
  };
}

/** Turns anything thrown into the one-line reason a report and a log carry. */
export function errorText(error: unknown): string {
  if (error instanceof Error) return error.message;
  return String(error);
}
