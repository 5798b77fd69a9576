/** `bundles`: PK target digest, RK source-set hash; one row per built bundle blob. */
import type { TableClient } from "@azure/data-tables";
import { escapeKey } from "./keys.js";
import { getOrUndefined, insertMissing, stripMetadata } from "./tables.js";

export interface BundleRow {
  targetDigest: string;
  sourceSetHash: string;
  /** Blob name in the bundles container. */
  bundleId: string;
  size: number;
  createdAt: string;
  /** JSON list of the source image digests. */
  sourceDigests: string;
}

export class Bundles {
  constructor(private readonly table: TableClient) {}

  async get(targetDigest: string, sourceSetHash: string): Promise<BundleRow | undefined> {
    const row = await getOrUndefined<BundleRow>(
      this.table,
      escapeKey(targetDigest),
      escapeKey(sourceSetHash),
    );
    return row && stripMetadata(row);
  }

  /** Records a built bundle; the first record wins (the blob is content-addressed, so both are the same). */
  async record(row: BundleRow): Promise<void> {
    await insertMissing(this.table, [
      { partitionKey: escapeKey(row.targetDigest), rowKey: escapeKey(row.sourceSetHash), ...row },
    ]);
  }
}
