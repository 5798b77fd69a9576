/**
 * Registers every activity with the Functions host. Dependencies are built on first use from
 * the app settings (config/settings.ts), so importing this file needs no settings.
 */
import * as df from "durable-functions";
import { createEmailSender } from "../adapters/email.js";
import { createIotHubAdapter } from "../adapters/iothub.js";
import { loadSettings } from "../config/settings.js";
import { loadSigningKey } from "../delta/bundle/sign.js";
import { BlobStore } from "../state/blobs.js";
import { StateStore } from "../state/store.js";
import { buildBundle } from "./buildBundle.js";
import type { ActivityDeps } from "./deps.js";
import { acrRegistry } from "./imageRegistry.js";
import { markInTransit } from "./markInTransit.js";
import * as names from "./names.js";
import { placeBundles } from "./placeBundles.js";
import { planBundles } from "./planBundles.js";
import { pushManifest } from "./pushManifest.js";
import { readDeviceInventory } from "./readDeviceInventory.js";
import { recordSet } from "./recordSet.js";
import { resolveImages } from "./resolveImages.js";
import { sendEmail } from "./sendEmail.js";
import { updateSetState } from "./updateSetState.js";

let deps: Promise<ActivityDeps> | undefined;
let overrides: Partial<ActivityDeps> = {};

/**
 * Replaces some dependencies before any activity runs. Local mode (`deltaship demo`) uses it for
 * the two that need Azure itself: the IoT Hub manifest push and email, which it records instead.
 */
export function overrideActivityDeps(replacements: Partial<ActivityDeps>): void {
  overrides = replacements;
  deps = undefined;
}

/** The production dependencies, built once per process; tables and containers are created if missing. */
export function productionDeps(): Promise<ActivityDeps> {
  deps ??= (async () => {
    const settings = loadSettings();
    const state = StateStore.fromConnectionString(settings.storageConnection);
    const blobs = BlobStore.fromConnectionString(settings.storageConnection, {
      indexes: settings.indexesContainer,
      bundles: settings.bundlesContainer,
      outbox: settings.outboxContainer,
      manifests: settings.manifestsContainer,
    });
    await state.createTables();
    await blobs.createContainers();
    return {
      state,
      blobs,
      registry: acrRegistry(settings),
      iotHub: createIotHubAdapter(settings.iotHubConnectionString),
      email: createEmailSender(settings),
      signingKey: loadSigningKey(settings.signingKey.pem),
      ...overrides,
    };
  })();
  return deps;
}

function register<I, O>(name: string, handler: (input: I, deps: ActivityDeps) => Promise<O>): void {
  df.app.activity(name, { handler: async (input: unknown) => handler(input as I, await productionDeps()) });
}

register(names.RESOLVE_IMAGES, resolveImages);
register(names.READ_DEVICE_INVENTORY, readDeviceInventory);
register(names.PLAN_BUNDLES, planBundles);
register(names.BUILD_BUNDLE, (input: names.BuildBundleInput, d) => buildBundle(input, d));
register(names.PLACE_BUNDLES, placeBundles);
register(names.MARK_IN_TRANSIT, (input: names.MarkInTransitInput, d) => markInTransit(input, d));
register(names.RECORD_SET, recordSet);
register(names.UPDATE_SET_STATE, updateSetState);
register(names.PUSH_MANIFEST, pushManifest);
register(names.SEND_EMAIL, sendEmail);
