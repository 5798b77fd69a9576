// A deployment request, as accepted by POST /api/deployments and the deployment-requests queue:
// its JSON schema, its validation into a normalized request, and the field-naming errors.

import { Ajv, type ErrorObject } from "ajv";
import type { DeploymentManifest, Requester } from "../../activities/names.js";
import { parseIsoDuration } from "../../config/duration.js";

/** Largest request accepted: an inline manifest is a few tens of KB; a bigger body is a mistake or an attack. */
export const MAX_REQUEST_BYTES = 1024 * 1024;
/** Devices per deployment set: the list travels in the orchestration input, which lives in history. */
export const MAX_DEVICES_PER_SET = 10_000;
/** Twin query length; IoT Hub caps a query at 8 KB, and a WHERE clause needs far less. */
export const MAX_TWIN_QUERY_LENGTH = 1024;
/** Latest deadline: a set that may wait longer than a quarter holds its rows and timer for no purpose. */
export const MAX_DEADLINE_MS = 90 * 24 * 3600 * 1000;
/** Shortest deadline: below this no satellite transfer can finish, so the set would fail by construction. */
export const MIN_DEADLINE_MS = 60 * 1000;
/** Longest client-chosen id: it is the orchestration instance id and a Table Storage key part. */
export const MAX_SET_ID_LENGTH = 64;

export const PRIORITY_CLASSES = ["critical", "high", "normal", "bulk"] as const;
export type PriorityClass = (typeof PRIORITY_CLASSES)[number];

/** What a caller sends. Exactly one of manifest/manifestName and one of devices/twinQuery. */
export interface DeploymentRequestBody {
  id?: string;
  manifest?: DeploymentManifest;
  manifestName?: string;
  devices?: string[];
  twinQuery?: string;
  requestedBy: Requester;
  deadline?: string;
  priority?: PriorityClass;
}

/** A validated request, with the choices made explicit. */
export interface DeploymentRequest {
  /** Client-chosen set id; absent means the service picks one. */
  id?: string;
  manifest: { inline: DeploymentManifest } | { name: string };
  target: { devices: string[] } | { twinQuery: string };
  requestedBy: Requester;
  /** Absolute deadline, or a duration counted from acceptance; absent means the configured default. */
  deadline?: { at: string } | { afterMs: number };
  priority: PriorityClass;
}

/** A request that can never succeed as sent: HTTP 400, or dead-lettered from the queue. */
export class InvalidRequestError extends Error {
  constructor(
    /** The offending field as a dotted path (`requestedBy.email`, `devices[3]`), or `body`. */
    readonly field: string,
    message: string,
  ) {
    super(message);
    this.name = "InvalidRequestError";
  }
}

export const SET_ID_PATTERN = `^[A-Za-z0-9][A-Za-z0-9._-]{0,${MAX_SET_ID_LENGTH - 1}}$`;
// IoT Hub device ids: up to 128 characters of letters, digits and - . % _ * ? ! ( ) , : = @ $ '
export const DEVICE_ID_PATTERN = "^[A-Za-z0-9\\-.%_*?!(),:=@$']{1,128}$";
const MANIFEST_NAME_PATTERN = "^[A-Za-z0-9][A-Za-z0-9._/-]{0,254}$";
const EMAIL_PATTERN = "^[^\\s@]+@[^\\s@]+\\.[^\\s@]+$";

