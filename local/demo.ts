/**
 * `deltaship demo` (npm start): a whole deployment set on one machine, with no Azure account.
 *
 * Real parts: Azurite (Tables, Blobs), the app's own HTTP handler, orchestrators, activities and
 * report function run by the local Functions host (orchestrators replayed through the real
 * durable-functions library), a CNCF registry as the container registry and one per device, the
 * Image Reconstruction module as its own process per device talking MQTT to an IoT Hub stand-in
 * (mosquitto), and a simulated satellite link per device. Stand-ins: the IoT Hub manifest push
 * and email are recorded to files.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { mkdir, mkdtemp, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { BlobServiceClient } from "@azure/storage-blob";
import { generateSigningKey, keyIdOf, privateKeyPem, publicKeyPem } from "../delta/bundle/sign.js";
import { openRegistryImage, pushImage } from "../delta/image/registry.js";
import { indexImage } from "../delta/index/index.js";
import { indexBlobName } from "../state/blobs.js";
import { type DeviceStore, layoutStore, registryStore, type StoreKind } from "./device-store.js";
import { TableInstanceStore } from "./durable/store.js";
import { LocalFunctionApp } from "./functions-app.js";
import { LocalFunctionHost } from "./host.js";
import { openImageArchives } from "./image-archives.js";
import { type LinkProgress, SimulatedLink, type TransferRecord } from "./link.js";
import { EmailRecorder, ManifestRecorder } from "./recorders.js";
import { buildSampleImages, type SampleImage, type SampleSet } from "./sample-images.js";
import type { Azurite } from "./services/azurite.js";
import { LAYOUT_REGISTRY_HOST, LayoutRegistry } from "./services/layout-registry.js";
import type { HubStandIn } from "./services/mqtt.js";
import { stopProcess } from "./services/process.js";

export interface DemoOptions {
  devices: number;
  /** Link capacity in bits per second. */
  bandwidth: number;
  /** Link drops per simulated second of sending. */
  dropRate: number;
  latencyMs: number;
  /** Simulated seconds per real second. */
  timeFactor: number;
  /** ISO 8601 duration the set waits for reports. */
  deadline: string;
  port: number;
  /** Device whose link corrupts the bundles it carries (to show a failed set). */
  corruptDevice?: string;
  workDir?: string;
  /** Keep the whole system running after the sample deployment. */
  serve: boolean;
  /**
   * Where the container registry and each device keep images: real registries (Debian's
   * docker-registry) or OCI layout folders; default registries when the package is installed.
   */
  store?: StoreKind;
  /** Images to deploy (docker-archive files or OCI layout folders); the built-in sample when empty. */
  images: string[];
  /** Per device id, the images (paths) it holds at start; only with `images`. */
  holds: Record<string, string[]>;
  /** Images (paths) every device not named in `holds` holds at start; only with `images`. */
  from: string[];
  log?: (line: string) => void;
  onProgress?: (progress: DemoProgress) => void;
  /** With `serve`: the first set is over and the system keeps running at `origin` until SIGINT/SIGTERM. */
  onServing?: (result: DemoResult, origin: string) => void;
}

export const DEMO_DEFAULTS: DemoOptions = {
  devices: 3,
  bandwidth: 256_000,
  dropRate: 0.05,
  latencyMs: 600,
  timeFactor: 40,
  deadline: "PT10M",
  port: 7071,
  serve: false,
  images: [],
  holds: {},
  from: [],
};

const FLEET = ["ship-1", "ship-2", "truck-3"];

/** The ids of a fleet of `count` devices: the three the docs describe, then device-4, device-5, … */
export function deviceIds(count: number): string[] {
  return Array.from({ length: count }, (_, i) => FLEET[i] ?? `device-${i + 1}`);
}

export interface DemoProgress {
  links: Record<string, LinkProgress>;
  status?: { runtimeStatus: string; customStatus?: unknown };
}

