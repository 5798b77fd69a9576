/**
 * A local stand-in for IoT Hub's MQTT endpoint: Debian's mosquitto with TLS on 127.0.0.1:8883
 * (the port `azure-iot-device-mqtt` always dials), a throwaway CA and server certificate made
 * with openssl, and a hub-side client that records what modules publish on
 * `devices/{d}/modules/{m}/messages/events/…`, answers twin requests and invokes direct methods.
 *
 * What is real: the device SDK, its MQTT transport, TLS, the topic and property encoding.
 * What is a stand-in: the broker does not authenticate the SAS token, and the twin and direct
 * method answers come from this file instead of IoT Hub.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { chmodSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { connect as netConnect } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import * as mqtt from "mqtt";
import { makeServerCertificates } from "./certificates.js";
import { stopProcess } from "./process.js";

/** The SDK's MQTT port is fixed (mqtts://host:8883), so the broker must take this one. */
export const HUB_MQTT_PORT = 8883;
/** How long to wait for another test run's broker to release the fixed port. */
const PORT_FREE_WAIT_MS = 180_000;
/** Bound on every wait in this file so a broken broker fails a test instead of hanging it. */
const WAIT_LIMIT_MS = 20_000;

export interface ReceivedEvent {
  deviceId: string;
  moduleId: string;
  /** The output name from `$.on`, e.g. `reports`. */
  output: string;
  /** Application and system properties decoded from the topic. */
  properties: Record<string, string>;
  body: unknown;
}

export interface HubStandIn {
  /** PEM of the CA that signed the broker's certificate (give it to the SDK). */
  readonly caFile: string;
  /** A module connection string pointing at 127.0.0.1, GatewayHostName unset. */
  connectionString(deviceId: string, moduleId: string): string;
  /** Every device-to-cloud event received so far, in arrival order. */
  readonly events: ReceivedEvent[];
  /** Resolves once `predicate` holds for the events received (bounded wait). */
  waitForEvents(predicate: (events: ReceivedEvent[]) => boolean, what: string): Promise<ReceivedEvent[]>;
  /** Desired properties served on a twin GET and sent as a patch when changed. */
  setDesired(desired: Record<string, unknown>): Promise<void>;
  /** Calls a direct method on the module and returns its response payload. */
  invokeMethod(name: string, payload: unknown): Promise<{ status: number; payload: unknown }>;
  /** Stops the broker (hub offline); `startBroker` brings it back on the same port and certificate. */
  stopBroker(): Promise<void>;
  startBroker(): Promise<void>;
  close(): Promise<void>;
}

async function portAnswers(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = netConnect({ host: "127.0.0.1", port });
    socket.once("connect", () => {
      socket.destroy();
      resolve(true);
    });
    socket.once("error", () => resolve(false));
  });
}

async function sleep(ms: number): Promise<void> {
  await new Promise((resolve) => setTimeout(resolve, ms));
}

/** Parses `a=1&b=2` (the property bag the SDK puts in the topic) into an object. */
function parsePropertyBag(bag: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (const pair of bag.split("&")) {
    if (pair === "") continue;
    const eq = pair.indexOf("=");
    const key = decodeURIComponent(eq < 0 ? pair : pair.slice(0, eq));
    out[key] = eq < 0 ? "" : decodeURIComponent(pair.slice(eq + 1));
  }
  return out;
}

const EVENT_TOPIC = /^devices\/([^/]+)\/modules\/([^/]+)\/messages\/events\/(.*?)\/?$/;

