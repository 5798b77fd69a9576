/** Free-space check before a bundle writes anything: a full disk must fail the bundle, not the device. */
import { stat, statfs } from "node:fs/promises";

/** Kept free beyond the estimate by default, for the registry's own metadata, the journal and the logs. */
export const DEFAULT_DISK_RESERVE_BYTES = 64 * 1024 * 1024;

export interface SpaceNeed {
  readonly path: string;
  readonly bytes: number;
  /** What the bytes are for, named in the error. */
  readonly purpose: string;
}

export async function freeBytes(path: string): Promise<number> {
  const fs = await statfs(path);
  return fs.bavail * fs.bsize;
}

/**
 * Throws a clear error unless every file system has room for what is asked of it; needs on the
 * same file system (same device number) are added up.
 */
export async function checkFreeSpace(
  needs: readonly SpaceNeed[],
  reserveBytes = DEFAULT_DISK_RESERVE_BYTES,
): Promise<void> {
  const byDevice = new Map<number, { path: string; bytes: number; purposes: string[] }>();
  for (const need of needs) {
    const { dev } = await stat(need.path);
    const entry = byDevice.get(dev) ?? { path: need.path, bytes: reserveBytes, purposes: [] };
    entry.bytes += need.bytes;
    entry.purposes.push(`${need.purpose} ${need.bytes} bytes`);
    byDevice.set(dev, entry);
  }
  for (const entry of byDevice.values()) {
    const free = await freeBytes(entry.path);
    if (free < entry.bytes) {
      throw new Error(
        `not enough disk space on the file system of ${entry.path}: need ${entry.bytes} bytes (${entry.purposes.join(", ")}, reserve ${reserveBytes}), ${free} free; free some space and send the bundle again`,
      );
    }
  }
}
