/**
 * The Image Reconstruction module's program: settings from the environment, IoT Hub through
 * `ModuleClient.fromEnvironment`, the real engine against the local registry (or an OCI layout
 * folder when DELTASHIP_IMAGE_LAYOUT is set). Runs until
 * SIGTERM/SIGINT (what `docker stop` and the IoT Edge agent send).
 */
import { mkdir } from "node:fs/promises";
import { readSettings } from "./config.js";
import { createDeltaEngine } from "./engine-delta.js";
import { createHub } from "./hub.js";
import { LocalLayout } from "./local-layout.js";
import { LocalRegistry } from "./local-registry.js";
import { errorText, jsonLogger } from "./log.js";
import { startEdgeModule } from "./module.js";

const log = jsonLogger();

async function main(): Promise<void> {
  const settings = readSettings();
  for (const warning of settings.warnings) log.log("warn", "settings", { warning });
  const hub = await createHub(log);
  // The layout folder may be a fresh volume; it must exist before its free space is checked.
  if (settings.imageLayout) await mkdir(settings.imageLayout, { recursive: true });
  const store = settings.imageLayout
    ? new LocalLayout(settings.imageLayout)
    : LocalRegistry.fromAddress(settings.registry);
  const module = await startEdgeModule({
    ...settings,
    engine: createDeltaEngine(store),
    channel: hub,
    log,
  });
  const shutdown = async (signal: string) => {
    log.log("info", "module.signal", { signal });
    await module.stop();
    await hub.close();
    process.exit(0);
  };
  process.once("SIGTERM", () => void shutdown("SIGTERM"));
  process.once("SIGINT", () => void shutdown("SIGINT"));
}

main().catch((error) => {
  log.log("error", "module.fatal", { error: errorText(error) });
  process.exit(1);
});