export interface DemoImageResult {
  image: string;
  digest: string;
  bytesSent: number;
  pullBytes: number;
  linkMs: number;
  outcome: string;
  reason?: string;
  verified: boolean;
}

export interface DemoResult {
  outcome: "succeeded" | "failed";
  setId: string;
  /** Where images were kept: registries or OCI layout folders. */
  store: StoreKind;
  devices: { id: string; outcome: string; images: DemoImageResult[] }[];
  manifestPushes: { device: string; at: string }[];
  emails: { to: string; subject: string; at: string }[];
  transfers: TransferRecord[];
  /** Bundles in the order they arrived on each device, named by the image they carry. */
  arrivals: {
    device: string;
    image: string;
    order: number;
    at: string;
    priority: string;
    preempted: number;
  }[];
  workDir: string;
  statusQueryGetUri: string;
}

interface Device {
  id: string;
  store: DeviceStore;
  inbox: string;
  holds: SampleImage[];
  module?: ChildProcess;
  link?: SimulatedLink;
}

const root = fileURLToPath(new URL("..", import.meta.url));
const REPORTS_FUNCTION = "deviceReports";
const EDGE_MODULE_ID = "imageReconstruction";
const REGISTRY_BIN = "/usr/bin/docker-registry";
/** Every wait in the demo is bounded; past this the demo reports what it saw and stops. */
const DEMO_TIMEOUT_MS = 15 * 60 * 1000;
/** Status queries failing one after another past this mean the host is gone, not busy. */
const MAX_STATUS_FAILURES = 30;

function need(binary: string, paths: string[]): void {
  if (!paths.some((p) => existsSync(p))) {
    throw new Error(
      `the demo needs ${binary}, which is not installed; run 'bash scripts/setup-debian.sh' (Debian 12) first`,
    );
  }
}

/** What each device starts with: a different set per device, cycling for larger fleets. */
function startingSets(samples: SampleSet): SampleImage[][] {
  return [[samples.telemetryV1], [samples.base], []];
}

/** What the run deploys and what each device holds at start. */
interface DemoImages {
  targets: SampleImage[];
  /** Every image the container registry must hold: targets and what devices started from. */
  all: SampleImage[];
  holds(deviceId: string, index: number): SampleImage[];
  close(): Promise<void>;
}

function distinct(images: SampleImage[]): SampleImage[] {
  return [...new Map(images.map((i) => [i.name, i])).values()];
}

async function sampleImages(): Promise<DemoImages> {
  const samples = await buildSampleImages();
  const sets = startingSets(samples);
  return {
    targets: [samples.telemetryV2, samples.dashboard],
    all: [samples.base, samples.runtime, samples.telemetryV1, samples.telemetryV2, samples.dashboard],
    holds: (_, index) => sets[index % sets.length]!,
    close: async () => {},
  };
}

async function archiveImages(options: DemoOptions): Promise<DemoImages> {
  const given = [
    ...options.images.map((path) => ({ path, option: "--image" })),
    ...options.from.map((path) => ({ path, option: "--from" })),
    ...Object.entries(options.holds).flatMap(([device, paths]) =>
      paths.map((path) => ({ path, option: `--holds ${device}=` })),
    ),
  ];
  const opened = await openImageArchives(given);
  const get = (path: string) => opened.byPath.get(resolve(path))!;
  const targets = distinct(options.images.map(get));
  const from = distinct(options.from.map(get));
  const holds = (deviceId: string) => {
    const named = options.holds[deviceId];
    return named === undefined ? from : distinct(named.map(get));
  };
  return {
    targets,
    all: distinct([...opened.byPath.values()]),
    holds,
    close: () => opened.close(),
  };
}

