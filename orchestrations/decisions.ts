/**
 * The deployment set's decisions as pure functions: which bundles to build, how devices are
 * batched, what the progress status says. No I/O, no clock: orchestrators call these with
 * what activities returned, so the same history always gives the same decisions.
 */
import type { GroupPlan, ItemFailure, ItemKey, PlannedBundle, ResolvedImage } from "../activities/names.js";
import type { PriorityDecision } from "../config/priorities.js";
import { batchInstanceId, type DeviceBatchInput, type DeviceBatchOutput } from "./contract.js";

/** Custom status is capped at 16 KB by Durable Functions; these keep ours far below for any fleet. */
export const MAX_LATEST_CHANGES = 10;
/** Longest text of one latest-change line (a failure reason can be long). */
export const MAX_CHANGE_LENGTH = 200;
export const MAX_STATUS_BYTES = 16 * 1024;
/** Failures carried in the set's output and email input: history stores both, the rest is in Tables. */
export const MAX_REPORTED_FAILURES = 200;

/** Each distinct bundle once, in first-seen order: devices that hold the same sources share it. */
export function distinctBundles(groups: readonly GroupPlan[]): PlannedBundle[] {
  const seen = new Map<string, PlannedBundle>();
  for (const group of groups) {
    for (const need of group.needs)
      if (!seen.has(need.bundle.bundleId)) seen.set(need.bundle.bundleId, need.bundle);
  }
  return [...seen.values()];
}

/** Distinct target images (two modules may run the same image). */
export function distinctTargets(images: readonly ResolvedImage[]): { digest: string; fullBytes: number }[] {
  const seen = new Map<string, number>();
  for (const image of images) if (!seen.has(image.digest)) seen.set(image.digest, image.fullBytes);
  return [...seen].map(([digest, fullBytes]) => ({ digest, fullBytes }));
}

/** Bytes the set moves (planned bundle estimates) against what full pulls would move. */
export function plannedBytes(groups: readonly GroupPlan[]): { bytesPlanned: number; fullBytes: number } {
  let bytesPlanned = 0;
  let fullBytes = 0;
  for (const group of groups) {
    for (const need of group.needs) {
      bytesPlanned += need.bundle.estimatedBytes * group.devices.length;
      fullBytes += need.bundle.fullBytes * group.devices.length;
    }
  }
  return { bytesPlanned, fullBytes };
}

export interface DeviceBatch {
  instanceId: string;
  input: DeviceBatchInput;
}

/**
 * Devices that miss something, in plan order, cut into batches of `batchSize`; each batch gets
 * one waiting sub-orchestration, which keeps every history to a few thousand events.
 */
export function deviceBatches(
  setId: string,
  deadline: string,
  groups: readonly GroupPlan[],
  batchSize: number,
): DeviceBatch[] {
  if (!Number.isInteger(batchSize) || batchSize < 1) {
    throw new RangeError(`expected a device batch size of at least 1, found ${batchSize}`);
  }
  const batches: DeviceBatch[] = [];
  let devicesInBatch = 0;
  let current: DeviceBatchInput | undefined;
  for (const group of groups) {
    if (group.needs.length === 0) continue;
    for (const device of group.devices) {
      if (current === undefined || devicesInBatch === batchSize) {
        current = { setId, batchIndex: batches.length, deadline, items: [] };
        batches.push({ instanceId: batchInstanceId(setId, current.batchIndex), input: current });
        devicesInBatch = 0;
      }
      devicesInBatch++;
      for (const need of group.needs) {
        current.items.push({ device, digest: need.digest, bundleId: need.bundle.bundleId });
      }
    }
  }
  return batches;
}

/** Which orchestration waits for each device's reports (recorded on the set's items). */
export function waiters(batches: readonly DeviceBatch[]): { device: string; waiter: string }[] {
  const out: { device: string; waiter: string }[] = [];
  for (const batch of batches) {
    let last: string | undefined;
    for (const item of batch.input.items) {
      if (item.device !== last) out.push({ device: item.device, waiter: batch.instanceId });
      last = item.device;
    }
  }
  return out;
}

