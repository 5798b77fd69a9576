/**
 * `deploymentSet` (instance id = set id): resolve, plan, build each distinct bundle once,
 * record the set, let one `deviceBatch` per batch of devices place bundles and wait for the
 * reports, then push the manifest everywhere and email, or fail the set and email why.
 */

import type { OrchestrationContext, OrchestrationHandler, Task } from "durable-functions";
import * as df from "durable-functions";
import {
  BUILD_BUNDLE,
  type BuildBundleInput,
  type ItemFailure,
  type ItemKey,
  PLAN_BUNDLES,
  type PlanBundlesInput,
  type PlanBundlesOutput,
  PUSH_MANIFEST,
  type PushManifestInput,
  READ_DEVICE_INVENTORY,
  RECORD_SET,
  RESOLVE_IMAGES,
  type ReadDeviceInventoryInput,
  type ReadDeviceInventoryOutput,
  type RecordSetInput,
  type ResolvedImage,
  type ResolveImagesInput,
  type ResolveImagesOutput,
  SEND_EMAIL,
  type SendEmailInput,
  UPDATE_SET_STATE,
  type UpdateSetStateInput,
} from "../activities/names.js";
import { appPriorityRules, decidePriority, outboxOrder } from "../config/priorities.js";
import {
  DEVICE_BATCH_ORCHESTRATION,
  type DeploymentSetInput,
  type DeploymentSetOutput,
  type DeviceBatchOutput,
} from "./contract.js";
import {
  collectOutcomes,
  deviceBatches,
  distinctBundles,
  distinctTargets,
  failuresToReport,
  initialStatus,
  MAX_REPORTED_FAILURES,
  plannedStatus,
  type SetStatus,
  waiters,
  withChange,
} from "./decisions.js";

/** Building reads from ACR and writes blobs: transient failures are expected, a few retries cover them. */
export const BUILD_RETRY = new df.RetryOptions(30_000, 3);
/** State writes and the IoT Hub push are idempotent; retry through short outages. */
export const STATE_RETRY = new df.RetryOptions(5_000, 5);
/** Loaded and validated when the app starts, so a bad rules file stops the app, not a set. */
const PRIORITY_RULES = appPriorityRules();