export async function runDemo(options: DemoOptions): Promise<DemoResult> {
  const store: StoreKind = options.store ?? (existsSync(REGISTRY_BIN) ? "registry" : "oci");
  if (store === "registry") need("docker-registry", [REGISTRY_BIN]);
  need("mosquitto", ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]);
  need("openssl", ["/usr/bin/openssl"]);
  const log = options.log ?? (() => {});
  // Archives first: a wrong path is reported before anything starts or is written.
  const images = options.images.length > 0 ? await archiveImages(options) : await sampleImages();
  const cleanup: Array<() => Promise<unknown>> = [() => images.close()];
  let stopping: Promise<void> | undefined;
  const stopAll = () =>
    (stopping ??= (async () => {
      for (const step of cleanup.reverse()) await step().catch(() => undefined);
    })());
  // Ctrl-C or a kill: stop Azurite, the registries, the broker and the modules, which would outlive us.
  // While serving, the signal is the normal end of the run instead.
  let endServing: (() => void) | undefined;
  const onSignal = () => {
    if (endServing) endServing();
    else void stopAll().finally(() => process.exit(130));
  };
  process.on("SIGINT", onSignal);
  process.on("SIGTERM", onSignal);

  try {
    const workDir = options.workDir ?? (await mkdtemp(join(tmpdir(), "deltaship-demo-")));
    await mkdir(workDir, { recursive: true });
    const { startAzurite } = await import("./services/azurite.js");
    const { startRegistry } = await import("./services/registry.js");
    const { startHubStandIn } = await import("./services/mqtt.js");

    log(
      options.images.length > 0
        ? `deploying ${images.targets.map((t) => t.name).join(", ")}`
        : "built the sample images",
    );

    log(
      `starting Azurite, the container registry (${store === "registry" ? "docker-registry" : "an OCI layout folder"}) and the IoT Hub stand-in`,
    );
    const azurite: Azurite = await startAzurite();
    cleanup.push(() => azurite.stop());
    let acr: { host: string; url: string; layout?: LayoutRegistry };
    if (store === "registry") {
      const registry = await startRegistry();
      cleanup.push(() => registry.stop());
      acr = { host: registry.host, url: registry.url };
    } else {
      const layout = new LayoutRegistry(join(workDir, "registry"));
      acr = { host: LAYOUT_REGISTRY_HOST, url: `https://${LAYOUT_REGISTRY_HOST}`, layout };
    }
    const hub: HubStandIn = await startHubStandIn();
    cleanup.push(() => hub.close());

    const acrDigests = new Map<string, string>();
    const pullSizes = new Map<string, { diffId: string; size: number }[]>();
    const blobService = BlobServiceClient.fromConnectionString(azurite.connectionString);
    const indexes = blobService.getContainerClient("indexes");
    await indexes.createIfNotExists();
    for (const sample of images.all) {
      const digest = acr.layout
        ? await acr.layout.push(sample.name, sample.image)
        : (await pushImage(`${acr.host}/${sample.name}`, sample.image, { compression: "gzip" }))
            .manifestDigest;
      acrDigests.set(sample.name, digest);
      // What the build pipeline does after each push: `deltaship index` and upload the index.
      const reader = acr.layout
        ? await acr.layout.open(sample.name, digest)
        : await openRegistryImage(`${acr.host}/${sample.name}@${digest}`);
      pullSizes.set(
        sample.name,
        reader.info.layers.map((l) => ({ diffId: l.diffId, size: l.size })),
      );
      try {
        const body = JSON.stringify(await indexImage(reader));
        await indexes.getBlockBlobClient(indexBlobName(digest)).upload(body, Buffer.byteLength(body));
      } finally {
        await reader.close();
      }
    }

    const key = generateSigningKey();
    const keyId = keyIdOf(key.publicKey);
    const trustedKeys = JSON.stringify({ [keyId]: publicKeyPem(key) });

    const devices: Device[] = [];
    for (const [i, id] of deviceIds(options.devices).entries()) {
      let deviceStore: DeviceStore;
      if (acr.layout) {
        deviceStore = await layoutStore(join(workDir, "devices", id, "images"), acr.layout);
      } else {
        const registry = await startRegistry();
        cleanup.push(() => registry.stop());
        deviceStore = await registryStore(registry, acr.host);
      }
      const holds = images.holds(id, i);
      for (const sample of holds) {
        // The first install came the ordinary way (docker pull), so the device holds ACR's exact image.
        const digest = await deviceStore.hold(sample);
        if (digest !== acrDigests.get(sample.name)) {
          throw new Error(
            `expected ${id}'s copy of ${sample.name} to have the container registry's digest ${acrDigests.get(sample.name)}, found ${digest}; the copy differs`,
          );
        }
      }
      const inbox = join(workDir, "devices", id, "inbox");
      await mkdir(inbox, { recursive: true });
      devices.push({ id, store: deviceStore, inbox, holds });
    }

    // The modules start (and report their inventories) while the Function App loads; reports wait in the broker stand-in.
    const outbox = BlobServiceClient.fromConnectionString(azurite.connectionString).getContainerClient(
      "outbox",
    );
    await outbox.createIfNotExists();
    const progress: DemoProgress = { links: {} };
    for (const device of devices) {
      device.module = startEdgeModule(device, hub, trustedKeys, workDir, log);
      const module = device.module;
      cleanup.push(() => stopProcess(module));
      device.link = new SimulatedLink({
        device: device.id,
        outbox,
        inboxDir: device.inbox,
        bitsPerSecond: options.bandwidth,
        dropsPerSecond: options.dropRate,
        latencyMs: options.latencyMs,
        timeFactor: options.timeFactor,
        corrupt: device.id === options.corruptDevice,
      });
      device.link.onProgress((p) => {
        progress.links[p.device] = p;
        options.onProgress?.(progress);
      });
      device.link.start();
      const link = device.link;
      cleanup.push(() => link.stop());
    }

    const recorders = {
      manifests: new ManifestRecorder(join(workDir, "iothub-manifests")),
      emails: new EmailRecorder(join(workDir, "emails")),
    };
    configureApp({
      storage: azurite.connectionString,
      acrUrl: acr.url,
      signingKey: privateKeyPem(key),
      keyId,
      deadline: options.deadline,
    });
    const app = await LocalFunctionApp.load(new URL("../functions/index.ts", import.meta.url));
    const { overrideActivityDeps } = await import("../activities/register.js");
    await mkdir(join(workDir, "scratch"), { recursive: true });
    overrideActivityDeps({
      // Without a registry server the activities read the container registry's layout folder.
      ...(acr.layout ? { registry: acr.layout.imageRegistry() } : {}),
      iotHub: recorders.manifests,
      email: recorders.emails,
      scratchDir: join(workDir, "scratch"),
    });
    const host = new LocalFunctionHost({
      app,
      store: await TableInstanceStore.fromConnectionString(azurite.connectionString),
      port: options.port,
      log: (line) => log(`host: ${line}`),
    });
    const origin = await host.start();
    cleanup.push(() => host.stop());
    log(`Function App serving ${origin}/api`);

    // Reports: edge module → MQTT (IoT Hub stand-in) → the report function, as IoT Hub's built-in endpoint would.
    let forwarded = 0;
    const bridge = setInterval(() => {
      const batch = hub.events.slice(forwarded);
      if (batch.length === 0) return;
      forwarded += batch.length;
      host
        .invokeEventHub(
          REPORTS_FUNCTION,
          batch.map((e) => e.body),
          batch.map((e) => ({
            "iothub-connection-device-id": e.deviceId,
            "iothub-connection-module-id": e.moduleId,
          })),
        )
        .catch((error) => log(`report function failed: ${(error as Error).message}`));
    }, 100);
    cleanup.push(async () => clearInterval(bridge));

    // Wait until each module's inventory reached the cloud, so planning sees what devices hold.
    await until(
      () =>
        new Set(
          hub.events.filter((e) => (e.body as { type?: string }).type === "inventory").map((e) => e.deviceId),
        ).size === devices.length && forwarded >= hub.events.length,
      60_000,
      "every edge module to report its inventory",
    );
    await new Promise((r) => setTimeout(r, 500));

    const manifest = deploymentManifest(acr.host, images.targets);
    const request = {
      manifest,
      devices: devices.map((d) => d.id),
      requestedBy: { name: "Demo Operator", email: "operator@deltaship.example" },
      deadline: options.deadline,
    };
    // The same request, kept so a user of --serve can send it again (or an edited copy) with curl.
    await writeFile(join(workDir, "deployment.json"), `${JSON.stringify(request, null, 2)}\n`);
    const response = await fetch(`${origin}/api/deployments`, {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(request),
    });
    const started = (await response.json()) as { id?: string; statusQueryGetUri?: string; error?: unknown };
    if (response.status !== 202 || started.id === undefined || started.statusQueryGetUri === undefined) {
      throw new Error(`POST /api/deployments answered ${response.status}: ${JSON.stringify(started)}`);
    }
    log(`deployment set ${started.id} started; status at ${started.statusQueryGetUri}`);

    const deadline = Date.now() + DEMO_TIMEOUT_MS;
    let status: { runtimeStatus: string; customStatus?: unknown; output?: unknown } = {
      runtimeStatus: "Pending",
    };
    let failures = 0;
    while (Date.now() < deadline) {
      try {
        status = (await (await fetch(started.statusQueryGetUri)).json()) as typeof status;
        failures = 0;
      } catch (error) {
        // Building a big bundle keeps this process busy for a while; the host may drop an idle
        // kept-alive connection meanwhile, and the next request on it fails. Ask again.
        if (++failures > MAX_STATUS_FAILURES) {
          throw new Error(
            `the status of set ${started.id} could not be read ${failures} times in a row (${(error as Error).message}); see ${started.statusQueryGetUri}`,
          );
        }
        log(`status query failed (${(error as Error).message}); asking again`);
        await new Promise((r) => setTimeout(r, 1_000));
        continue;
      }
      progress.status = status;
      options.onProgress?.(progress);
      if (["Completed", "Failed", "Terminated"].includes(status.runtimeStatus)) break;
      await new Promise((r) => setTimeout(r, 250));
    }

    const result = await summarize({
      setId: started.id,
      statusQueryGetUri: started.statusQueryGetUri,
      status,
      origin,
      devices,
      store,
      targets: images.targets,
      acrDigests,
      pullSizes,
      recorders,
      workDir,
    });
    await writeFile(join(workDir, "result.json"), `${JSON.stringify(result, null, 2)}\n`);
    if (options.serve) {
      options.onServing?.(result, origin);
      await new Promise<void>((done) => {
        endServing = done;
      });
    }
    return result;
  } finally {
    process.off("SIGINT", onSignal);
    process.off("SIGTERM", onSignal);
    await stopAll();
  }
}

