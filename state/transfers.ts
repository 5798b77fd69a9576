/** `transfers`: PK UTC day, RK time|device|digest; the time series behind the dashboards. */
import type { TableClient } from "@azure/data-tables";
import { dayOf, odata, transferRowKey } from "./keys.js";
import { type Page, type PageRequest, queryPage } from "./tables.js";

export interface TransferRow {
  /** When the device finished (from its report), ISO. */
  at: string;
  device: string;
  digest: string;
  setId?: string;
  outcome: "arrived" | "failed";
  bytes: number;
  durationMs?: number;
  reason?: string;
}

export class Transfers {
  constructor(private readonly table: TableClient) {}

  /** Idempotent: the same report (same time, device, image) always lands on the same row. */
  async record(row: TransferRow): Promise<void> {
    const entity: Record<string, unknown> = {
      partitionKey: dayOf(row.at),
      rowKey: transferRowKey(row.at, row.device, row.digest),
    };
    for (const [key, value] of Object.entries(row)) if (value !== undefined) entity[key] = value;
    await this.table.upsertEntity(entity as { partitionKey: string; rowKey: string }, "Replace");
  }

  /** Transfers with from ≤ at < to, oldest first. */
  list(from: string, to: string, request: PageRequest = {}): Promise<Page<TransferRow>> {
    const fromDay = dayOf(from);
    const toDay = dayOf(to);
    const fromIso = new Date(from).toISOString();
    const toIso = new Date(to).toISOString();
    const filter =
      `PartitionKey ge ${odata(fromDay)} and PartitionKey le ${odata(toDay)} ` +
      `and RowKey ge ${odata(fromIso)} and RowKey lt ${odata(toIso)}`;
    return queryPage<TransferRow>(this.table, filter, request);
  }
}
