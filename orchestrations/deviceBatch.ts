/**
 * `deviceBatch`: places the bundles of a batch of devices, marks them in transit, then waits
 * for one report event per (device, image), each raced against a durable timer at the
 * set's deadline. The sub-orchestration exists before any bundle is placed, so a report can
 * never arrive before there is an instance to receive it; early events wait in its buffer.
 */

import type { OrchestrationContext, OrchestrationHandler } from "durable-functions";
import * as df from "durable-functions";
import {
  type ItemFailure,
  type ItemKey,
  MARK_IN_TRANSIT,
  type MarkInTransitInput,
  type MarkInTransitOutput,
  PLACE_BUNDLES,
  type PlaceBundlesInput,
  UPDATE_SET_STATE,
  type UpdateSetStateInput,
} from "../activities/names.js";
import {
  type DeviceBatchInput,
  type DeviceBatchOutput,
  type ImageReport,
  imageEventName,
} from "./contract.js";
import { type BatchStatus, withChange } from "./decisions.js";

/** Storage hiccups are retried; placing and marking are idempotent, so a retry is safe. */
export const BATCH_ACTIVITY_RETRY = new df.RetryOptions(5_000, 5);

export const deviceBatchOrchestrator: OrchestrationHandler = function* (context: OrchestrationContext) {
  const input = context.df.getInput() as DeviceBatchInput;
  const now = () => context.df.currentUtcDateTime.toISOString();

  const seen = new Set<string>();
  const placements: PlaceBundlesInput["placements"] = [];
  for (const item of input.items) {
    const key = `${item.device}\n${item.bundleId}`;
    if (!seen.has(key)) placements.push({ device: item.device, bundleId: item.bundleId });
    seen.add(key);
  }
  yield context.df.callActivityWithRetry(PLACE_BUNDLES, BATCH_ACTIVITY_RETRY, {
    setId: input.setId,
    placements,
    ...(input.order === undefined ? {} : { order: input.order }),
  } satisfies PlaceBundlesInput);
  const marked: MarkInTransitOutput = yield context.df.callActivityWithRetry(
    MARK_IN_TRANSIT,
    BATCH_ACTIVITY_RETRY,
    {
      setId: input.setId,
      items: input.items,
    } satisfies MarkInTransitInput,
  );

  const present = new Set(marked.alreadyPresent.map((item) => `${item.device}\n${item.digest}`));
  const pending = input.items.filter((item) => !present.has(`${item.device}\n${item.digest}`));
  let status: BatchStatus = {
    setId: input.setId,
    batchIndex: input.batchIndex,
    items: { inTransit: pending.length, arrived: present.size, failed: 0, timedOut: 0 },
    bytes: 0,
    latest: [],
    updatedAt: now(),
  };
  context.df.setCustomStatus(status);

  const deadline = new Date(input.deadline);
  const failures: ItemFailure[] = [];
  const timedOut: ItemKey[] = [];
  // One wait at a time, each with its own fresh timer: re-yielding a Task.any over tasks already
  // yielded makes durable-functions schedule them again (azure-functions-durable-js#574).
  // Reports that arrive for later items meanwhile are buffered and consumed when their turn comes.
  for (const item of pending) {
    const report = context.df.waitForExternalEvent(imageEventName(item.device, item.digest));
    const timer = context.df.createTimer(deadline);
    const winner = yield context.df.Task.any([report, timer]);
    const key = { device: item.device, digest: item.digest };
    if (winner === timer) {
      timedOut.push(key);
      status = {
        ...status,
        items: {
          ...status.items,
          inTransit: status.items.inTransit - 1,
          timedOut: status.items.timedOut + 1,
        },
      };
      status = withChange(status, now(), `${item.device} ${item.digest}: no report before the deadline`);
    } else {
      timer.cancel();
      const outcome = readReport(report.result);
      if (outcome.ok) {
        status = {
          ...status,
          bytes: status.bytes + outcome.bytes,
          items: {
            ...status.items,
            inTransit: status.items.inTransit - 1,
            arrived: status.items.arrived + 1,
          },
        };
        status = withChange(status, now(), `${item.device} ${item.digest}: arrived`);
      } else {
        failures.push({ ...key, reason: outcome.reason });
        status = {
          ...status,
          items: { ...status.items, inTransit: status.items.inTransit - 1, failed: status.items.failed + 1 },
        };
        status = withChange(status, now(), `${item.device} ${item.digest}: failed: ${outcome.reason}`);
      }
    }
    context.df.setCustomStatus(status);
  }

  if (timedOut.length > 0) {
    // Marked here, by the batch, so the set's own history never carries a fleet-sized list.
    yield context.df.callActivityWithRetry(UPDATE_SET_STATE, BATCH_ACTIVITY_RETRY, {
      setId: input.setId,
      at: now(),
      timedOut,
    } satisfies UpdateSetStateInput);
  }

  const output: DeviceBatchOutput = {
    arrived: status.items.arrived,
    bytes: status.bytes,
    failures,
    timedOut,
  };
  return output;
};

/** A report payload as the trigger raised it; anything malformed counts as a failure, never a success. */
export function readReport(payload: unknown): { ok: true; bytes: number } | { ok: false; reason: string } {
  const report = payload as Partial<ImageReport> | null | undefined;
  if (report && report.ok === true) {
    return { ok: true, bytes: typeof report.bytes === "number" && report.bytes >= 0 ? report.bytes : 0 };
  }
  if (report && report.ok === false) {
    return {
      ok: false,
      reason: typeof report.reason === "string" && report.reason ? report.reason : "no reason given",
    };
  }
  return { ok: false, reason: `malformed report event payload ${JSON.stringify(payload)?.slice(0, 100)}` };
}
