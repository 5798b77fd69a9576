/**
 * `deploymentSets`: PK set id; RK `set` for the summary, `item:<device>:<digest>` per
 * (device, image). Item rows carry the instance id of the orchestration waiting for that
 * device's reports, so the report trigger knows where to raise the event.
 */
import type { TableClient, TableEntity } from "@azure/data-tables";
import { type PriorityDecision, rank } from "../config/priorities.js";
import { withoutUndefined } from "./deviceImages.js";
import { escapeKey, ITEM_ROW_END, ITEM_ROW_PREFIX, itemRowKey, odata, SET_ROW_KEY } from "./keys.js";
import {
  getOrUndefined,
  insertMissing,
  type Page,
  type PageRequest,
  queryPage,
  stripMetadata,
  transition,
} from "./tables.js";

export type SetState = "running" | "succeeded" | "failed";

export interface SetRow {
  setId: string;
  requestedByName: string;
  requestedByEmail: string;
  requestedAt: string;
  manifestRef: string;
  deadline: string;
  state: SetState;
  reason?: string;
  deviceCount: number;
  itemCount: number;
  /** JSON list of the set's images ({module, ref, digest, fullBytes}); small: one entry per module. */
  images: string;
  bytesPlanned: number;
  fullBytes: number;
  /** Serving rank of the set's priority class: 0 critical, 1 high, 2 normal, 3 bulk. */
  priority: number;
  /** The class the priority rules chose (absent on sets recorded before the rules existed). */
  priorityClass?: string;
  /** Id of the rule that chose it, or `default`. */
  priorityRule?: string;
  priorityRulesVersion?: string;
  /** ISO instant the deciding rule wants the set delivered by. */
  priorityDeadline?: string;
  /** The more urgent class the request asked for, when the rule capped it. */
  priorityCappedFrom?: string;
  updatedAt: string;
  finishedAt?: string;
}

/** `present`: the device already had the image when the set was planned. */
export type ItemState = "planned" | "present" | "inTransit" | "arrived" | "failed" | "timedOut";

export interface ItemRow {
  setId: string;
  device: string;
  digest: string;
  state: ItemState;
  bundleId?: string;
  /** Instance id of the orchestration waiting for this item's report. */
  waiter?: string;
  reason?: string;
  bytes?: number;
  updatedAt: string;
}

export type ItemEvent =
  | { kind: "inTransit"; at: string }
  | { kind: "report"; ok: boolean; reason?: string; bytes?: number; at: string }
  | { kind: "timedOut"; at: string };

/** Next item row for an event, or undefined when it changes nothing. `arrived` and `failed` are final. Pure. */
export function nextItem(current: ItemRow, event: ItemEvent): ItemRow | undefined {
  const final = current.state === "arrived" || current.state === "failed" || current.state === "present";
  switch (event.kind) {
    case "inTransit":
      return current.state === "planned"
        ? { ...current, state: "inTransit", updatedAt: event.at }
        : undefined;
    case "timedOut":
      return current.state === "planned" || current.state === "inTransit"
        ? { ...current, state: "timedOut", reason: "no report before the deadline", updatedAt: event.at }
        : undefined;
    case "report":
      // A report after the deadline is still recorded: the row tells the truth, the set's outcome stays.
      if (final) return undefined;
      return event.ok
        ? { ...current, state: "arrived", reason: undefined, bytes: event.bytes, updatedAt: event.at }
        : {
            ...current,
            state: "failed",
            reason: event.reason ?? "no reason given",
            bytes: event.bytes,
            updatedAt: event.at,
          };
  }
}

export interface NewSet {
  setId: string;
  requestedBy: { name: string; email: string };
  requestedAt: string;
  manifestRef: string;
  deadline: string;
  images: { module: string; ref: string; digest: string; fullBytes: number }[];
  deviceCount: number;
  bytesPlanned: number;
  fullBytes: number;
  /** The priority rules' decision; without one the set counts as normal. */
  priority?: PriorityDecision;
  items: {
    device: string;
    digest: string;
    state: "planned" | "present";
    bundleId?: string;
    waiter?: string;
  }[];
}

