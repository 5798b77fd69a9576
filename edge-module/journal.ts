/**
 * The per-bundle journal: one small JSON file per bundle id under `<state>/journal/`, rewritten
 * atomically at each step. On restart it tells the module where a bundle stopped, and it is
 * what makes a second delivery of an applied bundle a report instead of a second apply.
 *
 * Steps, in order:
 * - `claimed`: the complete bundle was moved to `processing/`; work starts (or restarts) at the
 *   signature check, since nothing under a tag has changed yet.
 * - `pushed`: the image is in the registry under its tag (blobs verified, manifest last).
 * - `failing`: the bundle was rejected; `reason` is final.
 * - `reported`: the report is in the on-disk queue.
 * - `finished`: the bundle file is in `done/` or `failed/`.
 */
import { mkdir, readdir, readFile } from "node:fs/promises";
import { join } from "node:path";
import { writeFileAtomic } from "./files.js";

export type BundleStep = "claimed" | "pushed" | "failing" | "reported" | "finished";

export interface JournalEntry {
  readonly bundleId: string;
  /** Name the bundle arrived under in the inbox; it keeps that name in `done/` or `failed/`. */
  readonly fileName: string;
  readonly setId: string;
  /** The bundle id reports carry: the cloud's, from the file name (see processor.ts `namePart`). */
  readonly reportedId: string;
  readonly step: BundleStep;
  /** `repository:tag` from the bundle manifest, once known. */
  readonly image?: string;
  /** Manifest digest pushed to the local registry. */
  readonly digest?: string;
  /** The cloud's manifest digest of the image (the bundle's target), which reports name. */
  readonly sourceDigest?: string;
  /** Bytes of image written (layers plus config). */
  readonly bytes?: number;
  readonly durationMs?: number;
  readonly outcome?: "ready" | "failed";
  readonly reason?: string;
  /** How many times work on this bundle started (restarts after a crash count). */
  readonly attempts: number;
  readonly updatedAt: string;
}

/** Bundle ids come from the bundle; this keeps a hostile one from naming a path outside the journal. */
const SAFE_ID = /^[A-Za-z0-9._:-]{1,200}$/;

export function journalFileName(bundleId: string): string {
  if (!SAFE_ID.test(bundleId) || bundleId.startsWith(".")) {
    throw new Error(
      `bundle id ${JSON.stringify(bundleId.slice(0, 80))} is not usable as a journal name; expected 1-200 characters of A-Z a-z 0-9 . _ : -`,
    );
  }
  return `${bundleId.replaceAll(":", "_")}.json`;
}

export class Journal {
  constructor(readonly dir: string) {}

  async init(): Promise<void> {
    await mkdir(this.dir, { recursive: true });
  }

  async read(bundleId: string): Promise<JournalEntry | undefined> {
    try {
      return JSON.parse(await readFile(join(this.dir, journalFileName(bundleId)), "utf8")) as JournalEntry;
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === "ENOENT") return undefined;
      throw error;
    }
  }

  async write(entry: Omit<JournalEntry, "updatedAt">): Promise<JournalEntry> {
    const full: JournalEntry = { ...entry, updatedAt: new Date().toISOString() };
    await writeFileAtomic(
      join(this.dir, journalFileName(entry.bundleId)),
      `${JSON.stringify(full, null, 2)}\n`,
    );
    return full;
  }

  /** Every entry, for recovery at start and for the operator's view. */
  async list(): Promise<JournalEntry[]> {
    const names = (await readdir(this.dir)).filter((name) => name.endsWith(".json")).sort();
    const entries: JournalEntry[] = [];
    for (const name of names) {
      entries.push(JSON.parse(await readFile(join(this.dir, name), "utf8")) as JournalEntry);
    }
    return entries;
  }
}