export async function startHubStandIn(): Promise<HubStandIn> {
  const dir = mkdtempSync(join(tmpdir(), "deltaship-mqtt-"));
  const tls = makeServerCertificates(dir);
  // mosquitto drops root privileges to its own user, which must still read these.
  chmodSync(dir, 0o755);
  for (const path of [tls.caPath, tls.certPath, tls.keyPath]) chmodSync(path, 0o644);
  writeFileSync(
    join(dir, "mosquitto.conf"),
    [
      `listener ${HUB_MQTT_PORT} 127.0.0.1`,
      `cafile ${tls.caPath}`,
      `certfile ${tls.certPath}`,
      `keyfile ${tls.keyPath}`,
      "allow_anonymous true",
      // Sessions survive a broker restart, so the hub side misses nothing sent while it reconnects.
      "persistence true",
      `persistence_location ${join(dir, "data")}/`,
      "log_dest stderr",
      "",
    ].join("\n"),
  );
  chmodSync(join(dir, "mosquitto.conf"), 0o644);
  mkdirSync(join(dir, "data"));
  chmodSync(join(dir, "data"), 0o777);
  const ca = readFileSync(tls.caPath);

  let broker: ChildProcess | undefined;
  let brokerLog = "";
  const startBroker = async () => {
    // The port is fixed, so another run on this machine may hold it for a while: wait, bounded.
    const free = Date.now() + PORT_FREE_WAIT_MS;
    while (await portAnswers(HUB_MQTT_PORT)) {
      if (Date.now() > free) {
        throw new Error(
          `port ${HUB_MQTT_PORT} stayed taken for ${PORT_FREE_WAIT_MS} ms; stop the other MQTT broker before running these tests`,
        );
      }
      await sleep(500);
    }
    broker = spawn("mosquitto", ["-c", join(dir, "mosquitto.conf")], { stdio: ["ignore", "ignore", "pipe"] });
    broker.stderr!.on("data", (chunk: Buffer) => {
      brokerLog = (brokerLog + chunk.toString()).slice(-4000);
    });
    const deadline = Date.now() + WAIT_LIMIT_MS;
    while (!(await portAnswers(HUB_MQTT_PORT))) {
      if (broker.exitCode !== null || Date.now() > deadline) {
        throw new Error(`mosquitto did not start listening on ${HUB_MQTT_PORT}: ${brokerLog}`);
      }
      await sleep(50);
    }
  };
  const stopBroker = async () => {
    const running = broker;
    broker = undefined;
    if (running !== undefined) await stopProcess(running);
  };
  await startBroker();

  const events: ReceivedEvent[] = [];
  let desired: Record<string, unknown> = { $version: 1 };
  const waiters = new Set<() => void>();
  const methodAnswers = new Map<string, (answer: { status: number; payload: unknown }) => void>();
  let nextRequestId = 1;

  const hub = mqtt.connect(`mqtts://127.0.0.1:${HUB_MQTT_PORT}`, {
    ca,
    clientId: "deltaship-hub-stand-in",
    clean: false,
    reconnectPeriod: 200,
    connectTimeout: 5_000,
  });
  hub.on("message", (topic: string, payload: Buffer) => {
    const event = EVENT_TOPIC.exec(topic);
    if (event) {
      const properties = parsePropertyBag(event[3]!);
      let body: unknown = payload.toString("utf8");
      try {
        body = JSON.parse(body as string);
      } catch {
        // Kept as text so a test can say what arrived instead of failing on a parse error.
      }
      events.push({
        deviceId: event[1]!,
        moduleId: event[2]!,
        output: properties["$.on"] ?? "",
        properties,
        body,
      });
    } else if (topic.startsWith("$iothub/twin/GET/")) {
      const rid = parsePropertyBag(topic.split("?")[1] ?? "").$rid;
      hub.publish(
        `$iothub/twin/res/200/?$rid=${rid}`,
        JSON.stringify({ desired, reported: { $version: 1 } }),
      );
    } else if (topic.startsWith("$iothub/twin/PATCH/properties/reported/")) {
      const rid = parsePropertyBag(topic.split("?")[1] ?? "").$rid;
      hub.publish(`$iothub/twin/res/204/?$rid=${rid}&$version=2`, "");
    } else if (topic.startsWith("$iothub/methods/res/")) {
      const [, status = "0"] = /^\$iothub\/methods\/res\/(\d+)\//.exec(topic) ?? [];
      const rid = parsePropertyBag(topic.split("?")[1] ?? "").$rid ?? "";
      let answer: unknown = payload.toString("utf8");
      try {
        answer = JSON.parse(answer as string);
      } catch {
        // A non-JSON method answer is returned as text.
      }
      methodAnswers.get(rid)?.({ status: Number(status), payload: answer });
      methodAnswers.delete(rid);
    }
    for (const wake of waiters) wake();
  });
  const subscribed = new Promise<void>((resolve, reject) => {
    const timer = setTimeout(
      () => reject(new Error("hub stand-in could not connect to mosquitto")),
      WAIT_LIMIT_MS,
    );
    hub.on("connect", () => {
      hub.subscribe(
        [
          "devices/+/modules/+/messages/events/#",
          "$iothub/twin/GET/#",
          "$iothub/twin/PATCH/#",
          "$iothub/methods/res/#",
        ],
        { qos: 1 },
        (err) => {
          clearTimeout(timer);
          if (err) reject(err);
          else resolve();
        },
      );
    });
  });
  await subscribed;

  const waitFor = async <T>(check: () => T | undefined, what: string): Promise<T> => {
    const deadline = Date.now() + WAIT_LIMIT_MS;
    for (;;) {
      const found = check();
      if (found !== undefined) return found;
      const left = deadline - Date.now();
      if (left <= 0) throw new Error(`timed out after ${WAIT_LIMIT_MS} ms waiting for ${what}`);
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, Math.min(left, 250));
        waiters.add(() => {
          clearTimeout(timer);
          resolve();
        });
      });
      waiters.clear();
    }
  };

  return {
    caFile: tls.caPath,
    connectionString(deviceId, moduleId) {
      // Any base64 key does: mosquitto accepts the SAS token without checking it.
      const key = Buffer.from(`stand-in key for ${deviceId}/${moduleId}`).toString("base64");
      return `HostName=127.0.0.1;DeviceId=${deviceId};ModuleId=${moduleId};SharedAccessKey=${key}`;
    },
    events,
    waitForEvents(predicate, what) {
      return waitFor(() => (predicate(events) ? events : undefined), what);
    },
    async setDesired(next) {
      desired = { ...next, $version: Number(desired.$version) + 1 };
      await new Promise<void>((resolve, reject) =>
        hub.publish(
          `$iothub/twin/PATCH/properties/desired/?$version=${desired.$version}`,
          JSON.stringify(desired),
          { qos: 0 },
          (err) => (err ? reject(err) : resolve()),
        ),
      );
    },
    async invokeMethod(name, payload) {
      const rid = String(nextRequestId++);
      let answer: { status: number; payload: unknown } | undefined;
      methodAnswers.set(rid, (a) => {
        answer = a;
      });
      hub.publish(`$iothub/methods/POST/${name}/?$rid=${rid}`, JSON.stringify(payload), { qos: 0 });
      return waitFor(() => answer, `the answer to direct method ${name}`);
    },
    stopBroker,
    async startBroker() {
      await startBroker();
      await waitFor(() => (hub.connected ? true : undefined), "the hub stand-in to reconnect");
    },
    async close() {
      await new Promise<void>((resolve) => hub.end(true, {}, () => resolve()));
      await stopBroker();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
