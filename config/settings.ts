// Every app setting Deltaship's cloud side reads, in one place: name, meaning, default.
// Code reads settings only through loadSettings(); the infrastructure template is checked against APP_SETTINGS.

import { createPrivateKey } from "node:crypto";
import { parseIsoDuration } from "./duration.js";

export interface AppSetting {
  /** The environment variable / app setting name. */
  readonly name: string;
  readonly meaning: string;
  /** Used when the setting is absent or empty; undefined means the setting is required. */
  readonly default?: string;
  /** Read by the Functions host for a trigger binding (not by our code); listed so the template sets it. */
  readonly readByHost?: boolean;
}

function setting(name: string, meaning: string, extra: Partial<AppSetting> = {}): AppSetting {
  return { name, meaning, ...extra };
}

export const APP_SETTINGS = {
  storageConnection: setting(
    "AzureWebJobsStorage",
    "Storage account connection string: Durable Functions task hub, Table Storage state, Blob Storage bundles, indexes, manifests and outboxes.",
  ),
  iotHubConnectionString: setting(
    "IOTHUB_CONNECTION_STRING",
    "IoT Hub service connection string (HostName=…;SharedAccessKeyName=…;SharedAccessKey=…) with registry read/write rights: pushes manifests and runs twin queries.",
  ),
  iotHubEventsConnection: setting(
    "IOTHUB_EVENTS_CONNECTION",
    "Event Hub-compatible connection string of IoT Hub's built-in endpoint; the device report trigger binds to it.",
    { readByHost: true },
  ),
  iotHubEventsHubName: setting(
    "IOTHUB_EVENTS_HUB_NAME",
    "Event Hub-compatible name of IoT Hub's built-in endpoint (the report trigger's eventHubName).",
    { readByHost: true },
  ),
  iotHubEventsConsumerGroup: setting(
    "IOTHUB_EVENTS_CONSUMER_GROUP",
    "Consumer group of the built-in endpoint reserved for the report trigger.",
    { readByHost: true, default: "$Default" },
  ),
  serviceBusConnection: setting(
    "SERVICEBUS_CONNECTION",
    "Service Bus connection string of the namespace holding the deployment-requests queue.",
    { readByHost: true },
  ),
  communicationEndpoint: setting(
    "COMMUNICATION_SERVICES_ENDPOINT",
    "Azure Communication Services endpoint (https://<name>.communication.azure.com) used to email requesters.",
  ),
  communicationAccessKey: setting(
    "COMMUNICATION_SERVICES_ACCESS_KEY",
    "Access key of the Communication Services resource (HMAC-signs email requests).",
  ),
  emailSenderAddress: setting(
    "EMAIL_SENDER_ADDRESS",
    "Sender address of deployment emails, from a domain verified in Communication Services (DoNotReply@<domain>).",
  ),
  acrUrl: setting(
    "ACR_URL",
    "Base URL of the Azure Container Registry holding module images (https://<name>.azurecr.io).",
  ),
  acrUsername: setting("ACR_USERNAME", "ACR user (admin user or token name); empty for anonymous pull.", {
    default: "",
  }),
  acrPassword: setting("ACR_PASSWORD", "Password of ACR_USERNAME; empty for anonymous pull.", {
    default: "",
  }),
  localRegistryAddress: setting(
    "LOCAL_REGISTRY_ADDRESS",
    "Address of the device-local registry that pushed manifests pull from (host:port).",
    { default: "localhost:5000" },
  ),
  defaultDeadline: setting(
    "DEFAULT_DEADLINE",
    "ISO 8601 duration a deployment set waits for device reports when the request names no deadline; satellite transfers are slow.",
    { default: "P14D" },
  ),
  signingKey: setting(
    "BUNDLE_SIGNING_KEY",
    "Ed25519 private key (PKCS#8 PEM) that signs bundles; in Azure a Key Vault reference (@Microsoft.KeyVault(SecretUri=…)).",
  ),
  signingKeyId: setting(
    "BUNDLE_SIGNING_KEY_ID",
    "Key id written into every bundle signature; devices pick their public key by it.",
  ),
  manifestsContainer: setting("MANIFESTS_CONTAINER", "Blob container of named deployment manifests.", {
    default: "manifests",
  }),
  bundlesContainer: setting("BUNDLES_CONTAINER", "Blob container of built bundles, content-addressed.", {
    default: "bundles",
  }),
  indexesContainer: setting("INDEXES_CONTAINER", "Blob container of image indexes.", { default: "indexes" }),
  outboxContainer: setting(
    "OUTBOX_CONTAINER",
    "Blob container of per-device outbox prefixes (<device>/…) that the file-transfer tool picks bundles up from.",
    { default: "outbox" },
  ),
  deviceBatchSize: setting(
    "DEVICE_BATCH_SIZE",
    "Devices per waiting sub-orchestration; bounds each history to a few thousand events.",
    { default: "100" },
  ),
  queryPageSize: setting("QUERY_PAGE_SIZE", "Default rows per page of the query API.", { default: "100" }),
} as const satisfies Record<string, AppSetting>;

