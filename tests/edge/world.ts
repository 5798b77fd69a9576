/**
 * What every edge module test starts from: a real registry holding `apps/telemetry:1.0`, the
 * IoT Hub stand-in (mosquitto with TLS), the cloud's signing key and a scratch folder.
 */
import { createHash } from "node:crypto";
import { appendFile, mkdir, mkdtemp, readdir, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { openRegistryImage } from "../../delta/image/registry.js";
import type { ImageToWrite } from "../../delta/image/types.js";
import { LocalRegistry } from "../../edge-module/local-registry.js";
import { type HubStandIn, type ReceivedEvent, startHubStandIn } from "../support/mqtt.js";
import { startRegistry, type TestRegistry } from "../support/registry.js";
import {
  type EdgeImages,
  makeBundle,
  makeImages,
  newSigner,
  pushToRegistry,
  type Signer,
} from "./fixtures.js";

export const DEVICE_ID = "ship-042";
export const MODULE_ID = "imagereconstruction";

export interface EdgeWorld {
  readonly dir: string;
  readonly registry: TestRegistry;
  readonly local: LocalRegistry;
  readonly hub: HubStandIn;
  readonly images: EdgeImages;
  readonly signer: Signer;
  readonly baseDigest: string;
  /** A bundle that turns what the device holds into `images.update(tag)`. */
  updateBundle(tag: string): Promise<Buffer>;
  /** Environment for `edge-module/main.ts`: this hub, this registry, fast polling. */
  moduleEnv(inbox: string, extra?: Record<string, string>): Record<string, string>;
  newInbox(name: string): Promise<string>;
  close(): Promise<void>;
}

export async function startWorld(): Promise<EdgeWorld> {
  const dir = await mkdtemp(join(tmpdir(), "deltaship-edge-"));
  const registry = await startRegistry();
  let hub: HubStandIn | undefined;
  try {
    hub = await startHubStandIn();
    const images = await makeImages();
    const baseDigest = await pushToRegistry(registry.host, images.base);
    const signer = newSigner();
    const local = LocalRegistry.fromAddress(registry.host);
    const hubReady = hub;
    return {
      dir,
      registry,
      local,
      hub: hubReady,
      images,
      signer,
      baseDigest,
      updateBundle: (tag) => makeBundle(dir, `update-${tag}`, images.update(tag), [images.base], signer),
      moduleEnv(inbox, extra = {}) {
        return {
          EdgeHubConnectionString: hubReady.connectionString(DEVICE_ID, MODULE_ID),
          EdgeModuleCACertificateFile: hubReady.caFile,
          DELTASHIP_INBOX: inbox,
          DELTASHIP_REGISTRY: registry.host,
          DELTASHIP_TRUSTED_KEYS: JSON.stringify({ cloud: signer.publicPem }),
          DELTASHIP_POLL_MS: "100",
          DELTASHIP_QUIET_MS: "300",
          // Missing source layers fail after a second here, not after a day of waiting for another bundle.
          DELTASHIP_SOURCE_WAIT_MS: "1000",
          DELTASHIP_REPORT_RETRY_MS: "200",
          DELTASHIP_REPORT_RETRY_MAX_MS: "1000",
          ...extra,
        };
      },
      async newInbox(name) {
        const inbox = join(dir, name);
        await mkdir(inbox, { recursive: true });
        return inbox;
      },
      async close() {
        await hubReady.close();
        await registry.stop();
        await rm(dir, { recursive: true, force: true });
      },
    };
  } catch (error) {
    await hub?.close();
    await registry.stop();
    throw error;
  }
}

/** The report events for one bundle id, in arrival order. */
export function reportsFor(events: readonly ReceivedEvent[], bundleId: string): ReceivedEvent[] {
  return events.filter((e) => (e.body as { bundleId?: string }).bundleId === bundleId);
}

export function imageBytes(image: ImageToWrite): number {
  return image.config.length + image.layers.reduce((sum, layer) => sum + layer.size, 0);
}

/** diff_ids and config digest of what the registry holds under `repository:tag`. */
export async function registryImage(host: string, repository: string, tag: string) {
  const image = await openRegistryImage(`${host}/${repository}:${tag}`);
  try {
    return {
      digest: image.info.manifestDigest,
      configDigest: image.info.configDigest,
      diffIds: image.info.layers.map((l) => l.diffId),
    };
  } finally {
    await image.close();
  }
}

export function configDigest(image: ImageToWrite): string {
  return `sha256:${createHash("sha256").update(image.config).digest("hex")}`;
}

export async function listing(dir: string): Promise<string[]> {
  return (await readdir(dir).catch(() => [] as string[])).sort();
}

/** Writes `bytes` in `pieces` appends with a pause between, like a slow link. */
export async function writeSlowly(
  path: string,
  bytes: Uint8Array,
  pieces: number,
  pauseMs: number,
): Promise<void> {
  await writeFile(path, "");
  const step = Math.ceil(bytes.length / pieces);
  for (let at = 0; at < bytes.length; at += step) {
    await appendFile(path, bytes.subarray(at, Math.min(at + step, bytes.length)));
    await new Promise((resolve) => setTimeout(resolve, pauseMs));
  }
}
