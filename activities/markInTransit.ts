/** markInTransit: records each (device, image) as on its way, unless a report already showed it present. */
import type { ActivityDeps } from "./deps.js";
import type { ItemKey, MarkInTransitInput, MarkInTransitOutput } from "./names.js";

export async function markInTransit(
  input: MarkInTransitInput,
  deps: Pick<ActivityDeps, "state">,
  now: () => Date = () => new Date(),
): Promise<MarkInTransitOutput> {
  const at = now().toISOString();
  const alreadyPresent: ItemKey[] = [];
  for (const item of input.items) {
    const { row } = await deps.state.deviceImages.apply(item.device, item.digest, {
      kind: "inTransit",
      setId: input.setId,
      bundleId: item.bundleId,
      at,
    });
    if (row?.state === "present") {
      alreadyPresent.push({ device: item.device, digest: item.digest });
      await deps.state.sets.applyToItem(input.setId, item.device, item.digest, {
        kind: "report",
        ok: true,
        at,
      });
    } else {
      await deps.state.sets.applyToItem(input.setId, item.device, item.digest, { kind: "inTransit", at });
    }
  }
  return { alreadyPresent };
}
