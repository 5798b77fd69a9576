// Starting a deployment set from a validated request: shared by the HTTP and Service Bus triggers.

import { randomUUID } from "node:crypto";
import type { DurableClient, DurableOrchestrationStatus } from "durable-functions";
import type { DeploymentManifest } from "../../activities/names.js";
import { IotHubError, TooManyDevicesError } from "../../adapters/iothub.js";
import { DEPLOYMENT_SET_ORCHESTRATION, type DeploymentSetInput } from "../../orchestrations/contract.js";
import {
  checkConcreteManifest,
  DEPLOYMENT_REQUEST_SCHEMA,
  type DeploymentRequest,
  InvalidRequestError,
  MAX_DEVICES_PER_SET,
  type PriorityClass,
} from "./request.js";

/** The orchestration input plus the request's priority class, kept for scheduling (a later issue). */
export type DeploymentStartInput = DeploymentSetInput & { priority: PriorityClass };

export interface StartDeploymentDeps {
  durable: Pick<DurableClient, "getStatus" | "startNew">;
  /** The named manifest's JSON from the manifests container, or undefined when there is no such blob. */
  readManifest(name: string): Promise<unknown | undefined>;
  /** Device ids matching a twin query condition (adapters/iothub.ts queryDevices). */
  queryDevices(condition: string, limit: number): Promise<string[]>;
  settings: { defaultDeadlineMs: number; deviceBatchSize: number; localRegistryAddress: string };
  now(): Date;
  newSetId?(): string;
}

export interface StartedDeployment {
  setId: string;
  /** False when a set with the client-chosen id already existed: nothing was started. */
  started: boolean;
}

/** Starts the deploymentSet orchestration, or finds the one a previous request with the same id started. */
export async function startDeployment(
  request: DeploymentRequest,
  deps: StartDeploymentDeps,
): Promise<StartedDeployment> {
  const setId = request.id ?? deps.newSetId?.() ?? randomUUID();
  if (request.id !== undefined && (await instanceExists(deps.durable, setId)))
    return { setId, started: false };

  const manifest = await resolveManifest(request, deps);
  const devices = await resolveDevices(request, deps);
  const now = deps.now();
  const deadline =
    request.deadline === undefined
      ? new Date(now.getTime() + deps.settings.defaultDeadlineMs).toISOString()
      : "at" in request.deadline
        ? request.deadline.at
        : new Date(now.getTime() + request.deadline.afterMs).toISOString();

  const input: DeploymentStartInput = {
    setId,
    requestedBy: request.requestedBy,
    requestedAt: now.toISOString(),
    manifest,
    manifestRef: "name" in request.manifest ? request.manifest.name : "inline",
    devices,
    deadline,
    deviceBatchSize: deps.settings.deviceBatchSize,
    localRegistry: deps.settings.localRegistryAddress,
    priority: request.priority,
  };
  try {
    await deps.durable.startNew(DEPLOYMENT_SET_ORCHESTRATION, { instanceId: setId, input });
  } catch (error) {
    // Two requests with one id can both find no instance; the extension refuses the second start.
    if (request.id !== undefined && (await instanceExists(deps.durable, setId)))
      return { setId, started: false };
    throw error;
  }
  return { setId, started: true };
}

/** Whether an orchestration instance with this id exists, in any state. */
export async function instanceExists(
  durable: Pick<DurableClient, "getStatus">,
  instanceId: string,
): Promise<boolean> {
  return (await statusOrUndefined(durable, instanceId)) !== undefined;
}

/** The instance's status, or undefined when there is no instance with this id. */
export async function statusOrUndefined(
  durable: Pick<DurableClient, "getStatus">,
  instanceId: string,
): Promise<DurableOrchestrationStatus | undefined> {
  try {
    return await durable.getStatus(instanceId);
  } catch (error) {
    // The client signals an unknown instance only through this message (durable-functions 3.x).
    if (/HTTP 404/.test((error as Error).message)) return undefined;
    throw error;
  }
}

async function resolveManifest(
  request: DeploymentRequest,
  deps: StartDeploymentDeps,
): Promise<DeploymentManifest> {
  if ("inline" in request.manifest) return request.manifest.inline;
  const { name } = request.manifest;
  const found = await deps.readManifest(name);
  if (found === undefined) {
    throw new InvalidRequestError(
      "manifestName",
      `manifestName names no blob: "${name}" is not in the manifests container; upload it or send the manifest inline`,
    );
  }
  const expected = DEPLOYMENT_REQUEST_SCHEMA.properties.manifest.description;
  const modulesContent = (found as { modulesContent?: unknown } | null)?.modulesContent;
  const modules = (
    modulesContent as { $edgeAgent?: { "properties.desired"?: { modules?: unknown } } } | undefined
  )?.$edgeAgent?.["properties.desired"]?.modules;
  if (modules === null || typeof modules !== "object") {
    throw new InvalidRequestError("manifestName", `manifest "${name}" must be ${expected}; fix the blob`);
  }
  checkConcreteManifest(found, `manifestName(${name})`);
  return { modulesContent: modulesContent as Record<string, unknown> };
}

async function resolveDevices(request: DeploymentRequest, deps: StartDeploymentDeps): Promise<string[]> {
  if ("devices" in request.target) return request.target.devices;
  const { twinQuery } = request.target;
  let devices: string[];
  try {
    devices = await deps.queryDevices(twinQuery, MAX_DEVICES_PER_SET);
  } catch (error) {
    // IoT Hub refusing the query's syntax, or too many matches, will not change on retry.
    if (error instanceof TooManyDevicesError || (error instanceof IotHubError && error.statusCode === 400)) {
      throw new InvalidRequestError("twinQuery", `twinQuery: ${error.message}`);
    }
    throw error;
  }
  if (devices.length === 0) {
    throw new InvalidRequestError(
      "twinQuery",
      `twinQuery ${JSON.stringify(twinQuery)} matches no device in IoT Hub`,
    );
  }
  return devices;
}
