/** readDeviceInventory: which images each device holds, grouped so identical devices share one plan. */
import type { ActivityDeps } from "./deps.js";
import type { InventoryGroup, ReadDeviceInventoryInput, ReadDeviceInventoryOutput } from "./names.js";

/** Groups devices by the exact set of images they hold, keeping device order within a group. Pure. */
export function groupInventory(
  devices: readonly string[],
  present: ReadonlyMap<string, string[]>,
): InventoryGroup[] {
  const groups = new Map<string, InventoryGroup>();
  for (const device of devices) {
    const digests = [...new Set(present.get(device) ?? [])].sort();
    const key = digests.join(" ");
    let group = groups.get(key);
    if (!group) groups.set(key, (group = { present: digests, devices: [] }));
    group.devices.push(device);
  }
  return [...groups.values()];
}

export async function readDeviceInventory(
  input: ReadDeviceInventoryInput,
  deps: Pick<ActivityDeps, "state">,
): Promise<ReadDeviceInventoryOutput> {
  const devices = [...new Set(input.devices)];
  return { groups: groupInventory(devices, await deps.state.deviceImages.presentImages(devices)) };
}
