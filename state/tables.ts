/** Table names, paging and the few Table Storage mechanics every repository shares. */
import type { TableClient, TableEntity, TableEntityResult, TransactionAction } from "@azure/data-tables";

export const TABLES = {
  deviceImages: "deviceImages",
  imageDevices: "imageDevices",
  deploymentSets: "deploymentSets",
  bundles: "bundles",
  transfers: "transfers",
} as const;
export type TableName = (typeof TABLES)[keyof typeof TABLES];

/** Table Storage transactions hold at most 100 operations, all in one partition. */
export const MAX_BATCH_OPERATIONS = 100;
/** Optimistic-concurrency retries before giving up: more means a hot row, which is a bug. */
export const MAX_ETAG_RETRIES = 8;
/** Table Storage returns at most 1,000 rows per page. */
export const MAX_PAGE_SIZE = 1000;
export const DEFAULT_PAGE_SIZE = 100;

export interface PageRequest {
  pageSize?: number;
  continuationToken?: string;
}
export interface Page<T> {
  items: T[];
  /** Pass back to get the next page; absent on the last page. */
  continuationToken?: string;
}

export function statusOf(error: unknown): number | undefined {
  const status = (error as { statusCode?: unknown } | null)?.statusCode;
  return typeof status === "number" ? status : undefined;
}

export async function getOrUndefined<T extends object>(
  table: TableClient,
  partitionKey: string,
  rowKey: string,
): Promise<TableEntityResult<T> | undefined> {
  try {
    return await table.getEntity<T>(partitionKey, rowKey);
  } catch (error) {
    if (statusOf(error) === 404) return undefined;
    throw error;
  }
}

/**
 * Reads a row, lets `decide` compute its next value, and writes it only if nobody changed the
 * row in between (insert when absent, ETag-matched replace when present); retries on a race.
 * `decide` returns undefined to leave the row as it is. Returns the row as written or found.
 */
export async function transition<T extends object>(
  table: TableClient,
  partitionKey: string,
  rowKey: string,
  decide: (current: T | undefined) => T | undefined,
): Promise<{ row: T | undefined; changed: boolean }> {
  for (let attempt = 0; attempt < MAX_ETAG_RETRIES; attempt++) {
    const current = await getOrUndefined<T>(table, partitionKey, rowKey);
    const next = decide(current ? stripMetadata(current) : undefined);
    if (next === undefined) return { row: current ? stripMetadata(current) : undefined, changed: false };
    const entity = { ...next, partitionKey, rowKey } as TableEntity<T>;
    try {
      if (current === undefined) await table.createEntity(entity);
      else await table.updateEntity(entity, "Replace", { etag: current.etag });
      return { row: next, changed: true };
    } catch (error) {
      const status = statusOf(error);
      // 409: someone inserted first; 412: someone updated first. Read again and decide again.
      if (status !== 409 && status !== 412) throw error;
    }
  }
  throw new Error(
    `expected to update ${table.tableName} row ${partitionKey}/${rowKey} within ${MAX_ETAG_RETRIES} attempts, ` +
      "found it changed by another writer every time; retry the operation later",
  );
}

const METADATA = new Set(["partitionKey", "rowKey", "etag", "timestamp", "odata.metadata"]);

export function stripMetadata<T extends object>(entity: T): T {
  const out: Record<string, unknown> = {};
  for (const [key, value] of Object.entries(entity)) if (!METADATA.has(key)) out[key] = value;
  return out as T;
}

/** Runs actions as transactions of at most 100 per partition. */
export async function submitInBatches(table: TableClient, actions: TransactionAction[]): Promise<void> {
  const byPartition = new Map<string, TransactionAction[]>();
  for (const action of actions) {
    const partition = action[1].partitionKey as string;
    let list = byPartition.get(partition);
    if (!list) byPartition.set(partition, (list = []));
    list.push(action);
  }
  for (const list of byPartition.values()) {
    for (let i = 0; i < list.length; i += MAX_BATCH_OPERATIONS) {
      await table.submitTransaction(list.slice(i, i + MAX_BATCH_OPERATIONS));
    }
  }
}

/** Inserts rows that do not exist yet and leaves existing ones untouched, in batches where possible. */
export async function insertMissing<T extends object>(
  table: TableClient,
  entities: TableEntity<T>[],
): Promise<void> {
  const byPartition = new Map<string, TableEntity<T>[]>();
  for (const entity of entities) {
    let list = byPartition.get(entity.partitionKey);
    if (!list) byPartition.set(entity.partitionKey, (list = []));
    list.push(entity);
  }
  for (const list of byPartition.values()) {
    for (let i = 0; i < list.length; i += MAX_BATCH_OPERATIONS) {
      const chunk = list.slice(i, i + MAX_BATCH_OPERATIONS);
      try {
        await table.submitTransaction(
          chunk.map((entity) => ["create", entity as TableEntity] as TransactionAction),
        );
      } catch (error) {
        // A transaction fails whole when one row exists (a retried activity): fall back to one by one.
        if (statusOf(error) !== 409) throw error;
        for (const entity of chunk) {
          try {
            await table.createEntity(entity);
          } catch (inner) {
            if (statusOf(inner) !== 409) throw inner;
          }
        }
      }
    }
  }
}

export function checkPageSize(pageSize: number | undefined): number {
  const size = pageSize ?? DEFAULT_PAGE_SIZE;
  if (!Number.isInteger(size) || size < 1 || size > MAX_PAGE_SIZE) {
    throw new RangeError(`expected a page size from 1 to ${MAX_PAGE_SIZE}, found ${pageSize}`);
  }
  return size;
}

/** One page of a filtered query. */
export async function queryPage<T extends object>(
  table: TableClient,
  filter: string,
  request: PageRequest,
): Promise<Page<T>> {
  const pages = table
    .listEntities<T>({ queryOptions: { filter } })
    .byPage({ maxPageSize: checkPageSize(request.pageSize), continuationToken: request.continuationToken });
  const next = await pages.next();
  if (next.done || !next.value) return { items: [] };
  const page = next.value;
  const items = page.map((entity) => stripMetadata(entity) as T);
  return page.continuationToken ? { items, continuationToken: page.continuationToken } : { items };
}
