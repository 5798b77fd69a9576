/**
 * The parts the real activities run against, started for a test file: Azurite (Tables and
 * Blobs), Debian's docker-registry as ACR holding two versions of apps/telemetry, the HTTPS
 * stand-in for Communication Services, and ActivityDeps wired to them with a fresh signing key.
 *
 *   let world: ActivityWorld;
 *   before(async () => { world = await startActivityWorld({ accessKey, images, iotHub }); });
 *   after(() => world?.stop());
 *
 * Tests that bring their own images and adapters use the parts: realActivityDeps, pushLabelled,
 * standinEmailSender.
 */
import { generateKeyPairSync } from "node:crypto";
import type { ActivityDeps } from "../../activities/deps.js";
import { acrRegistry } from "../../activities/imageRegistry.js";
import { createEmailSender, type EmailSender } from "../../adapters/email.js";
import { loadSigningKey } from "../../delta/bundle/sign.js";
import { pushImage } from "../../delta/image/registry.js";
import { BlobStore } from "../../state/blobs.js";
import { StateStore } from "../../state/store.js";
import { buildTar, imageOf, patched, realFiles } from "../bundle/fixtures.js";
import { type Azurite, startAzurite } from "./azurite.js";
import {
  emailResponder,
  type HttpsStandin,
  makeTestCertificates,
  startHttpsStandin,
  type TestCertificates,
} from "./https-standin.js";
import { startRegistry, type TestRegistry } from "./registry.js";

export const EMAIL_SENDER_ADDRESS = "DoNotReply@deltaship.example";

/** The real email SDK pointed at a stand-in, trusting the stand-in's CA, with no retries. */
export function standinEmailSender(
  standin: HttpsStandin,
  tls: TestCertificates,
  accessKey: string,
): EmailSender {
  return createEmailSender(
    {
      communicationEndpoint: standin.origin,
      communicationAccessKey: accessKey,
      emailSenderAddress: EMAIL_SENDER_ADDRESS,
    },
    // The stand-in's CA is passed the way the SDK's pipeline honours it; production uses the system store.
    { clientOptions: { tlsOptions: { ca: tls.caPem }, retryOptions: { maxRetries: 0 } }, pollIntervalMs: 10 },
  );
}

export interface TelemetryImages {
  /** How many real /usr/bin files the two versions are made of, and their byte budget. */
  limit: number;
  maxBytes: number;
  /** The first this many files form the shared base layer; the rest, patched in 2.0, the app layer. */
  baseFiles: number;
}

export interface ActivityWorldOptions {
  /** Communication Services access key the email stand-in checks signatures with. */
  accessKey: string;
  images: TelemetryImages;
  iotHub: ActivityDeps["iotHub"];
}

export interface ActivityWorld {
  azurite: Azurite;
  registry: TestRegistry;
  tls: TestCertificates;
  emailService: HttpsStandin;
  deps: ActivityDeps;
  /** Manifest digests of `${registry.host}/apps/telemetry:1.0` and `:2.0`. */
  v1: string;
  v2: string;
  stop(): Promise<void>;
}

export async function startActivityWorld(options: ActivityWorldOptions): Promise<ActivityWorld> {
  const started: { stop(): Promise<void> }[] = [];
  let tls: TestCertificates | undefined;
  const stop = async () => {
    await Promise.all(started.map((service) => service.stop()));
    tls?.dispose();
  };
  try {
    // One after the other: the registry probes for a free port and binds it later, and Azurite
    // starting meanwhile can take that very port.
    const azurite = await startAzurite();
    started.push(azurite);
    const registry = await startRegistry();
    started.push(registry);
    tls = makeTestCertificates();
    const emailService = await startHttpsStandin(tls, emailResponder({ accessKey: options.accessKey }));
    started.push({ stop: () => emailService.close() });

    const { v1, v2 } = await pushTelemetryImages(registry, options.images);
    const deps = await realActivityDeps(azurite, registry, {
      iotHub: options.iotHub,
      email: standinEmailSender(emailService, tls, options.accessKey),
    });
    return { azurite, registry, tls, emailService, deps, v1, v2, stop };
  } catch (error) {
    await stop();
    throw error;
  }
}

/**
 * ActivityDeps on Azurite's Tables and Blobs (created here) and the registry as ACR, with a fresh
 * signing key; IoT Hub and email are whatever the test puts at the adapter boundary.
 */
export async function realActivityDeps(
  azurite: Azurite,
  registry: TestRegistry,
  adapters: Pick<ActivityDeps, "iotHub" | "email">,
): Promise<ActivityDeps> {
  const state = StateStore.fromConnectionString(azurite.connectionString);
  const blobs = BlobStore.fromConnectionString(azurite.connectionString);
  await state.createTables();
  await blobs.createContainers();
  const pem = generateKeyPairSync("ed25519").privateKey.export({ type: "pkcs8", format: "pem" }).toString();
  return {
    state,
    blobs,
    registry: acrRegistry({ acrUrl: registry.url, acrUsername: "", acrPassword: "" }),
    ...adapters,
    signingKey: loadSigningKey(pem),
  };
}

/** Pushes `${registry.host}/${repository}:${tag}` with its config carrying the labels, as a build pipeline's `LABEL` lines would. */
export async function pushLabelled(
  registry: TestRegistry,
  repository: string,
  tag: string,
  layers: Uint8Array[],
  labels: Record<string, string>,
): Promise<void> {
  const image = imageOf(repository, tag, layers);
  const config = JSON.parse(new TextDecoder().decode(image.config));
  config.config.Labels = labels;
  await pushImage(`${registry.host}/${repository}:${tag}`, {
    ...image,
    config: new TextEncoder().encode(JSON.stringify(config)),
  });
}

/** Pushes apps/telemetry 1.0 and 2.0: one shared base layer, and an app layer patched in 2.0. */
async function pushTelemetryImages(registry: TestRegistry, images: TelemetryImages) {
  const files = realFiles("/usr/bin", "usr/bin", {
    limit: images.limit,
    maxFile: 300_000,
    maxBytes: images.maxBytes,
  });
  const base = await buildTar(files.slice(0, images.baseFiles));
  const app = files.slice(images.baseFiles);
  const appV1 = await buildTar(app);
  const appV2 = await buildTar(app.map((f, i) => ({ ...f, content: patched(f.content as Uint8Array, i) })));
  const push = async (tag: string, layers: Uint8Array[]) =>
    (await pushImage(`${registry.host}/apps/telemetry:${tag}`, imageOf("apps/telemetry", tag, layers)))
      .manifestDigest;
  return { v1: await push("1.0", [base, appV1]), v2: await push("2.0", [base, appV2]) };
}
