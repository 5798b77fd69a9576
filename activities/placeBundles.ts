/** placeBundles: copies each bundle into its device's outbox prefix, where the file-transfer tool picks it up. */
import type { ActivityDeps } from "./deps.js";
import type { PlaceBundlesInput, PlaceBundlesOutput } from "./names.js";

/** Server-side copies in flight at once: each is one small request; more only queues at the account. */
const PLACE_CONCURRENCY = 16;

export async function placeBundles(
  input: PlaceBundlesInput,
  deps: Pick<ActivityDeps, "blobs">,
): Promise<PlaceBundlesOutput> {
  let next = 0;
  const worker = async () => {
    while (next < input.placements.length) {
      const { device, bundleId } = input.placements[next++]!;
      await deps.blobs.placeBundle(device, bundleId, input.order);
    }
  };
  await Promise.all(Array.from({ length: Math.min(PLACE_CONCURRENCY, input.placements.length) }, worker));
  return { placed: input.placements.length };
}
