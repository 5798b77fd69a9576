// Runs the pushManifest activity with the real IoT Hub adapter in its own process, so the parent
// can set NODE_EXTRA_CA_CERTS (read only at start) for the stand-in's CA. Input: JSON in argv[2].

import type { PushManifestInput } from "../../activities/names.js";
import { pushManifest } from "../../activities/pushManifest.js";
import { createIotHubAdapter } from "../../adapters/iothub.js";

const { connectionString, input } = JSON.parse(process.argv[2]!) as {
  connectionString: string;
  input: PushManifestInput;
};
try {
  console.log(
    JSON.stringify({ ok: await pushManifest(input, { iotHub: createIotHubAdapter(connectionString) }) }),
  );
} catch (error) {
  console.log(JSON.stringify({ error: (error as Error).message }));
}
// The SDK's keep-alive agent would hold the process open.
process.exit(0);
