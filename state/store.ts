/**
 * The cloud state in one object: every repository over its Table Storage table, plus the
 * one write a device report needs. Build it once per process from the storage connection string.
 */
import { TableClient, type TableServiceClientOptions } from "@azure/data-tables";
import { Bundles } from "./bundles.js";
import { DeploymentSets, type ItemRow } from "./deploymentSets.js";
import { DeviceImages } from "./deviceImages.js";
import { statusOf, TABLES } from "./tables.js";
import { Transfers } from "./transfers.js";

export interface ImageReportRecord {
  device: string;
  digest: string;
  /** The set whose bundle this is; absent for images that arrived by other means. */
  setId?: string;
  ok: boolean;
  reason?: string;
  bytes?: number;
  durationMs?: number;
  /** When the device finished, from the report (idempotency key of the transfer row). */
  at: string;
}

export class StateStore {
  readonly deviceImages: DeviceImages;
  readonly sets: DeploymentSets;
  readonly bundles: Bundles;
  readonly transfers: Transfers;
  private readonly clients: TableClient[];

  constructor(tableClient: (name: string) => TableClient) {
    const byDevice = tableClient(TABLES.deviceImages);
    const byImage = tableClient(TABLES.imageDevices);
    const sets = tableClient(TABLES.deploymentSets);
    const bundles = tableClient(TABLES.bundles);
    const transfers = tableClient(TABLES.transfers);
    this.clients = [byDevice, byImage, sets, bundles, transfers];
    this.deviceImages = new DeviceImages(byDevice, byImage);
    this.sets = new DeploymentSets(sets);
    this.bundles = new Bundles(bundles);
    this.transfers = new Transfers(transfers);
  }

  /**
   * From an account connection string. Plain-http endpoints (Azurite) are allowed only when the
   * connection string names one, since the SDK refuses them otherwise.
   */
  static fromConnectionString(connectionString: string, options: TableServiceClientOptions = {}): StateStore {
    const insecure = /TableEndpoint=http:|UseDevelopmentStorage=true|DefaultEndpointsProtocol=http;/i.test(
      connectionString,
    );
    const clientOptions = { allowInsecureConnection: insecure, ...options };
    return new StateStore((name) => TableClient.fromConnectionString(connectionString, name, clientOptions));
  }

  /** Creates the tables that do not exist yet. */
  async createTables(): Promise<void> {
    for (const client of this.clients) {
      try {
        await client.createTable();
      } catch (error) {
        if (statusOf(error) !== 409) throw error;
      }
    }
  }

  /**
   * Records a device's report of one image in every table it touches, idempotently (reports
   * come at least once, in any order). Returns the set item when the report belongs to a known
   * set: its `waiter` is the orchestration instance to raise the event on.
   */
  async recordImageReport(report: ImageReportRecord): Promise<{ item: ItemRow | undefined }> {
    const { device, digest, setId, at } = report;
    await this.deviceImages.apply(
      device,
      digest,
      report.ok
        ? { kind: "present", setId, at }
        : { kind: "failed", setId, reason: report.reason ?? "no reason given", at },
    );
    await this.transfers.record({
      at,
      device,
      digest,
      setId,
      outcome: report.ok ? "arrived" : "failed",
      bytes: report.bytes ?? 0,
      durationMs: report.durationMs,
      reason: report.ok ? undefined : report.reason,
    });
    if (setId === undefined) return { item: undefined };
    const { row } = await this.sets.applyToItem(setId, device, digest, {
      kind: "report",
      ok: report.ok,
      reason: report.reason,
      bytes: report.bytes,
      at,
    });
    return { item: row };
  }
}
