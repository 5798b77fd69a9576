/**
 * Runs the real deploymentSet orchestration (durable-functions replay, see durableReplay.ts)
 * with the real activities behind it, the way the tests that go end to end do.
 */
import { buildBundle } from "../../activities/buildBundle.js";
import type { ActivityDeps } from "../../activities/deps.js";
import { markInTransit } from "../../activities/markInTransit.js";
import type { DeploymentManifest } from "../../activities/names.js";
import { placeBundles } from "../../activities/placeBundles.js";
import { planBundles } from "../../activities/planBundles.js";
import { pushManifest } from "../../activities/pushManifest.js";
import { readDeviceInventory } from "../../activities/readDeviceInventory.js";
import { recordSet } from "../../activities/recordSet.js";
import { resolveImages } from "../../activities/resolveImages.js";
import { sendEmail } from "../../activities/sendEmail.js";
import { updateSetState } from "../../activities/updateSetState.js";
import type { DeploymentSetInput } from "../../orchestrations/contract.js";
import { deploymentSetOrchestrator } from "../../orchestrations/deploymentSet.js";
import { deviceBatchOrchestrator } from "../../orchestrations/deviceBatch.js";
import { type ReplayOptions, type ReplayResult, replay } from "./durableReplay.js";

/** The activities by their registered names; buildBundle and markInTransit take a clock the host never passes. */
const ACTIVITY_HANDLERS: Record<string, (input: never, deps: ActivityDeps) => Promise<unknown>> = {
  resolveImages,
  readDeviceInventory,
  planBundles,
  buildBundle: (input, d) => buildBundle(input, d),
  placeBundles,
  markInTransit: (input, d) => markInTransit(input, d),
  recordSet,
  updateSetState,
  pushManifest,
  sendEmail,
};

/** How long a set waits for reports when the test does not say otherwise. */
const SET_LIFETIME_MS = 14 * 86_400_000;

/** A deployment manifest with one module running `image`. */
export function moduleManifest(module: string, image: string): DeploymentManifest {
  return {
    modulesContent: {
      $edgeAgent: { "properties.desired": { modules: { [module]: { settings: { image } } } } },
      $edgeHub: { "properties.desired": { routes: {} } },
    },
  };
}

export interface SetRequest {
  setId: string;
  manifest: DeploymentManifest;
  devices: string[];
  requestedAt: Date;
  deviceBatchSize: number;
  /** Fourteen days after requestedAt when absent. */
  deadline?: string;
  priority?: DeploymentSetInput["priority"];
}

/** The orchestration input the HTTP trigger would start for this request, by Ada, with an inline manifest. */
export function setInput(request: SetRequest): DeploymentSetInput {
  return {
    setId: request.setId,
    requestedBy: { name: "Ada", email: "ada@example.com" },
    requestedAt: request.requestedAt.toISOString(),
    manifest: request.manifest,
    manifestRef: "inline",
    devices: request.devices,
    deadline: request.deadline ?? new Date(request.requestedAt.getTime() + SET_LIFETIME_MS).toISOString(),
    deviceBatchSize: request.deviceBatchSize,
    localRegistry: "localhost:5000",
    ...(request.priority === undefined ? {} : { priority: request.priority }),
  };
}

/** Replays deploymentSet (and its deviceBatch sub-orchestrations) from the request's time on, with the real activities on deps. */
export function replayDeploymentSet(
  deps: ActivityDeps,
  request: SetRequest,
  onIdle: ReplayOptions["onIdle"],
): Promise<ReplayResult> {
  return replay({
    orchestrators: { deploymentSet: deploymentSetOrchestrator, deviceBatch: deviceBatchOrchestrator },
    name: "deploymentSet",
    instanceId: request.setId,
    input: setInput(request),
    start: request.requestedAt,
    activity: (name, activityInput) => ACTIVITY_HANDLERS[name]!(activityInput as never, deps),
    onIdle,
  });
}
