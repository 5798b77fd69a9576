/** recordSet: writes the set (who, when, what, which devices) and one row per (device, image). */
import type { NewSet } from "../state/deploymentSets.js";
import type { ActivityDeps } from "./deps.js";
import type { RecordSetInput } from "./names.js";

export async function recordSet(input: RecordSetInput, deps: Pick<ActivityDeps, "state">): Promise<null> {
  const waiterOf = new Map(input.waiters.map((w) => [w.device, w.waiter]));
  const targets = [...new Set(input.images.map((image) => image.digest))];
  const items: NewSet["items"] = [];
  let deviceCount = 0;
  for (const group of input.groups) {
    deviceCount += group.devices.length;
    const bundleOf = new Map(group.needs.map((need) => [need.digest, need.bundle.bundleId]));
    for (const device of group.devices) {
      for (const digest of targets) {
        const bundleId = bundleOf.get(digest);
        items.push(
          bundleId === undefined
            ? { device, digest, state: "present" }
            : { device, digest, state: "planned", bundleId, waiter: waiterOf.get(device) },
        );
      }
    }
  }
  await deps.state.sets.record({
    setId: input.setId,
    requestedBy: input.requestedBy,
    requestedAt: input.requestedAt,
    manifestRef: input.manifestRef,
    deadline: input.deadline,
    images: input.images.map(({ module, ref, digest, fullBytes }) => ({ module, ref, digest, fullBytes })),
    deviceCount,
    bytesPlanned: input.bytesPlanned,
    fullBytes: input.fullBytes,
    ...(input.priority === undefined ? {} : { priority: input.priority }),
    items,
  });
  return null;
}
