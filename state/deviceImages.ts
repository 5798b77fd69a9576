/**
 * Which images each device holds: `deviceImages` (PK device, RK digest) and its mirror
 * `imageDevices` (PK digest, RK device). A report and the orchestration can write the same
 * row at once, so every write goes through an ETag-checked transition, and `present` always
 * wins over `inTransit`: a device that has an image has it, whatever was planned.
 */
import type { TableClient } from "@azure/data-tables";
import { escapeKey, odata } from "./keys.js";
import {
  type Page,
  type PageRequest,
  queryPage,
  statusOf,
  stripMetadata,
  submitInBatches,
  transition,
} from "./tables.js";

export type ImageState = "inTransit" | "present" | "failed";

export interface DeviceImageRow {
  device: string;
  digest: string;
  state: ImageState;
  /** Deployment set that last touched the row. */
  setId?: string;
  bundleId?: string;
  reason?: string;
  updatedAt: string;
  inTransitAt?: string;
  presentAt?: string;
  failedAt?: string;
}

export type DeviceImageEvent =
  | { kind: "inTransit"; setId: string; bundleId: string; at: string }
  | { kind: "present"; setId?: string; at: string }
  | { kind: "failed"; setId?: string; reason: string; at: string };

/** The next row for an event, or undefined when the event changes nothing. Pure. */
export function nextDeviceImage(
  device: string,
  digest: string,
  current: DeviceImageRow | undefined,
  event: DeviceImageEvent,
): DeviceImageRow | undefined {
  const base: DeviceImageRow = current
    ? { ...current }
    : { device, digest, state: event.kind, updatedAt: event.at };
  switch (event.kind) {
    case "inTransit":
      if (current?.state === "present") return undefined;
      if (
        current?.state === "inTransit" &&
        current.setId === event.setId &&
        current.bundleId === event.bundleId
      ) {
        return undefined;
      }
      return {
        ...base,
        state: "inTransit",
        setId: event.setId,
        bundleId: event.bundleId,
        reason: undefined,
        inTransitAt: event.at,
        updatedAt: event.at,
      };
    case "present":
      if (current?.state === "present") return undefined;
      return {
        ...base,
        state: "present",
        setId: event.setId ?? current?.setId,
        reason: undefined,
        presentAt: event.at,
        updatedAt: event.at,
      };
    case "failed":
      if (current?.state === "present") return undefined;
      if (current?.state === "failed" && current.reason === event.reason && current.setId === event.setId) {
        return undefined;
      }
      return {
        ...base,
        state: "failed",
        setId: event.setId ?? current?.setId,
        reason: event.reason,
        failedAt: event.at,
        updatedAt: event.at,
      };
  }
}

/** Parallel row reads when listing many devices: enough to hide latency, few enough for a small plan. */
const INVENTORY_READ_CONCURRENCY = 16;

export class DeviceImages {
  constructor(
    private readonly byDevice: TableClient,
    private readonly byImage: TableClient,
  ) {}

  /** Applies one event to both views; returns the device's row as it now stands. */
  async apply(
    device: string,
    digest: string,
    event: DeviceImageEvent,
  ): Promise<{ row: DeviceImageRow | undefined; changed: boolean }> {
    const decide = (current: DeviceImageRow | undefined) =>
      withoutUndefined(nextDeviceImage(device, digest, current, event));
    const result = await transition<DeviceImageRow>(
      this.byDevice,
      escapeKey(device),
      escapeKey(digest),
      decide,
    );
    // The mirror applies the same rule, so it converges even when two writers reach it in another order.
    await transition<DeviceImageRow>(this.byImage, escapeKey(digest), escapeKey(device), decide);
    return result;
  }

  async get(device: string, digest: string): Promise<DeviceImageRow | undefined> {
    try {
      return stripMetadata(
        await this.byDevice.getEntity<DeviceImageRow>(escapeKey(device), escapeKey(digest)),
      );
    } catch (error) {
      if (statusOf(error) === 404) return undefined;
      throw error;
    }
  }

  listByDevice(device: string, request: PageRequest = {}): Promise<Page<DeviceImageRow>> {
    return queryPage<DeviceImageRow>(this.byDevice, `PartitionKey eq ${odata(escapeKey(device))}`, request);
  }

  listByImage(digest: string, request: PageRequest = {}): Promise<Page<DeviceImageRow>> {
    return queryPage<DeviceImageRow>(this.byImage, `PartitionKey eq ${odata(escapeKey(digest))}`, request);
  }

  /** Digests of the images present on each device (devices with none map to an empty list). */
  async presentImages(devices: readonly string[]): Promise<Map<string, string[]>> {
    const result = new Map<string, string[]>();
    let next = 0;
    const worker = async () => {
      while (next < devices.length) {
        const device = devices[next++]!;
        const digests: string[] = [];
        const filter = `PartitionKey eq ${odata(escapeKey(device))} and state eq 'present'`;
        for await (const row of this.byDevice.listEntities<DeviceImageRow>({ queryOptions: { filter } })) {
          digests.push(row.digest);
        }
        result.set(device, digests.sort());
      }
    };
    await Promise.all(Array.from({ length: Math.min(INVENTORY_READ_CONCURRENCY, devices.length) }, worker));
    return result;
  }

  /**
   * Heals the view from a device's own inventory: listed images become present, images
   * recorded present but no longer listed are removed. In-transit and failed rows stay.
   */
  async healInventory(device: string, presentDigests: readonly string[], at: string): Promise<void> {
    const listed = new Set(presentDigests);
    for (const digest of listed) await this.apply(device, digest, { kind: "present", at });
    const filter = `PartitionKey eq ${odata(escapeKey(device))} and state eq 'present'`;
    const gone: DeviceImageRow[] = [];
    for await (const row of this.byDevice.listEntities<DeviceImageRow>({ queryOptions: { filter } })) {
      if (!listed.has(row.digest)) gone.push(row);
    }
    if (gone.length === 0) return;
    await submitInBatches(
      this.byDevice,
      gone.map((row) => ["delete", { partitionKey: escapeKey(device), rowKey: escapeKey(row.digest) }]),
    );
    for (const row of gone) {
      try {
        await this.byImage.deleteEntity(escapeKey(row.digest), escapeKey(device));
      } catch (error) {
        if (statusOf(error) !== 404) throw error;
      }
    }
  }
}

/** Table Storage cannot store undefined; drop such properties (a replace then removes them). */
export function withoutUndefined<T extends object>(row: T | undefined): T | undefined {
  if (row === undefined) return undefined;
  const out: Record<string, unknown> = {};
  for (const [key, value] of Object.entries(row)) if (value !== undefined) out[key] = value;
  return out as T;
}
