/**
 * The module's settings, all from the environment (IoT Edge passes them through the deployment
 * manifest's `env`). Every setting has a default that fits the documented deployment.
 */
import { readFileSync } from "node:fs";
import { join } from "node:path";
import type { TrustedKeys } from "./engine.js";
import { DEFAULT_IGNORED_SUFFIXES } from "./inbox.js";
import { type CrashPoint, SOURCE_WAIT_MS } from "./processor.js";
import type { RetryPolicy } from "./reports.js";

export interface EdgeSettings {
  readonly inboxDir: string;
  readonly stateDir: string;
  /** `host:port` of the local registry, e.g. `localRegistry:5000` (the registry module's name) on the IoT Edge network. */
  readonly registry: string;
  /** An OCI image layout folder holding the device's images, used instead of the registry when set. */
  readonly imageLayout?: string;
  readonly trustedKeys: TrustedKeys;
  readonly pollMs: number;
  readonly quietMs: number;
  readonly retry: RetryPolicy;
  readonly ignoredSuffixes: readonly string[];
  readonly registryStorageDir?: string;
  readonly diskReserveBytes?: number;
  readonly crashAfter?: CrashPoint;
  /** How long a bundle waits in the inbox for source layers another bundle brings. */
  readonly sourceWaitMs: number;
  /** Things worth a log line at start (a keys file named but absent, …). */
  readonly warnings: readonly string[];
}

const CRASH_POINTS: readonly CrashPoint[] = ["claimed", "verified", "applied", "pushed", "reported"];

function integer(env: NodeJS.ProcessEnv, name: string, fallback: number, min: number): number {
  const text = env[name];
  if (text === undefined || text === "") return fallback;
  const value = Number(text);
  if (!Number.isSafeInteger(value) || value < min) {
    throw new Error(`${name}=${JSON.stringify(text)}: expected a whole number of at least ${min}`);
  }
  return value;
}

/**
 * Trusted keys as JSON `{ "<label>": "<public key PEM or raw hex/base64>" }`, or one PEM key,
 * from `DELTASHIP_TRUSTED_KEYS` or the file named by `DELTASHIP_TRUSTED_KEYS_FILE`.
 */
export function parseTrustedKeys(text: string, where: string): TrustedKeys {
  const trimmed = text.trim();
  if (trimmed === "") return {};
  if (trimmed.startsWith("-----BEGIN")) return { [where]: trimmed };
  let parsed: unknown;
  try {
    parsed = JSON.parse(trimmed);
  } catch {
    throw new Error(`${where}: expected JSON {"<label>": "<public key>"} or a PEM public key, found neither`);
  }
  if (typeof parsed !== "object" || parsed === null || Array.isArray(parsed)) {
    throw new Error(`${where}: expected a JSON object of label to public key`);
  }
  const keys: Record<string, string> = {};
  for (const [label, value] of Object.entries(parsed)) {
    if (typeof value !== "string" || value === "")
      throw new Error(`${where}: key "${label}" is not a non-empty string`);
    keys[label] = value;
  }
  return keys;
}

export function readSettings(env: NodeJS.ProcessEnv = process.env): EdgeSettings {
  const inboxDir = env.DELTASHIP_INBOX || "/inbox";
  const warnings: string[] = [];
  const keysFile = env.DELTASHIP_TRUSTED_KEYS_FILE;
  let fileText = "";
  if (keysFile) {
    try {
      fileText = readFileSync(keysFile, "utf8");
    } catch (error) {
      // Keys may come from the twin alone: a missing file must not put the module in a restart loop.
      if ((error as NodeJS.ErrnoException).code !== "ENOENT") throw error;
      warnings.push(
        `DELTASHIP_TRUSTED_KEYS_FILE ${keysFile} does not exist; using the twin's trustedKeys only`,
      );
    }
  }
  const trustedKeys = {
    ...(keysFile ? parseTrustedKeys(fileText, keysFile) : {}),
    ...parseTrustedKeys(env.DELTASHIP_TRUSTED_KEYS ?? "", "DELTASHIP_TRUSTED_KEYS"),
  };
  const crashAfter = env.DELTASHIP_CRASH_AFTER as CrashPoint | undefined;
  if (crashAfter && !CRASH_POINTS.includes(crashAfter)) {
    throw new Error(`DELTASHIP_CRASH_AFTER=${crashAfter}: expected one of ${CRASH_POINTS.join(", ")}`);
  }
  const extraIgnored = (env.DELTASHIP_IGNORE_SUFFIXES ?? "").split(",").filter((s) => s !== "");
  return {
    inboxDir,
    // Inside the inbox volume by default: one volume holds everything, and it is a dotfile the watcher skips.
    stateDir: env.DELTASHIP_STATE || join(inboxDir, ".deltaship"),
    registry: (env.DELTASHIP_REGISTRY || "localRegistry:5000").replace(/^https?:\/\//, ""),
    ...(env.DELTASHIP_IMAGE_LAYOUT ? { imageLayout: env.DELTASHIP_IMAGE_LAYOUT } : {}),
    trustedKeys,
    pollMs: integer(env, "DELTASHIP_POLL_MS", 2_000, 10),
    quietMs: integer(env, "DELTASHIP_QUIET_MS", 10_000, 0),
    retry: {
      initialDelayMs: integer(env, "DELTASHIP_REPORT_RETRY_MS", 1_000, 10),
      maxDelayMs: integer(env, "DELTASHIP_REPORT_RETRY_MAX_MS", 60_000, 10),
    },
    ignoredSuffixes: [...DEFAULT_IGNORED_SUFFIXES, ...extraIgnored],
    // A layout's folder is where the images are written, so its free space is checked like the registry's.
    ...(env.DELTASHIP_REGISTRY_STORAGE || env.DELTASHIP_IMAGE_LAYOUT
      ? { registryStorageDir: (env.DELTASHIP_REGISTRY_STORAGE || env.DELTASHIP_IMAGE_LAYOUT)! }
      : {}),
    ...(env.DELTASHIP_DISK_RESERVE_BYTES
      ? { diskReserveBytes: integer(env, "DELTASHIP_DISK_RESERVE_BYTES", 0, 0) }
      : {}),
    ...(crashAfter ? { crashAfter } : {}),
    sourceWaitMs: integer(env, "DELTASHIP_SOURCE_WAIT_MS", SOURCE_WAIT_MS, 0),
    warnings,
  };
}
