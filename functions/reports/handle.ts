// Device reports from IoT Hub's built-in endpoint (Event Hub trigger, cardinality many): record
// each in Table Storage and tell the waiting orchestration. Reports arrive at least once and in
// any order; every write is an idempotent transition, so a replayed batch changes nothing.

import type { InvocationContext } from "@azure/functions";
import type { DurableClient } from "durable-functions";
import { withoutOutboxPrefix } from "../../config/priorities.js";
import { type ImageReport, imageEventName } from "../../orchestrations/contract.js";
import type { ItemRow } from "../../state/deploymentSets.js";
import type { DeviceImageRow } from "../../state/deviceImages.js";
import type { StateStore } from "../../state/store.js";

/** Images in one inventory report: a device registry with more is not an edge device; bounds writes per message. */
export const MAX_INVENTORY_IMAGES = 1000;
/** Longest failure reason kept; longer ones are cut (a reason is for people, not a log dump). */
export const MAX_REASON_LENGTH = 2000;
/** Longest image, set or bundle name accepted; real ones are under 300 characters. */
export const MAX_NAME_LENGTH = 512;
/** Largest report body read; an inventory of MAX_INVENTORY_IMAGES fits in well under this. */
export const MAX_REPORT_BYTES = 256 * 1024;

const DIGEST = /^sha256:[0-9a-f]{64}$/;

/** The IoT Hub system property naming the sending device: set by IoT Hub, so a device cannot forge it. */
export const DEVICE_ID_PROPERTY = "iothub-connection-device-id";
export const MODULE_ID_PROPERTY = "iothub-connection-module-id";

export interface ImageReportBody {
  type: "imageReady" | "imageFailed";
  setId: string;
  bundleId: string;
  image: string;
  digest: string;
  bytes: number;
  durationMs: number;
  reason?: string;
}
export interface InventoryReportBody {
  type: "inventory";
  images: { image: string; digest: string }[];
}

export interface ReportDeps {
  state: Pick<StateStore, "recordImageReport" | "deviceImages" | "sets">;
  durable: Pick<DurableClient, "raiseEvent">;
}

export type ReportOutcome =
  | { kind: "raised"; device: string; digest: string; setId: string; waiter: string; event: ImageReport }
  | { kind: "recorded"; device: string; digest: string; note: string }
  /** `resolved`: in-transit items the inventory showed present, told to their orchestration. */
  | { kind: "healed"; device: string; images: number; resolved: number }
  | { kind: "dropped"; reason: string };

/** One message as the trigger hands it over, with its metadata already picked out. */
export interface ReportMessage {
  body: unknown;
  systemProperties: Record<string, unknown> | undefined;
  /** When IoT Hub accepted the message, ISO; the report's time in the tables. */
  enqueuedAt: string | undefined;
}

/** Pairs each body of a batch with its system properties and enqueued time from the trigger metadata. */
export function messagesOf(bodies: unknown[], context: InvocationContext): ReportMessage[] {
  const meta = context.triggerMetadata ?? {};
  // Cardinality many gives arrays; a single message (cardinality one) gives the plain properties.
  const properties = (meta.systemPropertiesArray ??
    (meta.systemProperties ? [meta.systemProperties] : [])) as Record<string, unknown>[];
  const enqueued = (meta.enqueuedTimeUtcArray ??
    (meta.enqueuedTimeUtc ? [meta.enqueuedTimeUtc] : [])) as unknown[];
  return bodies.map((body, i) => {
    const system = properties[i];
    const time = enqueued[i] ?? system?.["iothub-enqueuedtime"] ?? system?.EnqueuedTimeUtc;
    return { body, systemProperties: system, enqueuedAt: isoOrUndefined(time) };
  });
}

/**
 * Handles a batch: malformed messages and reports nobody waits for are logged and dropped;
 * failures that may pass (storage, the Durable extension) are collected and thrown at the end,
 * after every other message was handled, so the trigger's retry policy runs the batch again.
 */
export async function handleReports(
  messages: ReportMessage[],
  context: InvocationContext,
  deps: ReportDeps,
  now: () => Date = () => new Date(),
): Promise<ReportOutcome[]> {
  const outcomes: ReportOutcome[] = [];
  const transient: Error[] = [];
  for (const message of messages) {
    try {
      const outcome = await handleReport(message, deps, now);
      if (outcome.kind === "dropped") context.warn(`device report dropped: ${outcome.reason}`);
      else if (outcome.kind === "recorded") context.log(`device report recorded: ${outcome.note}`);
      outcomes.push(outcome);
    } catch (error) {
      context.error(`device report failed, the batch will be retried: ${(error as Error).message}`);
      transient.push(error as Error);
    }
  }
  if (transient.length > 0) {
    throw new AggregateError(
      transient,
      `${transient.length} of ${messages.length} device reports could not be stored`,
    );
  }
  return outcomes;
}