export type SettingKey = keyof typeof APP_SETTINGS;

/** Queue the Service Bus trigger reads deployment requests from (a name, not a secret: fixed). */
export const DEPLOYMENT_REQUESTS_QUEUE = "deployment-requests";

/** Upper bound for DEVICE_BATCH_SIZE: each device adds a few events per image to one history. */
export const MAX_DEVICE_BATCH_SIZE = 1000;
/** Upper bound for QUERY_PAGE_SIZE and a request's pageSize: one Table Storage page holds at most 1,000 rows. */
export const MAX_QUERY_PAGE_SIZE = 1000;

export interface Settings {
  storageConnection: string;
  iotHubConnectionString: string;
  /** The IoT Hub host name taken from the connection string (for logs and error messages). */
  iotHubHostName: string;
  communicationEndpoint: string;
  communicationAccessKey: string;
  emailSenderAddress: string;
  acrUrl: string;
  acrUsername: string;
  acrPassword: string;
  localRegistryAddress: string;
  /** ISO 8601 text as configured, and its length. */
  defaultDeadline: { iso: string; ms: number };
  signingKey: { id: string; pem: string };
  manifestsContainer: string;
  bundlesContainer: string;
  indexesContainer: string;
  outboxContainer: string;
  deviceBatchSize: number;
  queryPageSize: number;
}

export class SettingsError extends Error {
  constructor(readonly problems: string[]) {
    super(
      `${problems.length} app setting(s) missing or malformed:\n- ${problems.join("\n- ")}\n` +
        "Set them in the Function App configuration (local.settings.json when running locally).",
    );
    this.name = "SettingsError";
  }
}

/** Parses `Key=value;Key=value` connection strings; keys compared case-insensitively. */
export function parseConnectionString(text: string): Map<string, string> {
  const parts = new Map<string, string>();
  for (const part of text.split(";")) {
    if (part.trim() === "") continue;
    const eq = part.indexOf("=");
    if (eq <= 0) continue;
    parts.set(part.slice(0, eq).trim().toLowerCase(), part.slice(eq + 1).trim());
  }
  return parts;
}

const CONTAINER_NAME = /^[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9])){2,62}$/;
const REGISTRY_ADDRESS = /^[A-Za-z0-9.-]+(?::\d{1,5})?$/;
const EMAIL_ADDRESS = /^[^\s@]+@[^\s@]+\.[^\s@]+$/;

/**
 * Reads and validates every setting our code uses. Collects all problems first and throws one
 * SettingsError naming each, so a misconfigured app is fixed in one round.
 */
