import { imageEventName } from "../../orchestrations/contract.js";
import type { ItemRow } from "../../state/deploymentSets.js";
import type { StateStore } from "../../state/store.js";
import type { RaisedEvent } from "./durableReplay.js";

export type TestReport = { ok: true; bytes: number } | { ok: false; reason: string };

/**
 * Devices report every in-transit item of a set: each report is recorded as the report function
 * records it, and the event the waiting batch orchestration expects is returned for the replay.
 */
export async function reportInTransit(
  state: StateStore,
  setId: string,
  now: Date,
  reportFor: (item: ItemRow) => TestReport | Promise<TestReport>,
): Promise<RaisedEvent[]> {
  const events: RaisedEvent[] = [];
  const page = await state.sets.listItems(setId, { pageSize: 1000 });
  for (const item of page.items.filter((row) => row.state === "inTransit")) {
    const report = await reportFor(item);
    const { item: recorded } = await state.recordImageReport({
      device: item.device,
      digest: item.digest,
      setId,
      at: now.toISOString(),
      ...report,
    });
    events.push({
      instanceId: recorded!.waiter!,
      name: imageEventName(item.device, item.digest),
      payload: report,
      at: now,
    });
  }
  return events;
}