export type Stage =
  | "resolving"
  | "planning"
  | "building"
  | "placing"
  | "waiting"
  | "pushing"
  | "succeeded"
  | "failed";

export interface ItemCounts {
  planned: number;
  building: number;
  inTransit: number;
  arrived: number;
  failed: number;
  /** Already on the device when the set was planned. */
  present: number;
}

/** Custom status of a deployment set: counts and the latest changes; the detail lives in Tables. */
export interface SetStatus {
  setId: string;
  stage: Stage;
  devices: number;
  images: number;
  items: ItemCounts;
  bundles: { distinct: number; built: number };
  batches: { total: number; done: number };
  bytesPlanned: number;
  fullBytes: number;
  /** The priority rules' decision, once the images are resolved. */
  priority?: PriorityDecision;
  /** Newest last, at most MAX_LATEST_CHANGES. */
  latest: string[];
  updatedAt: string;
}

export function initialStatus(setId: string, devices: number, at: string): SetStatus {
  return {
    setId,
    stage: "resolving",
    devices,
    images: 0,
    items: { planned: 0, building: 0, inTransit: 0, arrived: 0, failed: 0, present: 0 },
    bundles: { distinct: 0, built: 0 },
    batches: { total: 0, done: 0 },
    bytesPlanned: 0,
    fullBytes: 0,
    latest: [],
    updatedAt: at,
  };
}

/** Adds a line to a status's latest changes, keeping the list and each line short. */
export function withChange<T extends { latest: string[]; updatedAt: string }>(
  status: T,
  at: string,
  change: string,
): T {
  const line = change.length > MAX_CHANGE_LENGTH ? `${change.slice(0, MAX_CHANGE_LENGTH - 1)}…` : change;
  return { ...status, updatedAt: at, latest: [...status.latest, `${at} ${line}`].slice(-MAX_LATEST_CHANGES) };
}

/** Status once the plan is known. */
export function plannedStatus(
  status: SetStatus,
  at: string,
  images: number,
  groups: readonly GroupPlan[],
  targets: number,
  bundles: number,
  batches: number,
): SetStatus {
  let needed = 0;
  let devices = 0;
  for (const group of groups) {
    needed += group.needs.length * group.devices.length;
    devices += group.devices.length;
  }
  const { bytesPlanned, fullBytes } = plannedBytes(groups);
  return withChange(
    {
      ...status,
      stage: "planning",
      images,
      items: { ...status.items, planned: needed, present: devices * targets - needed },
      bundles: { distinct: bundles, built: 0 },
      batches: { total: batches, done: 0 },
      bytesPlanned,
      fullBytes,
    },
    at,
    `planned ${needed} transfers in ${bundles} distinct bundles (${bytesPlanned} of ${fullBytes} bytes)`,
  );
}

/** Merges what the waiting batches reported. */
export function collectOutcomes(outputs: readonly DeviceBatchOutput[]): {
  arrived: number;
  bytes: number;
  failures: ItemFailure[];
  timedOut: ItemKey[];
} {
  const result = { arrived: 0, bytes: 0, failures: [] as ItemFailure[], timedOut: [] as ItemKey[] };
  for (const output of outputs) {
    result.arrived += output.arrived;
    result.bytes += output.bytes;
    result.failures.push(...output.failures);
    result.timedOut.push(...output.timedOut);
  }
  return result;
}

/** Every failure the requester should read about: failed items, then items with no report. */
export function failuresToReport(
  failures: readonly ItemFailure[],
  timedOut: readonly ItemKey[],
  deadline: string,
) {
  return [
    ...failures,
    ...timedOut.map((item) => ({ ...item, reason: `no report before the deadline ${deadline}` })),
  ];
}

/** Custom status of one waiting batch. */
export interface BatchStatus {
  setId: string;
  batchIndex: number;
  items: { inTransit: number; arrived: number; failed: number; timedOut: number };
  bytes: number;
  latest: string[];
  updatedAt: string;
}

export function statusBytes(status: unknown): number {
  return Buffer.byteLength(JSON.stringify(status));
}
