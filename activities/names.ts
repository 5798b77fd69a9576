/**
 * Activity names and their input/output types: the one file orchestrations import from
 * `activities/`. Everything here is plain JSON, because inputs and outputs are stored in
 * orchestration history; bundles and indexes travel as blob names, never as bytes.
 */

import type { OutboxOrder, PriorityDecision } from "../config/priorities.js";

export const RESOLVE_IMAGES = "resolveImages";
export const READ_DEVICE_INVENTORY = "readDeviceInventory";
export const PLAN_BUNDLES = "planBundles";
export const BUILD_BUNDLE = "buildBundle";
export const PLACE_BUNDLES = "placeBundles";
export const MARK_IN_TRANSIT = "markInTransit";
export const RECORD_SET = "recordSet";
export const UPDATE_SET_STATE = "updateSetState";
export const PUSH_MANIFEST = "pushManifest";
export const SEND_EMAIL = "sendEmail";

export interface Requester {
  name: string;
  email: string;
}

/** An IoT Edge deployment manifest (`deployment.template.json` with concrete image references). */
export interface DeploymentManifest {
  modulesContent: Record<string, unknown>;
}

/** One (device, image) pair of a deployment set. */
export interface ItemKey {
  device: string;
  /** ACR manifest digest of the image, `sha256:…`. */
  digest: string;
}

/** A module image of the manifest, resolved in ACR. */
export interface ResolvedImage {
  /** Module name in the manifest. */
  module: string;
  /** The reference as written in the manifest, e.g. `myacr.azurecr.io/apps/telemetry:1.4.2`. */
  ref: string;
  /** Repository without registry host, e.g. `apps/telemetry`. */
  repository: string;
  /** Tag, empty when the manifest pins a digest. */
  tag: string;
  digest: string;
  /** Bytes a plain `docker pull` would move: the sum of the stored layer blobs and config. */
  fullBytes: number;
  /** The image config's labels (`config.Labels`, bounded), which priority rules match on. */
  labels?: Record<string, string>;
}

export interface ResolveImagesInput {
  manifest: DeploymentManifest;
}
export interface ResolveImagesOutput {
  /** One entry per module, in manifest order; two modules may share a digest. */
  images: ResolvedImage[];
}

export interface ReadDeviceInventoryInput {
  devices: string[];
}
/** Devices that hold exactly the same images, so one plan serves them all. */
export interface InventoryGroup {
  /** Digests of the images present on these devices, sorted. */
  present: string[];
  devices: string[];
}
export interface ReadDeviceInventoryOutput {
  groups: InventoryGroup[];
}

/** One bundle to build: a target image and the images whose layers form its delta source. */
export interface PlannedBundle {
  /** Content address: blob name in the bundles container. Same target and sources, same id. */
  bundleId: string;
  targetDigest: string;
  /** Images on the device whose layers the delta uses, sorted. */
  sourceDigests: string[];
  /** Layer diff_ids the device must hold, in the order they form the virtual source. */
  sourceLayers: string[];
  /** Target layers the device holds, referenced by the bundle instead of sent (part of its identity). */
  presentLayers: string[];
  /** Planner's estimate of the bundle size. */
  estimatedBytes: number;
  /** Size of the full image (what a pull would move). */
  fullBytes: number;
}

export interface GroupPlan {
  devices: string[];
  /** Target images these devices miss, each with the bundle that brings it. */
  needs: { digest: string; bundle: PlannedBundle }[];
}

export interface PlanBundlesInput {
  targets: { digest: string; fullBytes: number }[];
  groups: InventoryGroup[];
}
export interface PlanBundlesOutput {
  groups: GroupPlan[];
}

export interface BuildBundleInput {
  bundle: PlannedBundle;
}
export interface BuildBundleOutput {
  bundleId: string;
  size: number;
  /** False when the content-addressed blob already existed. */
  built: boolean;
}

export interface PlaceBundlesInput {
  setId: string;
  placements: { device: string; bundleId: string }[];
  /** Where the set's bundles go in each device's queue (name prefix, metadata, index tags). */
  order?: OutboxOrder;
}
export interface PlaceBundlesOutput {
  placed: number;
}

export interface MarkInTransitInput {
  setId: string;
  items: (ItemKey & { bundleId: string })[];
}
export interface MarkInTransitOutput {
  /** Items a report already showed present: nothing to wait for. */
  alreadyPresent: ItemKey[];
}

export interface RecordSetInput {
  setId: string;
  requestedBy: Requester;
  requestedAt: string;
  manifestRef: string;
  deadline: string;
  images: ResolvedImage[];
  /** Every device of the set with what it misses; devices missing nothing have empty needs. */
  groups: GroupPlan[];
  /** Instance id of the orchestration waiting for each device's reports. */
  waiters: { device: string; waiter: string }[];
  bytesPlanned: number;
  fullBytes: number;
  /** The priority rules' decision, recorded on the set row. */
  priority?: PriorityDecision;
}

export type SetState = "running" | "succeeded" | "failed";

export interface ItemFailure extends ItemKey {
  reason: string;
}

export interface UpdateSetStateInput {
  setId: string;
  /** The set's final state; absent when only items are marked (a waiting batch's timeouts). */
  state?: Exclude<SetState, "running">;
  /** Orchestration time, so replays write the same value. */
  at: string;
  reason?: string;
  /** Items that never reported before the deadline. */
  timedOut?: ItemKey[];
}

export interface PushManifestInput {
  setId: string;
  devices: string[];
  manifest: DeploymentManifest;
  /** Device-local registry the rewritten manifest pulls from, `host:port`. */
  localRegistry: string;
}
export interface PushManifestOutput {
  pushed: number;
}

export interface SendEmailInput {
  setId: string;
  requestedBy: Requester;
  outcome: "succeeded" | "failed";
  deviceCount: number;
  images: ResolvedImage[];
  bytesPlanned: number;
  fullBytes: number;
  /** The first failures (at most MAX_REPORTED_FAILURES); failureCount says how many there were. */
  failures: ItemFailure[];
  failureCount: number;
  /** Why the whole set failed when no single item did (e.g. a bundle could not be built). */
  reason?: string;
}
export interface SendEmailOutput {
  sent: boolean;
}
