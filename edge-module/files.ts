/**
 * Crash-safe file writes: a journal entry or a queued report is either the old version or the
 * new one after a power loss, never half of each.
 */
import { mkdir, open, rename, rm } from "node:fs/promises";
import { dirname } from "node:path";

async function syncDirectory(dir: string): Promise<void> {
  const handle = await open(dir, "r");
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

/** Writes `data` to `path` through a temporary file, fsync and rename. */
export async function writeFileAtomic(path: string, data: string | Uint8Array): Promise<void> {
  const temporary = `${path}.${process.pid}.tmp`;
  const handle = await open(temporary, "w");
  try {
    await handle.writeFile(data);
    await handle.sync();
  } finally {
    await handle.close();
  }
  await rename(temporary, path);
  await syncDirectory(dirname(path));
}

/** Renames and makes the rename durable in both directories. */
export async function moveDurably(from: string, to: string): Promise<void> {
  await mkdir(dirname(to), { recursive: true });
  await rename(from, to);
  await syncDirectory(dirname(to));
  if (dirname(from) !== dirname(to)) await syncDirectory(dirname(from));
}

export async function removeTree(path: string): Promise<void> {
  await rm(path, { recursive: true, force: true });
}
