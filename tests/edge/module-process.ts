/**
 * Runs the edge module's real program (`edge-module/main.ts`) as a child process, the way the
 * container runs it, and collects its JSON log lines so a test can wait for a step.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { once } from "node:events";
import { join } from "node:path";

/** Bound on every wait for the module, so a stuck module fails the test instead of hanging it. */
export const MODULE_WAIT_MS = 30_000;

export interface LogLine {
  readonly step: string;
  readonly level: string;
  readonly bundleId?: string;
  readonly [field: string]: unknown;
}

export interface ModuleProcess {
  readonly child: ChildProcess;
  readonly logs: LogLine[];
  /** Output that was not a JSON log line (should stay empty). */
  readonly stray: string[];
  waitForLog(predicate: (line: LogLine) => boolean, what: string, timeoutMs?: number): Promise<LogLine>;
  /** Resolves with how the process ended. */
  readonly exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** SIGTERM and wait for a clean exit. */
  stop(): Promise<void>;
}

const MAIN = join(import.meta.dirname, "..", "..", "edge-module", "main.ts");

/** `entry`: a compiled `main.js` to run instead of the TypeScript source (what the container runs). */
export function startModule(env: Record<string, string>, entry?: string): ModuleProcess {
  const args = entry ? [entry] : ["--import", "tsx", MAIN];
  const child = spawn(process.execPath, args, {
    env: { ...process.env, ...env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  const logs: LogLine[] = [];
  const stray: string[] = [];
  const wakers = new Set<() => void>();
  let pending = "";
  child.stdout!.on("data", (chunk: Buffer) => {
    pending += chunk.toString("utf8");
    let newline = pending.indexOf("\n");
    while (newline >= 0) {
      const line = pending.slice(0, newline);
      pending = pending.slice(newline + 1);
      try {
        logs.push(JSON.parse(line) as LogLine);
      } catch {
        stray.push(line);
      }
      newline = pending.indexOf("\n");
    }
    for (const wake of wakers) wake();
  });
  child.stderr!.on("data", (chunk: Buffer) => {
    stray.push(chunk.toString("utf8"));
  });
  const exited = once(child, "exit").then(([code, signal]) => ({
    code: code as number | null,
    signal: signal as NodeJS.Signals | null,
  }));
  let ended = false;
  void exited.then(() => {
    ended = true;
    for (const wake of wakers) wake();
  });

  return {
    child,
    logs,
    stray,
    exited,
    async waitForLog(predicate, what, timeoutMs = MODULE_WAIT_MS) {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        const found = logs.find(predicate);
        if (found) return found;
        const left = deadline - Date.now();
        if (left <= 0 || ended) {
          throw new Error(
            `${ended ? "the module exited" : `timed out after ${timeoutMs} ms`} waiting for ${what}; last log lines: ${logs
              .slice(-5)
              .map((l) => JSON.stringify(l))
              .join("\n")}\n${stray.join("").slice(-2000)}`,
          );
        }
        await new Promise<void>((resolve) => {
          const timer = setTimeout(done, Math.min(left, 500));
          function done() {
            clearTimeout(timer);
            wakers.delete(done);
            resolve();
          }
          wakers.add(done);
        });
      }
    },
    async stop() {
      if (!ended) child.kill("SIGTERM");
      const { code, signal } = await exited;
      if (code !== 0)
        throw new Error(
          `the module ended with code ${code} signal ${signal}: ${stray.join("").slice(-2000)}`,
        );
    },
  };
}
