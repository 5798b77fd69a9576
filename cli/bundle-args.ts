/**
 * What the bundle commands (index, diff, apply, inspect, keygen) share: argument parsing,
 * exit codes that scripts can test, and a progress bar that only draws on a terminal.
 */
import { BundleError, type BundleErrorCode } from "../delta/bundle/format.js";
import type { RegistryCredentials } from "../delta/image/registry.js";

export const EXIT_OK = 0;
/** Anything else: I/O failure, unreadable image, internal error. */
export const EXIT_FAILURE = 1;
/** Bad arguments. */
export const EXIT_USAGE = 2;
/** The bundle is malformed, truncated or still arriving. */
export const EXIT_BAD_BUNDLE = 3;
/** The signature does not verify or its key is not trusted. */
export const EXIT_UNTRUSTED = 4;
/** A layer the bundle needs is not available: deploy the base image first. */
export const EXIT_MISSING_SOURCE = 5;
/** A rebuilt layer or config did not match its digest (corrupted source layer or payload). */
export const EXIT_VERIFY_FAILED = 6;

const EXIT_BY_CODE: Record<BundleErrorCode, number> = {
  BAD_MAGIC: EXIT_BAD_BUNDLE,
  VERSION: EXIT_BAD_BUNDLE,
  TRUNCATED: EXIT_BAD_BUNDLE,
  INCOMPLETE: EXIT_BAD_BUNDLE,
  LIMIT: EXIT_BAD_BUNDLE,
  MANIFEST: EXIT_BAD_BUNDLE,
  PAYLOAD: EXIT_BAD_BUNDLE,
  SIGNATURE: EXIT_UNTRUSTED,
  UNTRUSTED_KEY: EXIT_UNTRUSTED,
  MISSING_SOURCE: EXIT_MISSING_SOURCE,
  DIGEST: EXIT_VERIFY_FAILED,
  IO: EXIT_FAILURE,
};

export function exitCodeFor(err: unknown): number {
  return err instanceof BundleError ? EXIT_BY_CODE[err.code] : EXIT_FAILURE;
}

export class UsageError extends Error {}

export interface ParsedArgs {
  readonly positional: string[];
  readonly values: Map<string, string[]>;
  readonly flags: Set<string>;
  one(name: string): string | undefined;
}

/** `--name value`, `--name=value` (repeatable) and boolean `--flag`; unknown options are usage errors. */
export function parseArgs(args: readonly string[], spec: { values: string[]; flags: string[] }): ParsedArgs {
  const positional: string[] = [];
  const values = new Map<string, string[]>();
  const flags = new Set<string>();
  for (let i = 0; i < args.length; i++) {
    const arg = args[i];
    if (arg === "-h") {
      flags.add("help");
      continue;
    }
    if (!arg.startsWith("--")) {
      positional.push(arg);
      continue;
    }
    const eq = arg.indexOf("=");
    const name = arg.slice(2, eq < 0 ? undefined : eq);
    if (spec.flags.includes(name) && eq < 0) {
      flags.add(name);
    } else if (spec.values.includes(name)) {
      const value = eq >= 0 ? arg.slice(eq + 1) : args[++i];
      if (value === undefined) throw new UsageError(`--${name} needs a value`);
      values.set(name, [...(values.get(name) ?? []), value]);
    } else {
      throw new UsageError(`unknown option '--${name}'`);
    }
  }
  return {
    positional,
    values,
    flags,
    one(name: string): string | undefined {
      const list = values.get(name);
      if (list !== undefined && list.length > 1)
        throw new UsageError(`--${name} given ${list.length} times, expected once`);
      return list?.[0];
    },
  };
}

/** Draws `label [=====     ] 42% 12.3/29.0 MB` on stderr when it is a terminal; silent otherwise. */
export class ProgressBar {
  private last = 0;
  private readonly enabled: boolean;
  constructor(enabled = process.stderr.isTTY === true) {
    this.enabled = enabled;
  }

  update(label: string, done: number, total: number): void {
    if (!this.enabled) return;
    const now = Date.now();
    if (now - this.last < 100 && done < total) return;
    this.last = now;
    const width = 30;
    const fraction = total > 0 ? Math.min(1, done / total) : 0;
    const filled = Math.round(fraction * width);
    const mb = (n: number) => (n / 1e6).toFixed(1);
    process.stderr.write(
      `\r${label.slice(0, 30).padEnd(30)} [${"=".repeat(filled)}${" ".repeat(width - filled)}] ${String(Math.round(fraction * 100)).padStart(3)}% ${mb(done)}/${mb(total)} MB`,
    );
  }

  finish(): void {
    if (this.enabled) process.stderr.write("\n");
  }
}

export function formatBytes(n: number): string {
  if (n < 1024) return `${n} B`;
  const units = ["KiB", "MiB", "GiB", "TiB"];
  let value = n / 1024;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  return `${value.toFixed(value < 10 ? 2 : 1)} ${units[unit]}`;
}

/** Registry options from flags and the environment (DELTASHIP_REGISTRY_USERNAME / _PASSWORD / _TOKEN). */
export function registryOptions(insecure: boolean): {
  insecure?: boolean;
  credentials?: RegistryCredentials;
} {
  const env = process.env;
  const credentials: RegistryCredentials = {
    ...(env.DELTASHIP_REGISTRY_USERNAME ? { username: env.DELTASHIP_REGISTRY_USERNAME } : {}),
    ...(env.DELTASHIP_REGISTRY_PASSWORD ? { password: env.DELTASHIP_REGISTRY_PASSWORD } : {}),
    ...(env.DELTASHIP_REGISTRY_TOKEN ? { refreshToken: env.DELTASHIP_REGISTRY_TOKEN } : {}),
  };
  return {
    ...(insecure ? { insecure } : {}),
    ...(Object.keys(credentials).length > 0 ? { credentials } : {}),
  };
}

/** Reports an error the way every bundle command does: one line on stderr, or a JSON object on stdout. */
/** For a command's argument parsing: prints a UsageError with the usage text and returns EXIT_USAGE; rethrows anything else. */
export function usageError(command: string, usage: string, err: unknown): number {
  if (!(err instanceof UsageError)) throw err;
  console.error(`deltaship ${command}: ${err.message}\n\n${usage}`);
  return EXIT_USAGE;
}

export function reportError(command: string, err: unknown, json: boolean): number {
  const code = exitCodeFor(err);
  const message = err instanceof Error ? err.message : String(err);
  if (json) {
    console.log(
      JSON.stringify({
        ok: false,
        exitCode: code,
        error: message,
        ...(err instanceof BundleError ? { code: err.code, where: err.where } : {}),
      }),
    );
  } else {
    console.error(`deltaship ${command}: ${message}`);
  }
  return code;
}
