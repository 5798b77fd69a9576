/**
 * The inbox: a folder the file-transfer tool writes into. A bundle may arrive slowly, be written
 * in place (preallocated, then filled), be renamed into place, or stop halfway and resume days
 * later. A file is handed on only when its size has stopped changing for a quiet period and
 * equals the length its header declares. Nothing here deletes or moves a file.
 */
import { readdir, stat } from "node:fs/promises";
import { join } from "node:path";
import type { BundleHead } from "./engine.js";
import { errorText } from "./log.js";

/** Names file movers use while a transfer is in progress (`*.part`, dotfiles, …): never bundles. */
export const DEFAULT_IGNORED_SUFFIXES = [
  ".part",
  ".partial",
  ".tmp",
  ".temp",
  ".filepart",
  ".crdownload",
  ".fctmp",
  ".reason.txt",
  "~",
];

export function isIgnoredName(
  name: string,
  ignoredSuffixes: readonly string[] = DEFAULT_IGNORED_SUFFIXES,
): boolean {
  return name.startsWith(".") || ignoredSuffixes.some((suffix) => name.endsWith(suffix));
}

/** What the inbox decided about one file. */
export type Arrival =
  | { readonly kind: "complete"; readonly name: string; readonly path: string; readonly head: BundleHead }
  /** Stable but can never become a bundle (not a bundle, or longer than declared). */
  | { readonly kind: "unusable"; readonly name: string; readonly path: string; readonly reason: string };

interface Seen {
  size: number;
  mtimeMs: number;
  stableSince: number;
  /** Size at which the file was last found incomplete, so a stalled transfer is not re-read every poll. */
  checkedAtSize?: number;
}

export interface InboxOptions {
  readonly dir: string;
  /** How long size and mtime must stay the same before the file is read. */
  readonly quietMs: number;
  readonly ignoredSuffixes?: readonly string[];
  declaredLength(path: string): Promise<number | undefined>;
  readHead(path: string): Promise<BundleHead>;
  /** True while a full-length file still has holes (written in place into a preallocated file). */
  hasUnfilledBlock(path: string): Promise<boolean>;
  /** Clock, for tests that drive the watcher poll by poll. */
  now?(): number;
}

/**
 * Call `poll` on a timer; each call returns the files that became ready since the last one.
 * A file handed out is not handed out again until it changes or `forget` is called.
 */
export class Inbox {
  private readonly seen = new Map<string, Seen>();
  private readonly handed = new Set<string>();

  constructor(private readonly options: InboxOptions) {}

  forget(name: string): void {
    this.seen.delete(name);
    this.handed.delete(name);
  }

  async poll(): Promise<Arrival[]> {
    const now = this.options.now?.() ?? Date.now();
    const arrivals: Arrival[] = [];
    const present = new Set<string>();
    for (const entry of await readdir(this.options.dir, { withFileTypes: true })) {
      if (!entry.isFile() || isIgnoredName(entry.name, this.options.ignoredSuffixes)) continue;
      present.add(entry.name);
      const path = join(this.options.dir, entry.name);
      let size: number;
      let mtimeMs: number;
      try {
        ({ size, mtimeMs } = await stat(path));
      } catch {
        continue; // renamed away between readdir and stat
      }
      const before = this.seen.get(entry.name);
      if (!before || before.size !== size || before.mtimeMs !== mtimeMs) {
        this.seen.set(entry.name, { size, mtimeMs, stableSince: now });
        this.handed.delete(entry.name);
        continue;
      }
      if (this.handed.has(entry.name) || now - before.stableSince < this.options.quietMs) continue;
      if (before.checkedAtSize === size) continue;
      const arrival = await this.check(entry.name, path, size);
      if (arrival) {
        arrivals.push(arrival);
        this.handed.add(entry.name);
      } else {
        before.checkedAtSize = size;
      }
    }
    for (const name of this.seen.keys()) {
      if (!present.has(name)) this.forget(name);
    }
    return arrivals;
  }

  private async check(name: string, path: string, size: number): Promise<Arrival | undefined> {
    let declared: number | undefined;
    try {
      declared = await this.options.declaredLength(path);
    } catch (error) {
      return { kind: "unusable", name, path, reason: `${name} is not a bundle: ${errorText(error)}` };
    }
    if (declared === undefined || size < declared) return undefined; // still arriving
    if (size > declared) {
      return {
        kind: "unusable",
        name,
        path,
        reason: `${name} is ${size} bytes but its header declares ${declared}; the transfer wrote past the end of the bundle, send it again`,
      };
    }
    let head: BundleHead;
    try {
      head = await this.options.readHead(path);
    } catch (error) {
      return { kind: "unusable", name, path, reason: `${name} has a damaged manifest: ${errorText(error)}` };
    }
    if (await this.options.hasUnfilledBlock(path)) return undefined;
    return { kind: "complete", name, path, head };
  }
}