function configureApp(c: {
  storage: string;
  acrUrl: string;
  signingKey: string;
  keyId: string;
  deadline: string;
}) {
  const env: Record<string, string> = {
    AzureWebJobsStorage: c.storage,
    // Required by the settings module; local mode records manifest pushes and email instead of sending them.
    IOTHUB_CONNECTION_STRING:
      "HostName=local.azure-devices.net;SharedAccessKeyName=local;SharedAccessKey=bG9jYWw=",
    IOTHUB_EVENTS_CONNECTION: "local",
    IOTHUB_EVENTS_HUB_NAME: "local",
    SERVICEBUS_CONNECTION: "local",
    COMMUNICATION_SERVICES_ENDPOINT: "https://local.communication.azure.com",
    COMMUNICATION_SERVICES_ACCESS_KEY: "bG9jYWw=",
    EMAIL_SENDER_ADDRESS: "deltaship@local.example",
    ACR_URL: c.acrUrl,
    BUNDLE_SIGNING_KEY: c.signingKey,
    BUNDLE_SIGNING_KEY_ID: c.keyId,
    DEFAULT_DEADLINE: c.deadline,
  };
  Object.assign(process.env, env);
}

function deploymentManifest(acrHost: string, images: SampleImage[]): Record<string, unknown> {
  const modules: Record<string, unknown> = {};
  for (const sample of images) {
    // A module name from the repository's last part (`samples/telemetry` → `telemetry`), unique in the manifest.
    const base =
      sample.image.repository
        .split("/")
        .pop()!
        .replace(/[^A-Za-z0-9_-]/g, "-") || "module";
    let name = base;
    for (let n = 2; name in modules; n++) name = `${base}-${n}`;
    modules[name] = {
      version: "1.0",
      type: "docker",
      status: "running",
      restartPolicy: "always",
      settings: { image: `${acrHost}/${sample.name}`, createOptions: "{}" },
    };
  }
  return {
    modulesContent: {
      $edgeAgent: {
        "properties.desired": {
          schemaVersion: "1.1",
          runtime: { type: "docker", settings: { minDockerVersion: "v1.25" } },
          systemModules: {
            edgeAgent: { type: "docker", settings: { image: "mcr.microsoft.com/azureiotedge-agent:1.5" } },
            edgeHub: {
              type: "docker",
              status: "running",
              restartPolicy: "always",
              settings: { image: "mcr.microsoft.com/azureiotedge-hub:1.5" },
            },
          },
          modules,
        },
      },
      $edgeHub: { "properties.desired": { schemaVersion: "1.1", routes: {} } },
    },
  };
}

