/** updateSetState: marks the set finished, and items that never reported as timed out. */
import type { ActivityDeps } from "./deps.js";
import type { UpdateSetStateInput } from "./names.js";

export async function updateSetState(
  input: UpdateSetStateInput,
  deps: Pick<ActivityDeps, "state">,
): Promise<null> {
  for (const item of input.timedOut ?? []) {
    await deps.state.sets.applyToItem(input.setId, item.device, item.digest, {
      kind: "timedOut",
      at: input.at,
    });
  }
  if (input.state !== undefined)
    await deps.state.sets.setState(input.setId, input.state, input.at, input.reason);
  return null;
}
