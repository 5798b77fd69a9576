// Registers the device report trigger: IoT Hub's built-in endpoint (Event Hub-compatible), many messages per call.

import * as df from "durable-functions";
import { APP_SETTINGS } from "../../config/settings.js";
import { triggerDeps } from "../deps.js";
import { handleReports, messagesOf } from "./handle.js";

df.app.client.eventHub("deviceReports", {
  connection: APP_SETTINGS.iotHubEventsConnection.name,
  eventHubName: `%${APP_SETTINGS.iotHubEventsHubName.name}%`,
  consumerGroup: `%${APP_SETTINGS.iotHubEventsConsumerGroup.name}%`,
  cardinality: "many",
  // A batch that hit a transient failure runs again; handling is idempotent, so replays are safe.
  retry: {
    strategy: "exponentialBackoff",
    maxRetryCount: 8,
    minimumInterval: { seconds: 5 },
    maximumInterval: { minutes: 5 },
  },
  handler: async (messages: unknown, client: df.DurableClient, context) => {
    const { state } = await triggerDeps();
    const batch = Array.isArray(messages) ? messages : [messages];
    await handleReports(messagesOf(batch, context), context, { state, durable: client });
  },
});
