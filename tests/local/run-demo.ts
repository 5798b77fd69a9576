// Runs the real `deltaship demo` command in its own process, as a user runs it: the app's
// settings and cached clients belong to one run, like one Function App.
import { type ChildProcessWithoutNullStreams, spawn } from "node:child_process";
import { readFile } from "node:fs/promises";
import { join } from "node:path";

/** The --json object, exactly the shape issue 7 gives. */
export interface DemoJson {
  outcome: string;
  setId: string;
  devices: {
    id: string;
    outcome: string;
    images: {
      image: string;
      digest: string;
      bytesSent: number;
      pullBytes: number;
      outcome: string;
      reason?: string;
    }[];
  }[];
  manifestPushes: { device: string; at: string }[];
  emails: { to: string; subject: string; at: string }[];
}

/** result.json in the work dir: the fuller record. */
export interface DemoRecord {
  store: string;
  devices: { id: string; images: { image: string; verified: boolean; linkMs: number }[] }[];
  arrivals: { device: string; image: string; at: string }[];
  workDir: string;
}

/** A run takes about a minute; past this something hangs. */
export const RUN_LIMIT_MS = 6 * 60 * 1000;
/** How long the demo may take to stop its services after SIGTERM or SIGINT. */
export const STOP_LIMIT_MS = 30_000;

export const root = join(import.meta.dirname, "../..");

/** Starts the command; port 0 lets the host pick a free port so a developer's running demo does not collide. */
export function startDemo(args: string[]): ChildProcessWithoutNullStreams {
  return spawn(process.execPath, ["bin/deltaship.mjs", "demo", "--port", "0", ...args], {
    cwd: root,
    stdio: ["pipe", "pipe", "pipe"],
  });
}

/** Runs the command to its end; stdout and the tail of stderr are kept for assertions and messages. */
export function runCommand(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  const child = startDemo(args);
  let stdout = "";
  let stderr = "";
  child.stdout.on("data", (c: Buffer) => (stdout += c.toString()));
  child.stderr.on("data", (c: Buffer) => (stderr = (stderr + c.toString()).slice(-8000)));
  // Past the limit: SIGTERM lets the demo stop the services it started; SIGKILL if that hangs too.
  const timer = setTimeout(() => {
    child.kill("SIGTERM");
    setTimeout(() => child.kill("SIGKILL"), STOP_LIMIT_MS).unref();
  }, RUN_LIMIT_MS);
  return new Promise((resolve) => {
    child.on("exit", (code) => {
      clearTimeout(timer);
      resolve({ code, stdout, stderr });
    });
  });
}

/** Runs `demo --json` with the given work dir and reads both the JSON and result.json. */
export async function runDemoJson(
  workDir: string,
  ...extra: string[]
): Promise<{ code: number | null; result: DemoJson; record: DemoRecord }> {
  const { code, stdout, stderr } = await runCommand([
    "--json",
    "--time-factor",
    "60",
    "--work-dir",
    workDir,
    ...extra,
  ]);
  let result: DemoJson;
  try {
    result = JSON.parse(stdout) as DemoJson;
  } catch {
    throw new Error(`deltaship demo exited ${code} without one JSON object on stdout: ${stdout}\n${stderr}`);
  }
  const record = JSON.parse(await readFile(join(workDir, "result.json"), "utf8")) as DemoRecord;
  return { code, result, record };
}
