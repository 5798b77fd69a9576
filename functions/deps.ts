// The production dependencies of the triggers, built once per process from the app settings.
// The activities' dependencies (state, blobs) are shared, so one process has one set of clients.

import { productionDeps } from "../activities/register.js";
import { createIotHubAdapter, type IotHubAdapter } from "../adapters/iothub.js";
import { loadSettings, type Settings } from "../config/settings.js";
import type { BlobStore } from "../state/blobs.js";
import type { StateStore } from "../state/store.js";

export interface TriggerDeps {
  settings: Settings;
  state: StateStore;
  blobs: BlobStore;
  iotHub: IotHubAdapter;
}

let deps: Promise<TriggerDeps> | undefined;

export function triggerDeps(): Promise<TriggerDeps> {
  deps ??= (async () => {
    const settings = loadSettings();
    const shared = await productionDeps();
    return {
      settings,
      state: shared.state,
      blobs: shared.blobs,
      iotHub: createIotHubAdapter(settings.iotHubConnectionString),
    };
  })().catch((error: unknown) => {
    // A storage hiccup while creating tables must not poison every later invocation.
    deps = undefined;
    throw error;
  });
  return deps;
}