function startEdgeModule(
  device: Device,
  hub: HubStandIn,
  trustedKeys: string,
  workDir: string,
  log: (line: string) => void,
): ChildProcess {
  const child = spawn(process.execPath, ["--import", "tsx", join(root, "edge-module/main.ts")], {
    cwd: root,
    stdio: ["ignore", "pipe", "pipe"],
    env: {
      ...process.env,
      EdgeHubConnectionString: hub.connectionString(device.id, EDGE_MODULE_ID),
      EdgeModuleCACertificateFile: hub.caFile,
      DELTASHIP_INBOX: device.inbox,
      DELTASHIP_STATE: join(workDir, "devices", device.id, "state"),
      ...device.store.moduleEnv,
      DELTASHIP_TRUSTED_KEYS: trustedKeys,
      DELTASHIP_POLL_MS: "200",
      DELTASHIP_QUIET_MS: "300",
      DELTASHIP_REPORT_RETRY_MS: "200",
      // On the sped-up link a sibling bundle arrives within seconds; past this, missing layers fail the bundle.
      DELTASHIP_SOURCE_WAIT_MS: "20000",
    },
  });
  let tail = "";
  const keep = (chunk: Buffer) => {
    tail = (tail + chunk.toString()).slice(-4000);
    for (const line of chunk.toString().split("\n")) if (line.trim() !== "") log(`${device.id}: ${line}`);
  };
  child.stdout?.on("data", keep);
  child.stderr?.on("data", keep);
  child.on("exit", (code) => {
    if (code !== 0 && code !== null) log(`${device.id}: edge module exited with ${code}: ${tail}`);
  });
  return child;
}

