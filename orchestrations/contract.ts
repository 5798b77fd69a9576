/**
 * What the outside world needs to start, follow and feed a deployment set: orchestration
 * names, the start input, the device report event, and the instance ids reports go to.
 * Imported by triggers (`functions/`) and by the orchestrations themselves.
 */
import type { DeploymentManifest, ItemFailure, ItemKey, Requester, SetState } from "../activities/names.js";
import type { OutboxOrder, PriorityClass } from "../config/priorities.js";

export const DEPLOYMENT_SET_ORCHESTRATION = "deploymentSet";
export const DEVICE_BATCH_ORCHESTRATION = "deviceBatch";

/** Input of `deploymentSet`; its instance id is `setId`. */
export interface DeploymentSetInput {
  setId: string;
  requestedBy: Requester;
  /** ISO time the request was accepted. */
  requestedAt: string;
  /** Concrete manifest (no `${…}` placeholders). */
  manifest: DeploymentManifest;
  /** Where the manifest came from: its name in the manifests container, or `inline`. */
  manifestRef: string;
  /** Device ids, already resolved from a twin query when the request used one. */
  devices: string[];
  /** ISO instant after which missing reports count as failures. */
  deadline: string;
  /** Devices per waiting sub-orchestration (DEVICE_BATCH_SIZE). */
  deviceBatchSize: number;
  /** Device-local registry pushed manifests pull from, `host:port` (LOCAL_REGISTRY_ADDRESS). */
  localRegistry: string;
  /** The class the request asked for; the priority rules decide what the set gets. */
  priority?: PriorityClass;
}

export interface DeploymentSetOutput {
  state: Exclude<SetState, "running">;
  /** The first failures, at most MAX_REPORTED_FAILURES: history holds this output, so it stays small. */
  failures: ItemFailure[];
  failureCount: number;
  reason?: string;
}

/** Payload of a device report event. */
export interface ImageReport {
  ok: boolean;
  reason?: string;
  /** Bytes the device received for this image. */
  bytes?: number;
}

/** The event a device report raises, one name per (device, image) so waiters never share a name. */
export function imageEventName(device: string, digest: string): string {
  return `image:${device}:${digest}`;
}

/** Instance id of the sub-orchestration that waits for the reports of one batch of devices. */
export function batchInstanceId(setId: string, batchIndex: number): string {
  return `${setId}:batch:${batchIndex}`;
}

/** Input of `deviceBatch`. */
export interface DeviceBatchInput {
  setId: string;
  batchIndex: number;
  deadline: string;
  /** Every (device, image) of the batch that needs a bundle. */
  items: (ItemKey & { bundleId: string })[];
  /** Where the set's bundles go in each device's outbox queue. */
  order?: OutboxOrder;
}

export interface DeviceBatchOutput {
  arrived: number;
  bytes: number;
  failures: ItemFailure[];
  timedOut: ItemKey[];
}