export function loadSettings(env: NodeJS.ProcessEnv = process.env): Settings {
  const problems: string[] = [];

  const raw = (key: SettingKey): string => {
    const spec: AppSetting = APP_SETTINGS[key];
    const value = env[spec.name]?.trim();
    if (value !== undefined && value !== "") return value;
    if (spec.default !== undefined) return spec.default;
    problems.push(`${spec.name} is not set; expected ${spec.meaning}`);
    return "";
  };
  const bad = (key: SettingKey, expected: string, found: string): void => {
    problems.push(`${APP_SETTINGS[key].name} should be ${expected}, found "${found}"`);
  };

  const storageConnection = raw("storageConnection");
  if (storageConnection !== "") {
    const parts = parseConnectionString(storageConnection);
    const usable =
      parts.get("usedevelopmentstorage") === "true" ||
      (parts.has("accountname") && parts.has("accountkey")) ||
      parts.has("blobendpoint") ||
      parts.has("tableendpoint");
    if (!usable) {
      bad(
        "storageConnection",
        "a storage connection string with AccountName and AccountKey (or endpoints, or UseDevelopmentStorage=true)",
        redact(storageConnection),
      );
    }
  }

  const iotHubConnectionString = raw("iotHubConnectionString");
  let iotHubHostName = "";
  if (iotHubConnectionString !== "") {
    const parts = parseConnectionString(iotHubConnectionString);
    iotHubHostName = parts.get("hostname") ?? "";
    if (iotHubHostName === "" || !parts.has("sharedaccesskeyname") || !parts.has("sharedaccesskey")) {
      bad(
        "iotHubConnectionString",
        "an IoT Hub service connection string HostName=…;SharedAccessKeyName=…;SharedAccessKey=…",
        redact(iotHubConnectionString),
      );
    }
  }

  const communicationEndpoint = raw("communicationEndpoint");
  if (communicationEndpoint !== "" && !isHttpsUrl(communicationEndpoint)) {
    bad("communicationEndpoint", "an https:// URL", communicationEndpoint);
  }
  const communicationAccessKey = raw("communicationAccessKey");
  if (communicationAccessKey !== "" && !/^[A-Za-z0-9+/]+={0,2}$/.test(communicationAccessKey)) {
    bad("communicationAccessKey", "a base64 access key", "<not base64>");
  }
  const emailSenderAddress = raw("emailSenderAddress");
  if (emailSenderAddress !== "" && !EMAIL_ADDRESS.test(emailSenderAddress)) {
    bad("emailSenderAddress", "an email address such as DoNotReply@example.com", emailSenderAddress);
  }

  const acrUrl = raw("acrUrl").replace(/\/+$/, "");
  if (acrUrl !== "" && !/^https?:\/\/[^/\s]+$/.test(acrUrl)) {
    bad("acrUrl", "a registry base URL such as https://myregistry.azurecr.io", acrUrl);
  }
  const acrUsername = raw("acrUsername");
  const acrPassword = raw("acrPassword");
  if ((acrUsername === "") !== (acrPassword === "")) {
    problems.push(
      `${APP_SETTINGS.acrUsername.name} and ${APP_SETTINGS.acrPassword.name} must be set together (or both left empty for anonymous pull)`,
    );
  }

  const localRegistryAddress = raw("localRegistryAddress");
  if (!REGISTRY_ADDRESS.test(localRegistryAddress)) {
    bad("localRegistryAddress", "host or host:port, such as localhost:5000", localRegistryAddress);
  }

  const deadlineIso = raw("defaultDeadline");
  const deadlineMs = parseIsoDuration(deadlineIso);
  if (deadlineMs === undefined || deadlineMs <= 0) {
    bad("defaultDeadline", "a positive ISO 8601 duration such as P14D or PT36H", deadlineIso);
  }

  // App settings often hold a PEM on one line with literal \n; the trim in raw() also drops its final newline.
  const signingKeyText = raw("signingKey").replace(/\\n/g, "\n");
  const signingKeyPem = signingKeyText === "" ? "" : `${signingKeyText.trimEnd()}\n`;
  if (signingKeyPem !== "") {
    let keyType: string | undefined;
    try {
      keyType = createPrivateKey(signingKeyPem).asymmetricKeyType;
    } catch {
      keyType = undefined;
    }
    if (keyType !== "ed25519") {
      bad(
        "signingKey",
        "an Ed25519 private key in PKCS#8 PEM (openssl genpkey -algorithm ed25519)",
        keyType === undefined ? "<unreadable key>" : `<${keyType} key>`,
      );
    }
  }
  const signingKeyId = raw("signingKeyId");

  const containers = {} as Record<
    "manifestsContainer" | "bundlesContainer" | "indexesContainer" | "outboxContainer",
    string
  >;
  for (const key of [
    "manifestsContainer",
    "bundlesContainer",
    "indexesContainer",
    "outboxContainer",
  ] as const) {
    const name = raw(key);
    if (!CONTAINER_NAME.test(name))
      bad(key, "a blob container name (3-63 of a-z, 0-9, single hyphens)", name);
    containers[key] = name;
  }

  const deviceBatchSize = integer("deviceBatchSize", raw("deviceBatchSize"), 1, MAX_DEVICE_BATCH_SIZE);
  const queryPageSize = integer("queryPageSize", raw("queryPageSize"), 1, MAX_QUERY_PAGE_SIZE);

  function integer(key: SettingKey, text: string, min: number, max: number): number {
    const value = Number(text);
    if (!/^\d+$/.test(text) || value < min || value > max) {
      bad(key, `a whole number from ${min} to ${max}`, text);
      return min;
    }
    return value;
  }

  if (problems.length > 0) throw new SettingsError(problems);

  return {
    storageConnection,
    iotHubConnectionString,
    iotHubHostName,
    communicationEndpoint: communicationEndpoint.replace(/\/+$/, ""),
    communicationAccessKey,
    emailSenderAddress,
    acrUrl,
    acrUsername,
    acrPassword,
    localRegistryAddress,
    defaultDeadline: { iso: deadlineIso, ms: deadlineMs ?? 0 },
    signingKey: { id: signingKeyId, pem: signingKeyPem },
    ...containers,
    deviceBatchSize,
    queryPageSize,
  };
}

function isHttpsUrl(text: string): boolean {
  try {
    return new URL(text).protocol === "https:";
  } catch {
    return false;
  }
}

/** Keeps secrets out of error messages: shows only the keys of a connection string. */
function redact(connectionString: string): string {
  const keys = [...parseConnectionString(connectionString).keys()];
  return keys.length === 0 ? "<not a Key=value; connection string>" : keys.map((k) => `${k}=…`).join(";");
}