export async function handleReport(
  message: ReportMessage,
  deps: ReportDeps,
  now: () => Date,
): Promise<ReportOutcome> {
  const device = message.systemProperties?.[DEVICE_ID_PROPERTY];
  if (typeof device !== "string" || device === "") {
    return { kind: "dropped", reason: `no ${DEVICE_ID_PROPERTY} system property: not a device message` };
  }
  const parsed = parseReport(message.body);
  if (typeof parsed === "string") return { kind: "dropped", reason: `from ${device}: ${parsed}` };
  const at = message.enqueuedAt ?? now().toISOString();
  if (parsed.type === "inventory") return handleInventory(device, parsed, at, deps);
  return handleImageReport(device, parsed, at, deps);
}

/**
 * Heals the device's rows from its inventory. An image the device holds while its row still
 * says in transit means the imageReady report was lost: the item is resolved as arrived and
 * the waiting orchestration told, so the set need not wait for its deadline.
 */
async function handleInventory(
  device: string,
  report: InventoryReportBody,
  at: string,
  deps: ReportDeps,
): Promise<ReportOutcome> {
  const digests = new Set(report.images.map((i) => i.digest));
  const lost: DeviceImageRow[] = [];
  let continuationToken: string | undefined;
  do {
    const page = await deps.state.deviceImages.listByDevice(device, { continuationToken });
    for (const row of page.items) {
      if (row.state === "inTransit" && row.setId !== undefined && digests.has(row.digest)) lost.push(row);
    }
    continuationToken = page.continuationToken;
  } while (continuationToken !== undefined);
  await deps.state.deviceImages.healInventory(device, [...digests], at);
  let resolved = 0;
  for (const row of lost) {
    const setId = row.setId!;
    const { row: item } = await deps.state.sets.applyToItem(setId, device, row.digest, {
      kind: "report",
      ok: true,
      at,
    });
    if (item === undefined) continue;
    const outcome = await notify(device, row.digest, setId, item, deps);
    if (outcome.kind === "raised") resolved++;
  }
  return { kind: "healed", device, images: digests.size, resolved };
}

async function handleImageReport(
  device: string,
  report: ImageReportBody,
  at: string,
  deps: ReportDeps,
): Promise<ReportOutcome> {
  // A failure can come before the image existed (empty digest), and a bundle file may not name
  // its set: then the device's in-transit row for that bundle says which image and set it was.
  let digest = report.digest;
  let setId = report.setId;
  if (digest === "" || setId === "") {
    const row = await findDeviceImage(deps, device, digest, report.bundleId);
    if (row === undefined) {
      return {
        kind: "dropped",
        reason:
          `from ${device}: ${report.type} for bundle ${JSON.stringify(report.bundleId)} names ` +
          `${digest === "" ? "no image digest" : "no set"} and no in-transit image of this device matches it`,
      };
    }
    digest = row.digest;
    setId = setId === "" ? (row.setId ?? "") : setId;
  }

  const ok = report.type === "imageReady";
  const { item } = await deps.state.recordImageReport({
    device,
    digest,
    setId: setId === "" ? undefined : setId,
    ok,
    ...(ok ? {} : { reason: report.reason ?? "no reason given" }),
    bytes: report.bytes,
    durationMs: report.durationMs,
    at,
  });
  if (item === undefined) {
    return {
      kind: "recorded",
      device,
      digest,
      note: `${device} ${report.type} ${digest}: set ${JSON.stringify(setId)} has no such item; nothing to notify`,
    };
  }
  return notify(device, digest, setId, item, deps);
}

/** Raises the item's outcome on the orchestration waiting for it. */
async function notify(
  device: string,
  digest: string,
  setId: string,
  item: ItemRow,
  deps: ReportDeps,
): Promise<ReportOutcome> {
  if (item.state !== "arrived" && item.state !== "failed" && item.state !== "present") {
    // timedOut: the set already gave up on this item; the row records the late report.
    return {
      kind: "recorded",
      device,
      digest,
      note: `${device} ${digest}: item is ${item.state}; not raised`,
    };
  }
  // The event carries the item's state after this report, so a late success after a failure
  // (or the reverse) tells the orchestration what the table says.
  const event: ImageReport =
    item.state === "failed"
      ? { ok: false, reason: item.reason ?? "no reason given" }
      : { ok: true, ...(item.bytes === undefined ? {} : { bytes: item.bytes }) };
  const waiter = item.waiter ?? setId;
  try {
    await deps.durable.raiseEvent(waiter, imageEventName(device, digest), event);
  } catch (error) {
    if (/No instance with ID/.test((error as Error).message)) {
      return {
        kind: "recorded",
        device,
        digest,
        note: `${device} ${digest}: orchestration ${waiter} does not exist`,
      };
    }
    throw error;
  }
  return { kind: "raised", device, digest, setId, waiter, event };
}

