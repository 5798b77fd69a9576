/** pushManifest: rewrites module images to the device-local registry and applies the manifest to each device. */
import type { ActivityDeps } from "./deps.js";
import type { DeploymentManifest, PushManifestInput, PushManifestOutput } from "./names.js";

/** Default address of the registry on each device that rebuilt images are pushed to. */
export const DEFAULT_LOCAL_REGISTRY = "localhost:5000";

/** Splits `host[:port]/name[:tag][@digest]`; the host is the first segment when it looks like one. Pure. */
export function splitImageRef(ref: string): {
  registry?: string;
  name: string;
  tag?: string;
  digest?: string;
} {
  let rest = ref;
  let digest: string | undefined;
  const at = rest.indexOf("@");
  if (at >= 0) {
    digest = rest.slice(at + 1);
    rest = rest.slice(0, at);
  }
  let registry: string | undefined;
  const slash = rest.indexOf("/");
  if (slash > 0) {
    const first = rest.slice(0, slash);
    if (first.includes(".") || first.includes(":") || first === "localhost") {
      registry = first;
      rest = rest.slice(slash + 1);
    }
  }
  let tag: string | undefined;
  const colon = rest.lastIndexOf(":");
  if (colon > 0) {
    tag = rest.slice(colon + 1);
    rest = rest.slice(0, colon);
  }
  return { registry, name: rest, tag, digest };
}

/** The image reference a device pulls from its local registry: same name and tag, local host. Pure. */
export function localImageRef(ref: string, localRegistry: string): string {
  const { name, tag, digest } = splitImageRef(ref);
  if (tag !== undefined) return `${localRegistry}/${name}:${tag}`;
  if (digest !== undefined) return `${localRegistry}/${name}@${digest}`;
  return `${localRegistry}/${name}:latest`;
}

/**
 * A copy of the manifest whose custom modules pull from the device-local registry, where the
 * edge module pushed the rebuilt images. System modules (edgeAgent, edgeHub) are left alone. Pure.
 */
export function rewriteManifest(
  manifest: DeploymentManifest,
  localRegistry: string = DEFAULT_LOCAL_REGISTRY,
): DeploymentManifest {
  const copy = structuredClone(manifest);
  const agent = copy.modulesContent.$edgeAgent as Record<string, unknown> | undefined;
  const modules = (
    agent?.["properties.desired"] as { modules?: Record<string, { settings?: { image?: string } }> }
  )?.modules;
  for (const module of Object.values(modules ?? {})) {
    if (module?.settings && typeof module.settings.image === "string") {
      module.settings.image = localImageRef(module.settings.image, localRegistry);
    }
  }
  return copy;
}

export async function pushManifest(
  input: PushManifestInput,
  deps: Pick<ActivityDeps, "iotHub">,
): Promise<PushManifestOutput> {
  const { modulesContent } = rewriteManifest(input.manifest, input.localRegistry || DEFAULT_LOCAL_REGISTRY);
  // One device after another: applying a configuration is cheap, and IoT Hub throttles bursts per hub.
  for (const device of input.devices) await deps.iotHub.pushManifest(device, modulesContent);
  return { pushed: input.devices.length };
}