/** JSON schema of a deployment request; `description` is what an error message says was expected. */
export const DEPLOYMENT_REQUEST_SCHEMA = {
  type: "object",
  description: "a JSON object",
  additionalProperties: false,
  required: ["requestedBy"],
  properties: {
    id: {
      type: "string",
      pattern: SET_ID_PATTERN,
      description: `1-${MAX_SET_ID_LENGTH} letters, digits, '.', '_' or '-', starting with a letter or digit`,
    },
    manifest: {
      type: "object",
      description: "an IoT Edge deployment manifest (deployment.template.json) with modulesContent",
      required: ["modulesContent"],
      properties: {
        modulesContent: {
          type: "object",
          description: "an object with $edgeAgent and $edgeHub",
          required: ["$edgeAgent", "$edgeHub"],
          properties: {
            $edgeAgent: {
              type: "object",
              description: 'an object with "properties.desired"',
              required: ["properties.desired"],
              properties: {
                "properties.desired": {
                  type: "object",
                  description: "an object with modules",
                  required: ["modules"],
                  properties: {
                    modules: {
                      type: "object",
                      description: "an object of modules, each with settings.image",
                      minProperties: 1,
                      additionalProperties: {
                        type: "object",
                        description: "a module with settings.image",
                        required: ["settings"],
                        properties: {
                          settings: {
                            type: "object",
                            description: "module settings with an image",
                            required: ["image"],
                            properties: {
                              image: {
                                type: "string",
                                minLength: 1,
                                maxLength: 512,
                                description: "an image reference such as myacr.azurecr.io/telemetry:1.4.2",
                              },
                            },
                          },
                        },
                      },
                    },
                  },
                },
              },
            },
            $edgeHub: { type: "object", description: "the $edgeHub desired properties" },
          },
        },
      },
    },
    manifestName: {
      type: "string",
      pattern: MANIFEST_NAME_PATTERN,
      description: "the name of a blob in the manifests container (letters, digits, '.', '_', '-', '/')",
    },
    devices: {
      type: "array",
      minItems: 1,
      maxItems: MAX_DEVICES_PER_SET,
      description: `a list of 1 to ${MAX_DEVICES_PER_SET} device ids`,
      items: {
        type: "string",
        pattern: DEVICE_ID_PATTERN,
        description: "an IoT Hub device id (1-128 letters, digits or - . % _ * ? ! ( ) , : = @ $ ')",
      },
    },
    twinQuery: {
      type: "string",
      minLength: 1,
      maxLength: MAX_TWIN_QUERY_LENGTH,
      description: `an IoT Hub twin query condition such as tags.fleet='atlantic' (at most ${MAX_TWIN_QUERY_LENGTH} characters)`,
    },
    requestedBy: {
      type: "object",
      description: "an object with the requester's name and email",
      additionalProperties: false,
      required: ["name", "email"],
      properties: {
        name: { type: "string", minLength: 1, maxLength: 200, description: "1-200 characters" },
        email: { type: "string", maxLength: 254, pattern: EMAIL_PATTERN, description: "an email address" },
      },
    },
    deadline: {
      type: "string",
      maxLength: 64,
      description: "an ISO 8601 duration (P14D) or timestamp with a time zone (2026-12-01T00:00:00Z)",
    },
    priority: {
      enum: [...PRIORITY_CLASSES],
      description: `one of ${PRIORITY_CLASSES.join(", ")}`,
    },
  },
} as const;

const validateSchema = new Ajv({
  allErrors: false,
  verbose: true,
  strict: true,
}).compile<DeploymentRequestBody>(DEPLOYMENT_REQUEST_SCHEMA);

const TIMESTAMP = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(?::\d{2}(?:\.\d{1,9})?)?(?:Z|[+-]\d{2}:\d{2})$/;

/** Parses request text (HTTP body or queue message); throws InvalidRequestError naming the field. */
export function parseDeploymentRequestText(text: string, now: Date = new Date()): DeploymentRequest {
  if (Buffer.byteLength(text) > MAX_REQUEST_BYTES) {
    throw new InvalidRequestError(
      "body",
      `request body must be at most ${MAX_REQUEST_BYTES} bytes, found ${Buffer.byteLength(text)}`,
    );
  }
  let body: unknown;
  try {
    body = JSON.parse(text);
  } catch (error) {
    throw new InvalidRequestError("body", `request body must be JSON: ${(error as Error).message}`);
  }
  return validateDeploymentRequest(body, now);
}

/** Validates a parsed request; throws InvalidRequestError naming the first offending field. */
export function validateDeploymentRequest(body: unknown, now: Date = new Date()): DeploymentRequest {
  if (!validateSchema(body)) throw schemaError(validateSchema.errors?.[0]);

  const manifest = exactlyOne(body, "manifest", "manifestName");
  const target = exactlyOne(body, "devices", "twinQuery");

  if (body.manifest !== undefined) checkConcreteManifest(body.manifest, "manifest");
  if (body.devices !== undefined) {
    const seen = new Set<string>();
    body.devices.forEach((device, i) => {
      if (seen.has(device))
        throw new InvalidRequestError(`devices[${i}]`, `devices[${i}] repeats device ${device}`);
      seen.add(device);
    });
  }
  if (body.twinQuery !== undefined && /;|^\s*select\b/i.test(body.twinQuery)) {
    throw new InvalidRequestError(
      "twinQuery",
      `twinQuery must be only the condition after WHERE, such as tags.fleet='atlantic', found ${JSON.stringify(body.twinQuery)}`,
    );
  }

  return {
    ...(body.id === undefined ? {} : { id: body.id }),
    manifest: manifest === "manifest" ? { inline: body.manifest! } : { name: body.manifestName! },
    target: target === "devices" ? { devices: body.devices! } : { twinQuery: body.twinQuery! },
    requestedBy: { name: body.requestedBy.name, email: body.requestedBy.email },
    ...(body.deadline === undefined ? {} : { deadline: parseDeadline(body.deadline, now) }),
    priority: body.priority ?? "normal",
  };
}

/**
 * Checks that a manifest names concrete images: `${…}` placeholders of a deployment template
 * must be expanded before deploying (iotedgedev genconfig, or the build pipeline).
 */
