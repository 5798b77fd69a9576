/**
 * A deployment-set scenario for replay tests: the activity answers a small fleet would give,
 * and a log of every call, so tests assert what the orchestrations asked for and decided.
 */
import type {
  BuildBundleInput,
  GroupPlan,
  InventoryGroup,
  MarkInTransitInput,
  PlanBundlesInput,
  PlannedBundle,
  ResolvedImage,
} from "../../activities/names.js";
import { batchInstanceId, type DeploymentSetInput, imageEventName } from "../../orchestrations/contract.js";
import type { RaisedEvent } from "../support/durableReplay.js";

export const T0 = new Date("2026-11-28T09:00:00.000Z");
export const HOUR = 3_600_000;
export const DAY = 24 * HOUR;

export function digest(label: string): string {
  return `sha256:${label.repeat(64).slice(0, 64)}`;
}

export const IMAGES: ResolvedImage[] = [
  {
    module: "telemetry",
    ref: "acr.io/apps/telemetry:2.0",
    repository: "apps/telemetry",
    tag: "2.0",
    digest: digest("a"),
    fullBytes: 100_000,
  },
  {
    module: "camera",
    ref: "acr.io/apps/camera:5.1",
    repository: "apps/camera",
    tag: "5.1",
    digest: digest("b"),
    fullBytes: 300_000,
  },
];

export function setInput(devices: string[], overrides: Partial<DeploymentSetInput> = {}): DeploymentSetInput {
  return {
    setId: "set-1",
    requestedBy: { name: "Ada Lovelace", email: "ada@example.com" },
    requestedAt: T0.toISOString(),
    manifest: {
      modulesContent: {
        $edgeAgent: {
          "properties.desired": {
            modules: Object.fromEntries(
              IMAGES.map((image) => [image.module, { settings: { image: image.ref } }]),
            ),
          },
        },
      },
    },
    manifestRef: "inline",
    devices,
    deadline: new Date(T0.getTime() + 14 * DAY).toISOString(),
    deviceBatchSize: 2,
    localRegistry: "localhost:5000",
    ...overrides,
  };
}

/** A bundle whose id depends only on its target and sources: content-addressed, like the real one. */
export function bundleFor(target: ResolvedImage, present: string[]): PlannedBundle {
  const sources = present.filter((d) => d !== target.digest).sort();
  return {
    bundleId: `${target.digest.slice(7, 15)}-from-${sources.map((d) => d.slice(7, 9)).join("+") || "nothing"}`,
    targetDigest: target.digest,
    sourceDigests: sources,
    sourceLayers: sources.map((d) => `sha256:layer-of-${d.slice(7, 15)}`),
    presentLayers: [],
    estimatedBytes: Math.round(target.fullBytes / (sources.length > 0 ? 20 : 1)),
    fullBytes: target.fullBytes,
  };
}

export interface World {
  inventory: InventoryGroup[];
  /** Items a report already marked present when the orchestration marks them in transit. */
  presentAtMark?: Set<string>;
  /** Fails buildBundle for this bundle id on the first `failures` attempts. */
  buildFailures?: Map<string, number>;
  images?: ResolvedImage[];
  /** Fails every attempt of the activity calls it returns a message for, with that message. */
  fails?: (name: string, input: unknown) => string | undefined;
}

/** The activity answers of a fleet in the given state. */
export function activities(world: World) {
  const images = world.images ?? IMAGES;
  return (name: string, input: unknown, attempt: number): unknown => {
    const failure = world.fails?.(name, input);
    if (failure !== undefined) throw new Error(failure);
    switch (name) {
      case "resolveImages":
        return { images };
      case "readDeviceInventory":
        return { groups: world.inventory };
      case "planBundles": {
        const { targets, groups } = input as PlanBundlesInput;
        const plans: GroupPlan[] = groups.map((group) => ({
          devices: group.devices,
          needs: targets
            .filter((target) => !group.present.includes(target.digest))
            .map((target) => ({
              digest: target.digest,
              bundle: bundleFor(images.find((image) => image.digest === target.digest)!, group.present),
            })),
        }));
        return { groups: plans };
      }
      case "buildBundle": {
        const { bundle } = input as BuildBundleInput;
        const failures = world.buildFailures?.get(bundle.bundleId) ?? 0;
        if (attempt <= failures) throw new Error(`registry timeout reading ${bundle.targetDigest}`);
        return { bundleId: bundle.bundleId, size: bundle.estimatedBytes, built: true };
      }
      case "placeBundles":
        return { placed: (input as { placements: unknown[] }).placements.length };
      case "markInTransit": {
        const { items } = input as MarkInTransitInput;
        return {
          alreadyPresent: items
            .filter((item) => world.presentAtMark?.has(`${item.device} ${item.digest}`))
            .map(({ device, digest }) => ({ device, digest })),
        };
      }
      case "recordSet":
      case "updateSetState":
        return null;
      case "pushManifest":
        return { pushed: (input as { devices: string[] }).devices.length };
      case "sendEmail":
        return { sent: true };
      default:
        throw new Error(`unexpected activity ${name}`);
    }
  };
}

/** A report event for one item, raised on the batch that waits for its device. */
export function report(
  setId: string,
  batchIndex: number,
  device: string,
  image: ResolvedImage,
  at: number,
  payload: unknown = { ok: true, bytes: 1000 },
): RaisedEvent {
  return {
    instanceId: batchInstanceId(setId, batchIndex),
    name: imageEventName(device, image.digest),
    payload,
    at: new Date(at),
  };
}