/** The decision as set row columns; absent parts are left out (Tables stores no undefined). */
function priorityColumns(decision: PriorityDecision | undefined): Partial<SetRow> {
  if (decision === undefined) return {};
  return {
    priorityClass: decision.class,
    priorityRule: decision.rule,
    priorityRulesVersion: decision.rulesVersion,
    ...(decision.deadline === undefined ? {} : { priorityDeadline: decision.deadline }),
    ...(decision.cappedFrom === undefined ? {} : { priorityCappedFrom: decision.cappedFrom }),
  };
}

export class DeploymentSets {
  constructor(private readonly table: TableClient) {}

  /** Records a set and its items; running it again leaves items that reports already advanced alone. */
  async record(set: NewSet): Promise<void> {
    const pk = escapeKey(set.setId);
    const items: TableEntity<ItemRow>[] = set.items.map((item) => ({
      partitionKey: pk,
      rowKey: itemRowKey(item.device, item.digest),
      ...withoutUndefined<ItemRow>({
        setId: set.setId,
        device: item.device,
        digest: item.digest,
        state: item.state,
        bundleId: item.bundleId,
        waiter: item.waiter,
        updatedAt: set.requestedAt,
      })!,
    }));
    await insertMissing(this.table, items);
    const row: SetRow = {
      setId: set.setId,
      requestedByName: set.requestedBy.name,
      requestedByEmail: set.requestedBy.email.toLowerCase(),
      requestedAt: set.requestedAt,
      manifestRef: set.manifestRef,
      deadline: set.deadline,
      state: "running",
      deviceCount: set.deviceCount,
      itemCount: set.items.length,
      images: JSON.stringify(set.images),
      bytesPlanned: set.bytesPlanned,
      fullBytes: set.fullBytes,
      priority: rank(set.priority?.class ?? "normal"),
      ...priorityColumns(set.priority),
      updatedAt: set.requestedAt,
    };
    // Last, so a set row exists only once all its items do; inserted once, never reset to running.
    await insertMissing(this.table, [{ partitionKey: pk, rowKey: SET_ROW_KEY, ...row }]);
  }

  async getSet(setId: string): Promise<SetRow | undefined> {
    const row = await getOrUndefined<SetRow>(this.table, escapeKey(setId), SET_ROW_KEY);
    return row && stripMetadata(row);
  }

  async getItem(setId: string, device: string, digest: string): Promise<ItemRow | undefined> {
    const row = await getOrUndefined<ItemRow>(this.table, escapeKey(setId), itemRowKey(device, digest));
    return row && stripMetadata(row);
  }

  /** Applies an event to an item; undefined when the set has no such item. */
  async applyToItem(
    setId: string,
    device: string,
    digest: string,
    event: ItemEvent,
  ): Promise<{ row: ItemRow | undefined; changed: boolean }> {
    let missing = false;
    const result = await transition<ItemRow>(
      this.table,
      escapeKey(setId),
      itemRowKey(device, digest),
      (current) => {
        if (current === undefined) {
          missing = true;
          return undefined;
        }
        return withoutUndefined(nextItem(current, event));
      },
    );
    return missing ? { row: undefined, changed: false } : result;
  }

  /** Marks the set finished (or running); a finished set never goes back. */
  async setState(setId: string, state: SetState, at: string, reason?: string): Promise<SetRow | undefined> {
    const { row } = await transition<SetRow>(this.table, escapeKey(setId), SET_ROW_KEY, (current) => {
      if (current === undefined || current.state !== "running" || state === "running") return undefined;
      return withoutUndefined({ ...current, state, reason, updatedAt: at, finishedAt: at });
    });
    return row;
  }

  listItems(setId: string, request: PageRequest = {}): Promise<Page<ItemRow>> {
    const filter =
      `PartitionKey eq ${odata(escapeKey(setId))} and RowKey ge ${odata(ITEM_ROW_PREFIX)} ` +
      `and RowKey lt ${odata(ITEM_ROW_END)}`;
    return queryPage<ItemRow>(this.table, filter, request);
  }

  /** Sets requested by an email address (case-insensitive), any order; a scan over set rows. */
  listByRequester(email: string, request: PageRequest = {}): Promise<Page<SetRow>> {
    const filter = `RowKey eq ${odata(SET_ROW_KEY)} and requestedByEmail eq ${odata(email.toLowerCase())}`;
    return queryPage<SetRow>(this.table, filter, request);
  }
}
