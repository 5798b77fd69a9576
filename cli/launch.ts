/**
 * How the `deltaship` launchers start the command line: `apply`, the command a device runs, is
 * started again in a child Node.js process with glibc's malloc told to map every allocation of
 * 1 MiB or more on its own (`glibc.malloc.mmap_threshold`), unless the environment already says.
 *
 * By default glibc raises that threshold each time such a block is freed, up to 32 MiB, and then
 * serves large blocks from its heap, which it does not give back: the decoded layers' buffers left
 * the first image's apply (docs/bundle.md) at 161-182 MB of peak RSS, 140-157 MB with the
 * threshold fixed, at the same speed. The edge module's image sets the same variable
 * (edge-module/Dockerfile). A setting in the environment of a running process has no effect,
 * hence the child; it costs one Node.js start-up (tens of milliseconds) on a command that runs for
 * seconds.
 *
 * The child also gets V8's young generation capped at 1 MiB a semi-space (`--max-semi-space-size`,
 * unless the flags or NODE_OPTIONS set it): the buffers an apply streams through (inflated held
 * layers, decoded output) are freed only when the small objects that hold them are collected, and
 * with the default semi-spaces (up to 16 MiB) those collections came late. The 2.4 GB image's
 * apply into a registry peaked at 162-167 MB of RSS, 132-136 MB with the cap, at the same speed
 * (docs/bundle.md, "Applying").
 */
import { spawnSync } from "node:child_process";
import { constants } from "node:os";
import { main } from "./main.js";

export const MALLOC_TUNABLE = "glibc.malloc.mmap_threshold=1048576";

/** The V8 flag the tuned commands run with. */
export const YOUNG_GENERATION_FLAG = "--max-semi-space-size=1";

/** Commands started with the tunable: the ones whose memory a device must bound. */
const TUNED_COMMANDS = new Set(["apply"]);

/**
 * The environment with the tunable added to GLIBC_TUNABLES, or undefined when nothing is to change
 * (not Linux, or GLIBC_TUNABLES already sets the threshold).
 */
export function tunedEnvironment(
  env: NodeJS.ProcessEnv,
  platform: NodeJS.Platform = process.platform,
): NodeJS.ProcessEnv | undefined {
  if (platform !== "linux") return undefined;
  const current = env.GLIBC_TUNABLES;
  if (current?.split(":").some((t) => t.startsWith("glibc.malloc.mmap_threshold="))) return undefined;
  return { ...env, GLIBC_TUNABLES: current ? `${current}:${MALLOC_TUNABLE}` : MALLOC_TUNABLE };
}

/** The V8 flags to add for a tuned command: none when its flags or NODE_OPTIONS set them already. */
export function tunedFlags(execArgv: readonly string[], env: NodeJS.ProcessEnv): string[] {
  const given = [...execArgv, ...(env.NODE_OPTIONS?.split(/\s+/) ?? [])];
  return given.some((flag) => flag.startsWith("--max-semi-space-size")) ? [] : [YOUNG_GENERATION_FLAG];
}

/**
 * Runs the command line for `argv` (the arguments after the script) in this process, or for a
 * tuned command in a child process started the same way as this one, plus the tuning (`script`
 * is this process's entry script); returns the exit code.
 */
export async function launch(argv: string[], script: string): Promise<number> {
  if (!TUNED_COMMANDS.has(argv[0] ?? "")) return main(argv);
  const env = tunedEnvironment(process.env);
  const flags = tunedFlags(process.execArgv, process.env);
  if (env === undefined && flags.length === 0) return main(argv);
  const child = spawnSync(process.execPath, [...flags, ...process.execArgv, script, ...argv], {
    stdio: "inherit",
    env: env ?? process.env,
  });
  if (child.error !== undefined) {
    process.stderr.write(`deltaship: could not start ${process.execPath}: ${child.error.message}\n`);
    return 1;
  }
  if (child.signal !== null) return 128 + (constants.signals[child.signal] ?? 0);
  return child.status ?? 1;
}
