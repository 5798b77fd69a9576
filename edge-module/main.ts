/**
 * The Image Reconstruction module's program: settings from the environment, IoT Hub through
 * `ModuleClient.fromEnvironment`, the real engine against the local registry. Runs until
 * SIGTERM/SIGINT (what `docker stop` and the IoT Edge agent send).
 */
import { readSettings } from "./config.js";
import { createDeltaEngine } from "./engine-delta.js";
import { createHub } from "./hub.js";
import { LocalRegistry } from "./local-registry.js";
import { errorText, jsonLogger } from "./log.js";
import { startEdgeModule } from "./module.js";

const log = jsonLogger();

async function main(): Promise<void> {
  const settings = readSettings();
  for (const warning of settings.warnings) log.log("warn", "settings", { warning });
  const hub = await createHub(log);
  const module = await startEdgeModule({
    ...settings,
    engine: createDeltaEngine(LocalRegistry.fromAddress(settings.registry)),
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