export const deploymentSetOrchestrator: OrchestrationHandler = function* (context: OrchestrationContext) {
  const input = context.df.getInput() as DeploymentSetInput;
  const now = () => context.df.currentUtcDateTime.toISOString();
  let status: SetStatus = initialStatus(input.setId, input.devices.length, now());
  context.df.setCustomStatus(status);

  const finish = function* (result: {
    state: DeploymentSetOutput["state"];
    failures: ItemFailure[];
    reason?: string;
  }) {
    const outcome: DeploymentSetOutput = {
      state: result.state,
      failures: result.failures.slice(0, MAX_REPORTED_FAILURES),
      failureCount: result.failures.length,
      ...(result.reason !== undefined ? { reason: result.reason } : {}),
    };
    status = withChange(
      { ...status, stage: outcome.state },
      now(),
      outcome.state === "succeeded"
        ? "set succeeded"
        : `set failed: ${outcome.reason ?? `${outcome.failureCount} failures`}`,
    );
    context.df.setCustomStatus(status);
    yield context.df.callActivityWithRetry(UPDATE_SET_STATE, STATE_RETRY, {
      setId: input.setId,
      state: outcome.state,
      at: now(),
      reason: outcome.reason,
    } satisfies UpdateSetStateInput);
    try {
      yield context.df.callActivityWithRetry(SEND_EMAIL, STATE_RETRY, {
        setId: input.setId,
        requestedBy: input.requestedBy,
        outcome: outcome.state,
        deviceCount: input.devices.length,
        images,
        bytesPlanned: status.bytesPlanned,
        fullBytes: status.fullBytes,
        failures: outcome.failures,
        failureCount: outcome.failureCount,
        reason: outcome.reason,
      } satisfies SendEmailInput);
    } catch (error) {
      // The set's outcome is recorded; a lost email must not turn a success into a failure.
      status = withChange(status, now(), `email to the requester failed: ${message(error)}`);
      context.df.setCustomStatus(status);
    }
    return outcome;
  };

  let images: ResolvedImage[] = [];
  let targets: { digest: string; fullBytes: number }[];
  let plan: PlanBundlesOutput;
  try {
    const resolved: ResolveImagesOutput = yield context.df.callActivityWithRetry(
      RESOLVE_IMAGES,
      STATE_RETRY,
      {
        manifest: input.manifest,
      } satisfies ResolveImagesInput,
    );
    images = resolved.images;
    targets = distinctTargets(images);
    const inventory: ReadDeviceInventoryOutput = yield context.df.callActivityWithRetry(
      READ_DEVICE_INVENTORY,
      STATE_RETRY,
      { devices: input.devices } satisfies ReadDeviceInventoryInput,
    );
    plan = yield context.df.callActivity(PLAN_BUNDLES, {
      targets,
      groups: inventory.groups,
    } satisfies PlanBundlesInput);
  } catch (error) {
    // Nothing was placed or recorded yet: the requester learns why from the email and the status.
    return yield* finish({
      state: "failed",
      failures: [],
      reason: `could not plan the set: ${message(error)}`,
    });
  }

  const priority = decidePriority(PRIORITY_RULES, {
    modules: images.map(({ module, labels }) => ({ module, labels })),
    requesterEmail: input.requestedBy.email,
    requested: input.priority,
    requestedAt: input.requestedAt,
  });
  const order = outboxOrder(priority, input.deadline, input.requestedAt);
  const bundles = distinctBundles(plan.groups);
  const batches = deviceBatches(input.setId, input.deadline, plan.groups, input.deviceBatchSize).map(
    (batch) => ({ ...batch, input: { ...batch.input, order } }),
  );
  status = plannedStatus(
    { ...status, priority },
    now(),
    images.length,
    plan.groups,
    targets.length,
    bundles.length,
    batches.length,
  );
  context.df.setCustomStatus(status);

  yield context.df.callActivityWithRetry(RECORD_SET, STATE_RETRY, {
    setId: input.setId,
    requestedBy: input.requestedBy,
    requestedAt: input.requestedAt,
    manifestRef: input.manifestRef,
    deadline: input.deadline,
    images,
    groups: plan.groups,
    waiters: waiters(batches),
    bytesPlanned: status.bytesPlanned,
    fullBytes: status.fullBytes,
    priority,
  } satisfies RecordSetInput);

  if (bundles.length > 0) {
    status = withChange(
      {
        ...status,
        stage: "building",
        items: { ...status.items, planned: 0, building: status.items.planned },
      },
      now(),
      `building ${bundles.length} bundles`,
    );
    context.df.setCustomStatus(status);
    const builds = bundles.map((bundle) =>
      context.df.callActivityWithRetry(BUILD_BUNDLE, BUILD_RETRY, { bundle } satisfies BuildBundleInput),
    );
    try {
      yield context.df.Task.all(builds);
    } catch {
      // Task.all fails fast; read every build to name each bundle that could not be built.
      const failed = bundles.filter((_, i) => builds[i]!.isFaulted).map((bundle) => bundle.bundleId);
      return yield* finish({
        state: "failed",
        failures: [],
        reason: `could not build bundle(s) ${failed.join(", ")}`,
      });
    }
    status = withChange(
      {
        ...status,
        stage: "placing",
        bundles: { ...status.bundles, built: bundles.length },
        items: { ...status.items, building: 0, inTransit: status.items.building },
      },
      now(),
      `built ${bundles.length} bundles; placing them in ${batches.length} batches of devices`,
    );
    context.df.setCustomStatus(status);
  }

  let failures: ItemFailure[] = [];
  let timedOut: ItemKey[] = [];
  if (batches.length > 0) {
    status = { ...status, stage: "waiting" };
    context.df.setCustomStatus(status);
    const waits: Task[] = batches.map((batch) =>
      context.df.callSubOrchestrator(DEVICE_BATCH_ORCHESTRATION, batch.input, batch.instanceId),
    );
    try {
      yield context.df.Task.all(waits);
    } catch {
      // A batch that fails (its activities kept failing) ends the set; the others' reports still count.
      const outcome = collectOutcomes(
        waits.filter((task) => task.isCompleted).map((task) => task.result as DeviceBatchOutput),
      );
      const reasons = batches.flatMap((batch, i) =>
        waits[i]!.isFaulted ? [`${batch.instanceId}: ${message(waits[i]!.result)}`] : [],
      );
      return yield* finish({
        state: "failed",
        failures: failuresToReport(outcome.failures, outcome.timedOut, input.deadline),
        reason: `waiting batch(es) failed: ${reasons.join("; ")}`,
      });
    }
    const outputs = waits.map((task) => task.result as DeviceBatchOutput);
    const outcome = collectOutcomes(outputs);
    failures = outcome.failures;
    timedOut = outcome.timedOut;
    status = withChange(
      {
        ...status,
        batches: { ...status.batches, done: batches.length },
        items: {
          ...status.items,
          inTransit: timedOut.length,
          arrived: outcome.arrived,
          failed: failures.length,
        },
      },
      now(),
      `${outcome.arrived} arrived (${outcome.bytes} bytes), ${failures.length} failed, ${timedOut.length} without report`,
    );
    context.df.setCustomStatus(status);
  }

  if (failures.length > 0 || timedOut.length > 0) {
    return yield* finish({ state: "failed", failures: failuresToReport(failures, timedOut, input.deadline) });
  }

  status = withChange(
    { ...status, stage: "pushing" },
    now(),
    `pushing the manifest to ${input.devices.length} devices`,
  );
  context.df.setCustomStatus(status);
  const pushes: Task[] = [];
  for (let i = 0; i < input.devices.length; i += input.deviceBatchSize) {
    pushes.push(
      context.df.callActivityWithRetry(PUSH_MANIFEST, STATE_RETRY, {
        setId: input.setId,
        devices: input.devices.slice(i, i + input.deviceBatchSize),
        manifest: input.manifest,
        localRegistry: input.localRegistry,
      } satisfies PushManifestInput),
    );
  }
  try {
    yield context.df.Task.all(pushes);
  } catch (error) {
    return yield* finish({
      state: "failed",
      failures: [],
      reason: `every image arrived but the manifest push failed: ${message(error)}`,
    });
  }
  return yield* finish({ state: "succeeded", failures: [] });
};

/** First line of a task failure: the activity's own message, without the stack Durable appends. */
function message(error: unknown): string {
  const text = error instanceof Error ? error.message : String(error);
  return text.split("\n")[0]!.trim();
}
