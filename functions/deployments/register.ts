// Registers POST /api/deployments and the deployment-requests queue trigger with the Functions host.

import type { InvocationContext } from "@azure/functions";
import * as df from "durable-functions";
import { APP_SETTINGS, DEPLOYMENT_REQUESTS_QUEUE } from "../../config/settings.js";
import { triggerDeps } from "../deps.js";
import { postDeployment } from "./http.js";
import { readManifestBlob } from "./manifests.js";
import { receiveDeploymentMessage } from "./queue.js";
import type { StartDeploymentDeps } from "./start.js";

async function startDeps(
  client: df.DurableClient,
): Promise<StartDeploymentDeps & { durable: df.DurableClient }> {
  const { settings, blobs, iotHub } = await triggerDeps();
  return {
    durable: client,
    readManifest: (name) => readManifestBlob(blobs.manifests, name),
    queryDevices: (condition, limit) => iotHub.queryDevices(condition, limit),
    settings: {
      defaultDeadlineMs: settings.defaultDeadline.ms,
      deviceBatchSize: settings.deviceBatchSize,
      localRegistryAddress: settings.localRegistryAddress,
    },
    now: () => new Date(),
  };
}

df.app.client.http("startDeployment", {
  route: "deployments",
  methods: ["POST"],
  authLevel: "function",
  handler: async (request, client, context) => postDeployment(request, context, await startDeps(client)),
});

df.app.client.serviceBusQueue("deploymentRequests", {
  queueName: DEPLOYMENT_REQUESTS_QUEUE,
  connection: APP_SETTINGS.serviceBusConnection.name,
  handler: async (message: unknown, client: df.DurableClient, context: InvocationContext) => {
    await receiveDeploymentMessage(message, context, await startDeps(client));
  },
});
