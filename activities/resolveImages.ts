/** resolveImages: module image tags → digests in ACR, and an index in Blob Storage for each. */
import { indexImage } from "../delta/index/index.js";
import type { ActivityDeps } from "./deps.js";
import type { DeploymentManifest, ResolvedImage, ResolveImagesInput, ResolveImagesOutput } from "./names.js";

/** A manifest with more modules than this is not an IoT Edge deployment we can ship in one set. */
export const MAX_MODULES = 100;

/** The custom modules' image references, in manifest order. Pure. */
export function moduleImages(manifest: DeploymentManifest): { module: string; ref: string }[] {
  const agent = manifest.modulesContent?.$edgeAgent as Record<string, unknown> | undefined;
  const desired = agent?.["properties.desired"] as { modules?: Record<string, unknown> } | undefined;
  const modules = desired?.modules;
  if (!modules || typeof modules !== "object") {
    throw new Error(
      "expected modulesContent.$edgeAgent['properties.desired'].modules in the deployment manifest, found none; " +
        "pass an IoT Edge deployment.template.json with concrete image references",
    );
  }
  const out: { module: string; ref: string }[] = [];
  for (const [module, value] of Object.entries(modules)) {
    const image = (value as { settings?: { image?: unknown } })?.settings?.image;
    if (typeof image !== "string" || image === "" || image.includes("${")) {
      throw new Error(
        `expected module ${module} to have settings.image with a concrete reference, found ${JSON.stringify(image)}; ` +
          "substitute template variables before deploying",
      );
    }
    out.push({ module, ref: image });
  }
  if (out.length > MAX_MODULES) {
    throw new Error(`expected at most ${MAX_MODULES} modules in a deployment manifest, found ${out.length}`);
  }
  return out;
}

export async function resolveImages(
  input: ResolveImagesInput,
  deps: Pick<ActivityDeps, "registry" | "blobs">,
): Promise<ResolveImagesOutput> {
  const images: ResolvedImage[] = [];
  for (const { module, ref } of moduleImages(input.manifest)) {
    const resolved = await deps.registry.resolve(ref);
    if (!(await deps.blobs.hasIndex(resolved.digest))) {
      // The build pipeline normally indexes each image; one it missed is indexed here, once.
      const image = await deps.registry.open(resolved.repository, resolved.digest);
      try {
        await deps.blobs.writeIndex(resolved.digest, await indexImage(image));
      } finally {
        await image.close();
      }
    }
    images.push({ module, ref, ...resolved });
  }
  return { images };
}
