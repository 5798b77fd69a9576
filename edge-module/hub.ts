/**
 * The module's IoT Hub side through the real `azure-iot-device` SDK over MQTT: reports go out
 * with `sendOutputEvent("reports", …)`, the `inventory` direct method asks for a fresh
 * inventory, and the twin's desired property `trustedKeys` supplies the signing keys.
 *
 * `ModuleClient.fromEnvironment` reads `EdgeHubConnectionString` (or `IotHubConnectionString`)
 * plus `EdgeModuleCACertificateFile` when set; otherwise the `IOTEDGE_*` variables the IoT Edge
 * runtime injects (workload URI, device, module, hub, generation id, auth scheme `sasToken`).
 */
import iotDevice from "azure-iot-device";
import iotDeviceMqtt from "azure-iot-device-mqtt";
import type { TrustedKeys } from "./engine.js";
import { errorText, type Logger } from "./log.js";
import { type Report, type ReportSink, reportProperties } from "./reports.js";

const { Message, ModuleClient } = iotDevice;
const { Mqtt } = iotDeviceMqtt;

/** Name of the module output the reports leave on; routes in the deployment manifest use it. */
export const REPORTS_OUTPUT = "reports";
/** A send that has not been acknowledged after this long counts as failed and is retried from the queue. */
const SEND_TIMEOUT_MS = 30_000;

/** The SDK's own retries would hold one report for minutes; the report queue does the retrying instead. */
const noRetry = {
  shouldRetry: () => false,
  nextRetryTimeout: () => 0,
};

export interface Hub extends ReportSink {
  /** Called with the desired `trustedKeys` at connect and on every change. */
  onTrustedKeys(handler: (keys: TrustedKeys) => void): void;
  /** Called for the `inventory` direct method; its result is the method's response payload. */
  onInventory(handler: () => Promise<unknown>): void;
  close(): Promise<void>;
}

function withTimeout<T>(work: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what} did not finish within ${ms} ms`)), ms);
  });
  return Promise.race([work, timeout]).finally(() => clearTimeout(timer));
}

/** Desired properties carry keys as `{ "<keyId>": "<public key>" }`; anything else is ignored with a log line. */
export function trustedKeysFromDesired(desired: unknown, log: Logger): TrustedKeys | undefined {
  if (typeof desired !== "object" || desired === null || !("trustedKeys" in desired)) return undefined;
  const raw = (desired as { trustedKeys: unknown }).trustedKeys;
  if (typeof raw !== "object" || raw === null) {
    log.log("warn", "twin.trustedKeys.invalid", {
      expected: "object of keyId to public key",
      found: typeof raw,
    });
    return undefined;
  }
  const keys: Record<string, string> = {};
  for (const [id, value] of Object.entries(raw)) {
    if (id.startsWith("$")) continue;
    if (typeof value === "string" && value.length > 0) keys[id] = value;
    else log.log("warn", "twin.trustedKeys.invalid", { keyId: id, expected: "non-empty string" });
  }
  return keys;
}

/**
 * Connects lazily: a hub that is away at start does not stop the module; every send (re)opens
 * the connection if needed, and the report queue retries with backoff.
 */
export async function createHub(log: Logger): Promise<Hub> {
  const client = await ModuleClient.fromEnvironment(Mqtt);
  client.setRetryPolicy(noRetry);
  let open: Promise<void> | undefined;
  let keysHandler: ((keys: TrustedKeys) => void) | undefined;
  let inventoryHandler: (() => Promise<unknown>) | undefined;
  let twinWatched = false;

  client.on("disconnect", () => {
    open = undefined;
    log.log("warn", "hub.disconnected");
  });
  client.on("error", (error: Error) => {
    open = undefined;
    log.log("warn", "hub.error", { error: errorText(error) });
  });
  client.onMethod("inventory", (request, response) => {
    if (!request || !response) return;
    const answer = async () => {
      try {
        const payload = inventoryHandler ? await inventoryHandler() : { queued: false };
        await response.send(200, payload);
      } catch (error) {
        await response.send(500, { error: errorText(error) }).catch(() => undefined);
      }
    };
    log.log("info", "hub.method", { method: request.methodName });
    void answer();
  });

  const watchTwin = async () => {
    if (twinWatched || !keysHandler) return;
    const twin = await client.getTwin();
    twinWatched = true;
    const handler = keysHandler;
    twin.on("properties.desired", () => {
      const keys = trustedKeysFromDesired(twin.properties.desired, log);
      if (keys) handler(keys);
    });
  };

  const ensureOpen = async () => {
    open ??= (async () => {
      await withTimeout(client.open(), SEND_TIMEOUT_MS, "connecting to IoT Hub");
      log.log("info", "hub.connected");
    })().catch((error) => {
      open = undefined;
      throw error;
    });
    await open;
    await watchTwin().catch((error) => log.log("warn", "hub.twin", { error: errorText(error) }));
  };

  return {
    async send(report: Report) {
      await ensureOpen();
      const message = new Message(JSON.stringify(report));
      message.contentType = "application/json";
      message.contentEncoding = "utf-8";
      for (const [key, value] of Object.entries(reportProperties(report))) message.properties.add(key, value);
      await withTimeout(client.sendOutputEvent(REPORTS_OUTPUT, message), SEND_TIMEOUT_MS, "sending a report");
    },
    onTrustedKeys(handler) {
      keysHandler = handler;
      void ensureOpen().catch((error) => log.log("warn", "hub.unreachable", { error: errorText(error) }));
    },
    onInventory(handler) {
      inventoryHandler = handler;
    },
    async close() {
      await client.close().catch(() => undefined);
    },
  };
}