async function findDeviceImage(
  deps: ReportDeps,
  device: string,
  digest: string,
  bundleId: string,
): Promise<DeviceImageRow | undefined> {
  if (digest !== "") return deps.state.deviceImages.get(device, digest);
  // Outbox file names flatten the bundle id's '/' to '-' after a priority prefix (state/blobs.ts outboxBlobName).
  const wanted = withoutOutboxPrefix(bundleId).replace(/\//g, "-");
  let continuationToken: string | undefined;
  do {
    const page = await deps.state.deviceImages.listByDevice(device, { continuationToken });
    const row = page.items.find((r) => r.bundleId !== undefined && r.bundleId.replace(/\//g, "-") === wanted);
    if (row !== undefined) return row;
    continuationToken = page.continuationToken;
  } while (continuationToken !== undefined);
  return undefined;
}

/** The report, or a sentence saying what is wrong with it. */
export function parseReport(body: unknown): ImageReportBody | InventoryReportBody | string {
  let value = body;
  if (Buffer.isBuffer(value) || value instanceof Uint8Array) value = Buffer.from(value).toString("utf8");
  if (typeof value === "string") {
    const text = value;
    if (text.length > MAX_REPORT_BYTES) return `report is over ${MAX_REPORT_BYTES} bytes`;
    try {
      value = JSON.parse(text);
    } catch {
      return `report is not JSON: ${JSON.stringify(text.slice(0, 60))}`;
    }
  }
  if (value === null || typeof value !== "object" || Array.isArray(value))
    return "report is not a JSON object";
  const r = value as Record<string, unknown>;
  if (r.type === "inventory") {
    if (!Array.isArray(r.images)) return "inventory report needs an images list";
    if (r.images.length > MAX_INVENTORY_IMAGES) {
      return `inventory lists ${r.images.length} images, over the limit of ${MAX_INVENTORY_IMAGES}`;
    }
    const images: { image: string; digest: string }[] = [];
    for (const [i, entry] of r.images.entries()) {
      const { image, digest } = (entry ?? {}) as Record<string, unknown>;
      if (!isName(image) || typeof digest !== "string" || !DIGEST.test(digest)) {
        return `inventory images[${i}] needs an image name and a sha256:<64 hex> digest`;
      }
      images.push({ image, digest });
    }
    return { type: "inventory", images };
  }
  if (r.type !== "imageReady" && r.type !== "imageFailed") {
    return `unknown report type ${JSON.stringify(r.type)}; expected imageReady, imageFailed or inventory`;
  }
  for (const field of ["setId", "bundleId", "image"] as const) {
    if (!isName(r[field], true))
      return `${r.type} report needs ${field} as a string of at most ${MAX_NAME_LENGTH} characters`;
  }
  if (typeof r.digest !== "string" || (r.digest !== "" && !DIGEST.test(r.digest))) {
    return `${r.type} report needs digest as sha256:<64 hex> (or empty when no image was made)`;
  }
  if (r.type === "imageReady" && r.digest === "") return "imageReady report needs the image digest";
  for (const field of ["bytes", "durationMs"] as const) {
    const n = r[field];
    if (typeof n !== "number" || !Number.isSafeInteger(n) || n < 0) {
      return `${r.type} report needs ${field} as a whole number of at least 0`;
    }
  }
  if (r.reason !== undefined && typeof r.reason !== "string")
    return `${r.type} report reason must be a string`;
  return {
    type: r.type,
    setId: r.setId as string,
    bundleId: r.bundleId as string,
    image: r.image as string,
    digest: r.digest,
    bytes: r.bytes as number,
    durationMs: r.durationMs as number,
    ...(r.reason === undefined ? {} : { reason: (r.reason as string).slice(0, MAX_REASON_LENGTH) }),
  };
}

function isName(value: unknown, allowEmpty = false): value is string {
  return typeof value === "string" && value.length <= MAX_NAME_LENGTH && (allowEmpty || value.length > 0);
}

function isoOrUndefined(value: unknown): string | undefined {
  if (value === undefined || value === null) return undefined;
  const time = value instanceof Date ? value : new Date(String(value));
  return Number.isNaN(time.getTime()) ? undefined : time.toISOString();
}