export function checkConcreteManifest(manifest: unknown, field: string): void {
  const path = findPlaceholder(manifest, field);
  if (path !== undefined) {
    throw new InvalidRequestError(
      path,
      `${path} holds a \${…} placeholder; expand the deployment template (iotedgedev genconfig) before deploying`,
    );
  }
}

function findPlaceholder(value: unknown, path: string): string | undefined {
  if (typeof value === "string") return value.includes("${") ? path : undefined;
  if (Array.isArray(value)) {
    for (let i = 0; i < value.length; i++) {
      const found = findPlaceholder(value[i], `${path}[${i}]`);
      if (found !== undefined) return found;
    }
    return undefined;
  }
  if (value !== null && typeof value === "object") {
    for (const [key, child] of Object.entries(value)) {
      const found = findPlaceholder(child, `${path}.${key}`);
      if (found !== undefined) return found;
    }
  }
  return undefined;
}

/** Deadline text → an absolute time or a duration; bounded by MIN/MAX_DEADLINE_MS. */
export function parseDeadline(text: string, now: Date): { at: string } | { afterMs: number } {
  const expected = DEPLOYMENT_REQUEST_SCHEMA.properties.deadline.description;
  const bounds = `between ${MIN_DEADLINE_MS / 60_000} minute and ${MAX_DEADLINE_MS / 86_400_000} days away`;
  if (text.startsWith("P")) {
    const ms = parseIsoDuration(text);
    if (ms === undefined)
      throw new InvalidRequestError("deadline", `deadline must be ${expected}, found "${text}"`);
    if (ms < MIN_DEADLINE_MS || ms > MAX_DEADLINE_MS) {
      throw new InvalidRequestError("deadline", `deadline must be ${bounds}, found "${text}"`);
    }
    return { afterMs: ms };
  }
  const at = TIMESTAMP.test(text) ? Date.parse(text) : Number.NaN;
  if (Number.isNaN(at))
    throw new InvalidRequestError("deadline", `deadline must be ${expected}, found "${text}"`);
  const ahead = at - now.getTime();
  if (ahead < MIN_DEADLINE_MS || ahead > MAX_DEADLINE_MS) {
    throw new InvalidRequestError("deadline", `deadline must be ${bounds}, found "${text}"`);
  }
  return { at: new Date(at).toISOString() };
}

function exactlyOne<K extends keyof DeploymentRequestBody>(body: DeploymentRequestBody, a: K, b: K): K {
  const hasA = body[a] !== undefined;
  const hasB = body[b] !== undefined;
  if (hasA === hasB) {
    throw new InvalidRequestError(
      `${a}|${b}`,
      hasA ? `give either ${a} or ${b}, not both` : `${a} or ${b} is required (exactly one)`,
    );
  }
  return hasA ? a : b;
}

function schemaError(error: ErrorObject | undefined): InvalidRequestError {
  if (error === undefined)
    return new InvalidRequestError("body", "request does not match the deployment request schema");
  const field = fieldOf(error.instancePath);
  const join = (child: string) => (field === "body" ? child : `${field}.${child}`);
  switch (error.keyword) {
    case "required": {
      const missing = join((error.params as { missingProperty: string }).missingProperty);
      return new InvalidRequestError(missing, `${missing} is required`);
    }
    case "additionalProperties": {
      const extra = join((error.params as { additionalProperty: string }).additionalProperty);
      const known = Object.keys(
        (error.parentSchema as { properties?: object } | undefined)?.properties ?? {},
      );
      return new InvalidRequestError(
        extra,
        `${extra} is not a known field; expected only ${known.join(", ")}`,
      );
    }
    default: {
      const expected =
        (error.parentSchema as { description?: string } | undefined)?.description ?? error.message;
      return new InvalidRequestError(
        field,
        `${field} must be ${expected}, found ${describeValue(error.data)}`,
      );
    }
  }
}

/** `/requestedBy/email` → `requestedBy.email`; `/devices/3` → `devices[3]`; `` → `body`. */
function fieldOf(instancePath: string): string {
  if (instancePath === "") return "body";
  let field = "";
  for (const raw of instancePath.slice(1).split("/")) {
    const part = raw.replace(/~1/g, "/").replace(/~0/g, "~");
    field += /^\d+$/.test(part) ? `[${part}]` : field === "" ? part : `.${part}`;
  }
  return field;
}

/** A short rendering of what was found, so a message never echoes a whole manifest. */
function describeValue(value: unknown): string {
  if (Array.isArray(value)) return `a list of ${value.length}`;
  if (value === null) return "null";
  if (typeof value === "object") return "an object";
  const text = JSON.stringify(value) ?? String(value);
  return text.length > 80 ? `${text.slice(0, 77)}…` : text;
}
