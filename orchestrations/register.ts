/** Registers the orchestrations with the Functions host (imported by the app's entry point). */
import * as df from "durable-functions";
import { DEPLOYMENT_SET_ORCHESTRATION, DEVICE_BATCH_ORCHESTRATION } from "./contract.js";
import { deploymentSetOrchestrator } from "./deploymentSet.js";
import { deviceBatchOrchestrator } from "./deviceBatch.js";

df.app.orchestration(DEPLOYMENT_SET_ORCHESTRATION, deploymentSetOrchestrator);
df.app.orchestration(DEVICE_BATCH_ORCHESTRATION, deviceBatchOrchestrator);
