/**
 * Where the local engine keeps orchestration instances and their history: Azure Table Storage
 * (Azurite in local mode), one row per instance and one row per history event, like the Durable
 * extension's Azure Storage provider keeps them.
 */
import { odata, TableClient, type TableEntity, TableServiceClient } from "@azure/data-tables";
import { escapeKey } from "../../state/keys.js";
import type { HistoryEvent } from "./history.js";

export type RuntimeStatus = "Pending" | "Running" | "Completed" | "Failed" | "Terminated";

export interface InstanceRecord {
  instanceId: string;
  name: string;
  input: unknown;
  runtimeStatus: RuntimeStatus;
  customStatus?: unknown;
  output?: unknown;
  createdTime: string;
  lastUpdatedTime: string;
  parentInstanceId?: string;
  parentTaskId?: number;
  historyLength: number;
}

export interface InstanceStore {
  /** Writes the instance row and any history events beyond those already stored; `fresh` replaces old history. */
  save(record: InstanceRecord, history: readonly HistoryEvent[], fresh: boolean): Promise<void>;
  load(instanceId: string): Promise<{ record: InstanceRecord; history: HistoryEvent[] } | undefined>;
  list(): Promise<InstanceRecord[]>;
}

export const INSTANCES_TABLE = "LocalDurableInstances";
export const HISTORY_TABLE = "LocalDurableHistory";
/** A Table Storage string property holds at most 32K UTF-16 characters; longer JSON is split. */
const PROPERTY_CHARS = 30_000;
/** A transaction holds at most 100 operations, all in one partition. */
const BATCH = 100;

export class TableInstanceStore implements InstanceStore {
  private readonly stored = new Map<string, number>();

  private constructor(
    private readonly instances: TableClient,
    private readonly history: TableClient,
  ) {}

  static async fromConnectionString(connectionString: string): Promise<TableInstanceStore> {
    const options = { allowInsecureConnection: true };
    const service = TableServiceClient.fromConnectionString(connectionString, options);
    for (const table of [INSTANCES_TABLE, HISTORY_TABLE]) await service.createTable(table);
    return new TableInstanceStore(
      TableClient.fromConnectionString(connectionString, INSTANCES_TABLE, options),
      TableClient.fromConnectionString(connectionString, HISTORY_TABLE, options),
    );
  }

  async save(record: InstanceRecord, history: readonly HistoryEvent[], fresh: boolean): Promise<void> {
    const key = escapeKey(record.instanceId);
    let from = fresh ? 0 : (this.stored.get(record.instanceId) ?? (await this.countHistory(key)));
    if (from > history.length) {
      // The history was restarted (continue-as-new): drop the old rows.
      await this.deleteHistory(key);
      from = 0;
    }
    if (fresh) await this.deleteHistory(key);
    for (let start = from; start < history.length; start += BATCH) {
      const rows = history.slice(start, start + BATCH).map((e, i) => ({
        partitionKey: key,
        rowKey: String(start + i).padStart(10, "0"),
        ...split("event", JSON.stringify(e)),
      }));
      await this.history.submitTransaction(rows.map((row) => ["upsert", row, "Replace"]));
    }
    this.stored.set(record.instanceId, history.length);
    await this.instances.upsertEntity(
      {
        partitionKey: key,
        rowKey: "",
        name: record.name,
        runtimeStatus: record.runtimeStatus,
        ...split("record", JSON.stringify(record)),
      },
      "Replace",
    );
  }

  async load(instanceId: string): Promise<{ record: InstanceRecord; history: HistoryEvent[] } | undefined> {
    const key = escapeKey(instanceId);
    let entity: TableEntity<Record<string, unknown>>;
    try {
      entity = await this.instances.getEntity(key, "");
    } catch (error) {
      if ((error as { statusCode?: number }).statusCode === 404) return undefined;
      throw error;
    }
    const record = JSON.parse(join("record", entity)) as InstanceRecord;
    const history: HistoryEvent[] = [];
    for await (const row of this.history.listEntities<Record<string, unknown>>({
      queryOptions: { filter: odata`PartitionKey eq ${key}` },
    })) {
      const e = JSON.parse(join("event", row)) as HistoryEvent;
      e.Timestamp = new Date(e.Timestamp);
      if (e.FireAt !== undefined) e.FireAt = new Date(e.FireAt as string);
      history.push(e);
    }
    this.stored.set(instanceId, history.length);
    return { record, history };
  }

  async list(): Promise<InstanceRecord[]> {
    const records: InstanceRecord[] = [];
    for await (const row of this.instances.listEntities<Record<string, unknown>>()) {
      records.push(JSON.parse(join("record", row)) as InstanceRecord);
    }
    return records;
  }

  private async countHistory(key: string): Promise<number> {
    let count = 0;
    for await (const _ of this.history.listEntities({
      queryOptions: { filter: odata`PartitionKey eq ${key}`, select: ["RowKey"] },
    })) {
      count++;
    }
    return count;
  }

  private async deleteHistory(key: string): Promise<void> {
    const keys: string[] = [];
    for await (const row of this.history.listEntities({
      queryOptions: { filter: odata`PartitionKey eq ${key}`, select: ["RowKey"] },
    })) {
      keys.push(String(row.rowKey));
    }
    for (let start = 0; start < keys.length; start += BATCH) {
      await this.history.submitTransaction(
        keys.slice(start, start + BATCH).map((rowKey) => ["delete", { partitionKey: key, rowKey }]),
      );
    }
  }
}

function split(name: string, text: string): Record<string, string | number> {
  const out: Record<string, string | number> = {};
  let parts = 0;
  for (let i = 0; i < text.length || parts === 0; i += PROPERTY_CHARS) {
    out[`${name}${parts}`] = text.slice(i, i + PROPERTY_CHARS);
    parts++;
  }
  out[`${name}Parts`] = parts;
  return out;
}

function join(name: string, entity: Record<string, unknown>): string {
  const parts = Number(entity[`${name}Parts`] ?? 0);
  let text = "";
  for (let i = 0; i < parts; i++) text += String(entity[`${name}${i}`] ?? "");
  return text;
}