async function until(check: () => boolean, ms: number, what: string): Promise<void> {
  const deadline = Date.now() + ms;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`gave up after ${ms} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

interface SummaryInput {
  setId: string;
  statusQueryGetUri: string;
  status: { runtimeStatus: string; output?: unknown };
  origin: string;
  devices: Device[];
  store: StoreKind;
  targets: SampleImage[];
  acrDigests: Map<string, string>;
  /** Per image, its layers as stored in the registry (gzip): what a pull downloads. */
  pullSizes: Map<string, { diffId: string; size: number }[]>;
  recorders: { manifests: ManifestRecorder; emails: EmailRecorder };
  workDir: string;
}

async function summarize(input: SummaryInput): Promise<DemoResult> {
  const url = `${input.origin}/api/deployments/${encodeURIComponent(input.setId)}`;
  // One retry: a kept-alive connection the host dropped while this process was busy fails once.
  const set = (await (await fetch(url).catch(() => fetch(url))).json()) as {
    items?: Array<{
      device: string;
      digest: string;
      image?: string;
      state: string;
      reason?: string;
      bundleBytes?: number;
      fullBytes?: number;
    }>;
  };
  const items = set.items ?? [];
  const devices = [];
  for (const device of input.devices) {
    const images: DemoImageResult[] = [];
    // What `docker pull` would have moved: the stored (gzip) blobs of layers the device lacked, once each.
    const had = new Set(device.holds.flatMap((h) => h.image.layers.map((l) => l.diffId)));
    for (const target of input.targets) {
      const digest = input.acrDigests.get(target.name)!;
      const item = items.find((i) => i.device === device.id && i.digest === digest);
      const transfer = device.link?.transfers.find((t) => t.name.includes(digest.replace(":", "-")));
      const verified = await verifyOnDevice(device, target);
      const pulled = input.pullSizes.get(target.name) ?? [];
      let pullBytes = pulled.length > 0 ? target.image.config.length : 0;
      for (const layer of pulled) {
        if (!had.has(layer.diffId)) pullBytes += layer.size;
        had.add(layer.diffId);
      }
      images.push({
        image: target.name,
        digest,
        bytesSent: transfer?.bytes ?? 0,
        pullBytes,
        linkMs: transfer?.linkMs ?? 0,
        outcome: item?.state ?? "unknown",
        ...(item?.reason ? { reason: item.reason } : {}),
        verified,
      });
    }
    const ok = images.every((i) => i.outcome === "arrived" || i.outcome === "present");
    devices.push({ id: device.id, outcome: ok ? "succeeded" : "failed", images });
  }
  const succeeded =
    input.status.runtimeStatus === "Completed" &&
    (input.status.output as { state?: string } | undefined)?.state === "succeeded";
  return {
    outcome: succeeded ? "succeeded" : "failed",
    setId: input.setId,
    store: input.store,
    devices,
    manifestPushes: input.recorders.manifests.pushes.map((p) => ({ device: p.device, at: p.at })),
    emails: input.recorders.emails.sent.map((e) => ({ to: e.to, subject: e.subject, at: e.at })),
    transfers: input.devices.flatMap((d) => d.link?.transfers ?? []),
    arrivals: input.devices.flatMap((d) =>
      (d.link?.transfers ?? []).map((t) => ({
        device: d.id,
        image:
          input.targets.find((s) => t.name.includes(input.acrDigests.get(s.name)!.replace(":", "-")))?.name ??
          t.name,
        order: t.order,
        at: t.arrivedAt,
        priority: t.priority,
        preempted: t.preempted,
      })),
    ),
    workDir: input.workDir,
    statusQueryGetUri: input.statusQueryGetUri,
  };
}

/** The image in the device's store has the target's config and layers (its diff_ids), read back from the store. */
async function verifyOnDevice(device: Device, target: SampleImage): Promise<boolean> {
  try {
    const image = await device.store.open(target.name);
    try {
      const want = target.image.layers.map((l) => l.diffId);
      const have = image.info.layers.map((l) => l.diffId);
      return (
        JSON.stringify(want) === JSON.stringify(have) &&
        Buffer.compare(Buffer.from(image.info.config), Buffer.from(target.image.config)) === 0
      );
    } finally {
      await image.close();
    }
  } catch {
    return false;
  }
}
