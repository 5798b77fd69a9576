// Registers the query API's GET routes (function key auth).

import azureFunctions, { type HttpHandler } from "@azure/functions";
import * as df from "durable-functions";
import { triggerDeps } from "../deps.js";
import {
  getDeployment,
  getDeviceImages,
  getImageDevices,
  getTransfers,
  listDeployments,
  orchestrationStatusFrom,
  type QueryDeps,
} from "./handlers.js";

async function queryDeps(client?: df.DurableClient): Promise<QueryDeps> {
  const { state, settings } = await triggerDeps();
  return {
    state,
    defaultPageSize: settings.queryPageSize,
    ...(client === undefined ? {} : { orchestrationStatus: orchestrationStatusFrom(client) }),
  };
}

function route(
  name: string,
  path: string,
  handle: (request: Parameters<HttpHandler>[0], deps: QueryDeps) => ReturnType<HttpHandler>,
) {
  azureFunctions.app.http(name, {
    route: path,
    methods: ["GET"],
    authLevel: "function",
    handler: async (request) => handle(request, await queryDeps()),
  });
}

df.app.client.http("getDeployment", {
  route: "deployments/{id}",
  methods: ["GET"],
  authLevel: "function",
  handler: async (request, client) => getDeployment(request, await queryDeps(client)),
});
route("listDeployments", "deployments", listDeployments);
route("getDeviceImages", "devices/{id}/images", getDeviceImages);
route("getImageDevices", "images/{digest}/devices", getImageDevices);
route("getTransfers", "transfers", getTransfers);
