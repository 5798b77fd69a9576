/** planBundles: per group of identical devices and missing image, the bundle the pure planner picks. */
import { type ImageIndex, parseImageIndex } from "../delta/index/index.js";
import { planSources } from "../delta/index/plan.js";
import { bundleBlobName } from "../state/blobs.js";
import type { ActivityDeps } from "./deps.js";
import type { GroupPlan, PlanBundlesInput, PlanBundlesOutput, PlannedBundle } from "./names.js";

export async function planBundles(
  input: PlanBundlesInput,
  deps: Pick<ActivityDeps, "blobs">,
): Promise<PlanBundlesOutput> {
  const indexes = new Map<string, ImageIndex | undefined>();
  const indexOf = async (digest: string): Promise<ImageIndex | undefined> => {
    if (!indexes.has(digest)) {
      // A held image without an index (pushed outside the pipeline) simply cannot serve as a source.
      indexes.set(digest, (await deps.blobs.hasIndex(digest)) ? await readIndex(deps, digest) : undefined);
    }
    return indexes.get(digest);
  };
  const groups: GroupPlan[] = [];
  for (const group of input.groups) {
    const needs: GroupPlan["needs"] = [];
    // Images this set brings earlier count as held for the later ones: layers two targets share
    // (a common base) cross the link once. The device applies a bundle once its sources are there.
    const broughtBefore: string[] = [];
    for (const target of input.targets) {
      if (group.present.includes(target.digest)) continue;
      const targetIndex = await indexOf(target.digest);
      if (!targetIndex) {
        throw new Error(
          `expected an index for target image ${target.digest}, found none; run resolveImages first`,
        );
      }
      const held: { digest: string; index: ImageIndex }[] = [];
      for (const digest of [...group.present, ...broughtBefore]) {
        const index = await indexOf(digest);
        if (index) held.push({ digest, index });
      }
      if (!broughtBefore.includes(target.digest)) broughtBefore.push(target.digest);
      const plan = planSources(
        targetIndex,
        held.map((h) => h.index),
      );
      const sourceLayers = plan.sources.map((s) => s.diffId);
      // Target layers the device holds are referenced, never sent: the images holding them must be
      // among the bundle's sources, and they are part of what the bundle assumes, so of its identity.
      const presentLayers = plan.layers.filter((l) => l.present).map((l) => l.diffId);
      const usedLayers = new Set([...sourceLayers, ...presentLayers]);
      const sourceDigests = held
        .filter((h) => h.index.layers.some((layer) => usedLayers.has(layer.diffId)))
        .map((h) => h.digest)
        .sort();
      const bundle: PlannedBundle = {
        bundleId: bundleBlobName(target.digest, sourceLayers, presentLayers),
        targetDigest: target.digest,
        sourceDigests,
        sourceLayers,
        presentLayers,
        estimatedBytes: plan.estimatedBundleBytes,
        fullBytes: target.fullBytes,
      };
      needs.push({ digest: target.digest, bundle });
    }
    groups.push({ devices: group.devices, needs });
  }
  return { groups };
}

async function readIndex(deps: Pick<ActivityDeps, "blobs">, digest: string): Promise<ImageIndex> {
  return parseImageIndex(JSON.stringify(await deps.blobs.readIndex(digest)));
}
