/**
 * Business priority rules: one versioned file (`rules/priorities.json`, schema `rules/schema.json`)
 * that maps a deployment set's attributes to a priority class and an optional deadline.
 *
 * Loading reads and validates the file once, at start; `decidePriority` is pure (no I/O, no clock)
 * so orchestrators, activities and local mode all give the same answer for the same rules.
 */
import { existsSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { fileURLToPath } from "node:url";
import { Ajv, type ErrorObject } from "ajv";
import { parseIsoDuration } from "./duration.js";

/** Classes in the order they are served: index 0 goes first. */
export const PRIORITY_CLASSES = ["critical", "high", "normal", "bulk"] as const;
export type PriorityClass = (typeof PRIORITY_CLASSES)[number];

/** The image label a module's workstream is read from. */
export const WORKSTREAM_LABEL = "deltaship.workstream";
/** Rule id reported when no rule matched and the file's `default` decided. */
export const DEFAULT_RULE_ID = "default";
/** `rules/` at the package root: one level up when run from source (tsx), two from `dist/config/`. */
const RULES_DIR = [new URL("../rules/", import.meta.url), new URL("../../rules/", import.meta.url)]
  .map((url) => fileURLToPath(url))
  .find((dir) => existsSync(join(dir, "schema.json")));
/** The rules the app loads at start unless DELTASHIP_PRIORITY_RULES names another file. */
export const DEFAULT_RULES_PATH = join(RULES_DIR ?? "rules", "priorities.json");
const SCHEMA_PATH = join(RULES_DIR ?? "rules", "schema.json");

/** A rules file larger than this is not hand-written rules; refuse it before parsing. */
export const MAX_RULES_FILE_BYTES = 1024 * 1024;
/** Labels kept per image: they travel in orchestration history, and rules need only a few. */
export const MAX_IMAGE_LABELS = 32;
/** Longest label key kept; OCI keys are reverse-DNS names, far shorter than this. */
export const MAX_LABEL_KEY_LENGTH = 128;
/** Longest label value kept; rules match short words, a long value is not one. */
export const MAX_LABEL_VALUE_LENGTH = 256;

/** What a rule decides: a fixed class, or `requested` (the request's own class). */
export type RuleClass = PriorityClass | "requested";

export interface PriorityRule {
  id: string;
  description?: string;
  when: {
    module?: string[];
    workstream?: string[];
    labels?: Record<string, string[]>;
    requesterGroup?: string[];
    requested?: PriorityClass[];
  };
  class: RuleClass;
  /** The most urgent class this rule lets through: a more urgent result is lowered to it. */
  max?: PriorityClass;
  /** ISO 8601 duration from the request time by which the set should arrive. */
  deadline?: string;
}

export interface PriorityRules {
  version: string;
  groups?: Record<string, string[]>;
  rules: PriorityRule[];
  default: Pick<PriorityRule, "class" | "max" | "deadline">;
}

/** What the rules look at, gathered by the caller (no I/O here). */
export interface PriorityAttributes {
  /** One entry per module of the manifest, with its image's labels. */
  modules: { module: string; labels?: Record<string, string> }[];
  /** The requester's email; groups are looked up in the rules file, never taken from the request. */
  requesterEmail?: string;
  /** The class the request asked for, if any. */
  requested?: PriorityClass;
  /** ISO time the request was accepted: a rule's deadline counts from here. */
  requestedAt: string;
}

export interface PriorityDecision {
  class: PriorityClass;
  /** Id of the rule that decided, or `default`. */
  rule: string;
  /** Version of the rules file that decided. */
  rulesVersion: string;
  /** ISO instant the rule wants the set delivered by, when the rule sets one. */
  deadline?: string;
  /** Set when the request asked for a more urgent class than the rule allowed. */
  cappedFrom?: PriorityClass;
}

/** Thrown at start when the rules file cannot be used; the message lists every problem. */
export class PriorityRulesError extends Error {
  constructor(
    readonly source: string,
    readonly problems: string[],
  ) {
    super(
      `priority rules ${source} are not valid: ${problems.join("; ")}; fix the file (schema: rules/schema.json) and restart`,
    );
    this.name = "PriorityRulesError";
  }
}

let validator: ReturnType<Ajv["compile"]> | undefined;
function schemaValidator(): ReturnType<Ajv["compile"]> {
  if (RULES_DIR === undefined) {
    throw new PriorityRulesError(SCHEMA_PATH, [
      "expected rules/schema.json at the package root (beside dist/), found none; deploy the rules folder with the app",
    ]);
  }
  validator ??= new Ajv({ allErrors: true, strict: true }).compile(
    JSON.parse(readFileSync(SCHEMA_PATH, "utf8")) as object,
  );
  return validator;
}

/** Reads and validates a rules file. Call once at start; throws PriorityRulesError with every problem. */
export function loadPriorityRules(
  path: string = process.env.DELTASHIP_PRIORITY_RULES || DEFAULT_RULES_PATH,
): PriorityRules {
  let text: string;
  try {
    const bytes = readFileSync(path);
    if (bytes.length > MAX_RULES_FILE_BYTES) {
      throw new PriorityRulesError(path, [
        `expected at most ${MAX_RULES_FILE_BYTES} bytes, found ${bytes.length}`,
      ]);
    }
    text = bytes.toString("utf8");
  } catch (error) {
    if (error instanceof PriorityRulesError) throw error;
    throw new PriorityRulesError(path, [`the file cannot be read: ${(error as Error).message}`]);
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (error) {
    throw new PriorityRulesError(path, [`expected JSON, found a parse error: ${(error as Error).message}`]);
  }
  return parsePriorityRules(json, path);
}

let loaded: PriorityRules | undefined;
/** The app's rules, loaded and validated on first use (at start) and kept for the process's life. */
export function appPriorityRules(): PriorityRules {
  loaded ??= loadPriorityRules();
  return loaded;
}

/** Validates parsed rules against the schema and the checks a schema cannot express. */
export function parsePriorityRules(json: unknown, source = "(inline)"): PriorityRules {
  const validate = schemaValidator();
  if (!validate(json)) throw new PriorityRulesError(source, (validate.errors ?? []).map(schemaProblem));
  const rules = json as PriorityRules;
  const problems: string[] = [];
  const seen = new Set<string>();
  rules.rules.forEach((rule, i) => {
    const at = `rules[${i}] (${rule.id})`;
    if (rule.id === DEFAULT_RULE_ID)
      problems.push(`${at}: the id "default" is reserved for the default decision`);
    if (seen.has(rule.id)) problems.push(`${at}: id repeats an earlier rule; give every rule its own id`);
    seen.add(rule.id);
    for (const group of rule.when.requesterGroup ?? []) {
      if (rules.groups?.[group] === undefined) {
        problems.push(`${at}: requesterGroup "${group}" is not defined under groups; add it or fix the name`);
      }
    }
    if (rule.deadline !== undefined && !(parseIsoDuration(rule.deadline)! > 0)) {
      problems.push(`${at}: deadline ${rule.deadline} must be a positive duration such as PT6H`);
    }
    if (rule.class !== "requested" && rule.max !== undefined && rank(rule.class) < rank(rule.max)) {
      problems.push(
        `${at}: class ${rule.class} is more urgent than its own max ${rule.max}; lower the class`,
      );
    }
  });
  if (rules.default.deadline !== undefined && !(parseIsoDuration(rules.default.deadline)! > 0)) {
    problems.push(`default: deadline ${rules.default.deadline} must be a positive duration such as P2D`);
  }
  if (problems.length > 0) throw new PriorityRulesError(source, problems);
  return rules;
}

function schemaProblem(error: ErrorObject): string {
  const where = error.instancePath === "" ? "the file" : error.instancePath;
  if (error.keyword === "additionalProperties") {
    return `${where}: unknown field "${(error.params as { additionalProperty: string }).additionalProperty}"`;
  }
  if (error.keyword === "enum") {
    return `${where} must be one of ${(error.params as { allowedValues: unknown[] }).allowedValues.join(", ")}`;
  }
  return `${where} ${error.message}`;
}

/** Position of a class in serving order: 0 (critical) goes first. */
export function rank(priority: PriorityClass): number {
  return PRIORITY_CLASSES.indexOf(priority);
}

/** Decides a set's class: the first rule whose conditions all hold, else the default. Pure. */
export function decidePriority(rules: PriorityRules, attributes: PriorityAttributes): PriorityDecision {
  const groups = requesterGroups(rules, attributes.requesterEmail);
  for (const rule of rules.rules) {
    if (matches(rule, attributes, groups)) return decision(rules, rule.id, rule, attributes);
  }
  return decision(rules, DEFAULT_RULE_ID, rules.default, attributes);
}

function decision(
  rules: PriorityRules,
  id: string,
  rule: Pick<PriorityRule, "class" | "max" | "deadline">,
  attributes: PriorityAttributes,
): PriorityDecision {
  // A request without a class asks for nothing in particular: normal.
  const wanted = rule.class === "requested" ? (attributes.requested ?? "normal") : rule.class;
  const chosen = rule.max !== undefined && rank(wanted) < rank(rule.max) ? rule.max : wanted;
  const out: PriorityDecision = { class: chosen, rule: id, rulesVersion: rules.version };
  if (rule.deadline !== undefined) {
    out.deadline = new Date(
      Date.parse(attributes.requestedAt) + parseIsoDuration(rule.deadline)!,
    ).toISOString();
  }
  if (attributes.requested !== undefined && rank(attributes.requested) < rank(chosen)) {
    out.cappedFrom = attributes.requested;
  }
  return out;
}

function matches(rule: PriorityRule, attributes: PriorityAttributes, groups: ReadonlySet<string>): boolean {
  const { when } = rule;
  if (when.requested !== undefined) {
    if (attributes.requested === undefined || !when.requested.includes(attributes.requested)) return false;
  }
  if (when.requesterGroup !== undefined && !when.requesterGroup.some((group) => groups.has(group)))
    return false;
  if (when.module === undefined && when.workstream === undefined && when.labels === undefined) return true;
  // Module-level conditions must all hold for one module, so "tempmonitor with a security label"
  // does not match a set where one module is tempmonitor and another carries the label.
  return attributes.modules.some((module) => {
    const labels = module.labels ?? {};
    if (when.module !== undefined && !anyPattern(when.module, module.module)) return false;
    if (when.workstream !== undefined) {
      const workstream = labels[WORKSTREAM_LABEL];
      if (workstream === undefined || !anyPattern(when.workstream, workstream)) return false;
    }
    for (const [key, patterns] of Object.entries(when.labels ?? {})) {
      const value = labels[key];
      if (value === undefined || !anyPattern(patterns, value)) return false;
    }
    return true;
  });
}

/** The groups the rules file puts an email in (case-insensitive; `*@domain` covers a domain). */
export function requesterGroups(rules: PriorityRules, email: string | undefined): Set<string> {
  const out = new Set<string>();
  if (email === undefined) return out;
  const address = email.toLowerCase();
  const domain = address.slice(address.lastIndexOf("@") + 1);
  for (const [group, members] of Object.entries(rules.groups ?? {})) {
    for (const member of members) {
      const m = member.toLowerCase();
      if (m === address || (m.startsWith("*@") && m.slice(2) === domain)) out.add(group);
    }
  }
  return out;
}

function anyPattern(patterns: readonly string[], value: string): boolean {
  return patterns.some((pattern) => globMatch(pattern, value));
}

/** `*` matches any run of characters; everything else is literal and case-sensitive. */
export function globMatch(pattern: string, value: string): boolean {
  const parts = pattern.split("*");
  if (parts.length === 1) return pattern === value;
  const first = parts[0]!;
  const last = parts[parts.length - 1]!;
  if (value.length < first.length + last.length || !value.startsWith(first) || !value.endsWith(last)) {
    return false;
  }
  let at = first.length;
  const end = value.length - last.length;
  for (let i = 1; i < parts.length - 1; i++) {
    const found = value.indexOf(parts[i]!, at);
    if (found < 0 || found + parts[i]!.length > end) return false;
    at = found + parts[i]!.length;
  }
  return true;
}

/**
 * The labels of an image config (`config.Labels`), within the limits above: labels past the
 * limits are dropped (they cannot be rule inputs), never an error, since the image is the
 * customer's. Pure.
 */
export function imageLabels(configJson: Uint8Array | string): Record<string, string> {
  let config: unknown;
  try {
    config = JSON.parse(
      typeof configJson === "string" ? configJson : Buffer.from(configJson).toString("utf8"),
    );
  } catch {
    return {};
  }
  const labels = (config as { config?: { Labels?: unknown } } | null)?.config?.Labels;
  if (labels === null || typeof labels !== "object") return {};
  const out: Record<string, string> = {};
  let kept = 0;
  for (const key of Object.keys(labels).sort()) {
    const value = (labels as Record<string, unknown>)[key];
    if (
      typeof value !== "string" ||
      key.length > MAX_LABEL_KEY_LENGTH ||
      value.length > MAX_LABEL_VALUE_LENGTH
    ) {
      continue;
    }
    out[key] = value;
    if (++kept === MAX_IMAGE_LABELS) break;
  }
  return out;
}

/** The outbox order within a class: earliest deadline first, then the earliest request. */
export interface OutboxOrder {
  priority: PriorityClass;
  /** Fixed-width, sorts as text: `<deadline>-<requested at>`, each `YYYYMMDDTHHMMSSZ`. */
  sortKey: string;
}

/** Where a set's bundles go in each device's queue. `setDeadline` bounds a rule's deadline. Pure. */
export function outboxOrder(
  decision: PriorityDecision,
  setDeadline: string,
  requestedAt: string,
): OutboxOrder {
  const deadline =
    decision.deadline !== undefined && Date.parse(decision.deadline) < Date.parse(setDeadline)
      ? decision.deadline
      : setDeadline;
  return { priority: decision.class, sortKey: `${compactTime(deadline)}-${compactTime(requestedAt)}` };
}

/** `2026-11-28T09:00:00.000Z` → `20261128T090000Z`: name-safe, tag-safe, and sorts as text. */
export function compactTime(iso: string): string {
  const ms = Date.parse(iso);
  if (Number.isNaN(ms)) throw new Error(`expected an ISO time, found ${JSON.stringify(iso)}`);
  return new Date(ms)
    .toISOString()
    .replace(/[-:]/g, "")
    .replace(/\.\d{3}Z$/, "Z");
}

/** The file-name prefix that sorts a bundle in serving order: `p0-critical-<sort key>-`. */
export function outboxNamePrefix(order: OutboxOrder): string {
  return `p${rank(order.priority)}-${order.priority}-${order.sortKey}-`;
}

const NAME_PREFIX = /^p[0-3]-(?:critical|high|normal|bulk)-\d{8}T\d{6}Z-\d{8}T\d{6}Z-/;

/** An outbox file name without its order prefix: the flattened bundle id (reports name files). */
export function withoutOutboxPrefix(fileName: string): string {
  return fileName.replace(NAME_PREFIX, "");
}
