// Runs the IoT Hub adapter in its own process for tests/adapters/iothub.test.ts: the parent sets
// NODE_EXTRA_CA_CERTS (read only at process start) so the real azure-iothub client trusts the
// stand-in's throwaway CA. Input: a JSON list of calls in argv[2]; output: one JSON result per line.
import { createIotHubAdapter } from "../../adapters/iothub.js";

type Call =
  | { push: { deviceId: string; modulesContent: Record<string, unknown> } }
  | { query: { condition: string; limit: number } };

const { connectionString, calls } = JSON.parse(process.argv[2]) as {
  connectionString: string;
  calls: Call[];
};
const hub = createIotHubAdapter(connectionString);
for (const call of calls) {
  try {
    const result =
      "push" in call
        ? await hub.pushManifest(call.push.deviceId, call.push.modulesContent)
        : await hub.queryDevices(call.query.condition, call.query.limit);
    console.log(JSON.stringify({ ok: result ?? null }));
  } catch (error) {
    console.log(
      JSON.stringify({
        error: (error as Error).message,
        status: (error as { statusCode?: number }).statusCode,
      }),
    );
  }
}
// The Registry's keep-alive agent would hold the process open until the server drops the socket.
process.exit(0);
