/**
 * Image references as the registry client takes them: `host[:port]/repository[:tag][@sha256:…]`.
 * There is no default registry: a device talks to its local registry and the cloud to ACR,
 * both always named.
 */
import { RegistryError } from "./errors.js";

export interface ImageReference {
  /** `host` or `host:port`, as written. */
  readonly registry: string;
  /** `http://host:port` or `https://host[:port]`, no trailing slash. */
  readonly baseUrl: string;
  readonly repository: string;
  readonly tag?: string;
  readonly digest?: string;
}

export interface ReferenceOptions {
  /** Use plain http for every host, not only localhost and 127.0.0.1. */
  readonly insecure?: boolean;
}

/** Repository path components as the Distribution spec allows them. */
export const REPOSITORY_PATTERN =
  /^[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*(?:\/[a-z0-9]+(?:(?:\.|_|__|-+)[a-z0-9]+)*)*$/;
const TAG_PATTERN = /^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$/;
export const DIGEST_PATTERN = /^sha256:[a-f0-9]{64}$/;
/** Longest repository name the Distribution spec allows. */
export const MAX_REPOSITORY_LENGTH = 255;

const EXAMPLE =
  "write it as host[:port]/repository[:tag][@sha256:<64 hex>], e.g. 127.0.0.1:5000/apps/telemetry:1.4";

export function parseReference(text: string, options: ReferenceOptions = {}): ImageReference {
  const slash = text.indexOf("/");
  if (slash <= 0) throw new RegistryError(`image reference "${text}" has no registry host; ${EXAMPLE}`);
  const registry = text.slice(0, slash);
  if (
    !/^[A-Za-z0-9.-]+(?::[0-9]{1,5})?$/.test(registry) &&
    !/^\[[0-9a-fA-F:]+\](?::[0-9]{1,5})?$/.test(registry)
  ) {
    throw new RegistryError(
      `image reference "${text}" has an invalid registry host "${registry}"; ${EXAMPLE}`,
    );
  }
  let rest = text.slice(slash + 1);
  let digest: string | undefined;
  const at = rest.indexOf("@");
  if (at >= 0) {
    digest = rest.slice(at + 1);
    rest = rest.slice(0, at);
    if (!DIGEST_PATTERN.test(digest)) {
      throw new RegistryError(
        `image reference "${text}" has digest "${digest}", expected sha256:<64 hex>; ${EXAMPLE}`,
      );
    }
  }
  let tag: string | undefined;
  const colon = rest.lastIndexOf(":");
  if (colon >= 0) {
    tag = rest.slice(colon + 1);
    rest = rest.slice(0, colon);
    if (!TAG_PATTERN.test(tag))
      throw new RegistryError(`image reference "${text}" has an invalid tag "${tag}"; ${EXAMPLE}`);
  }
  if (rest.length > MAX_REPOSITORY_LENGTH || !REPOSITORY_PATTERN.test(rest)) {
    throw new RegistryError(
      `image reference "${text}" has an invalid repository "${rest}" (lowercase letters, digits, . _ - and /); ${EXAMPLE}`,
    );
  }
  return { registry, baseUrl: baseUrlFor(registry, options), repository: rest, tag, digest };
}

/** localhost and loopback registries speak http; everything else https unless told `insecure`. */
export function baseUrlFor(registry: string, options: ReferenceOptions = {}): string {
  const host = registry.replace(/:[0-9]+$/, "").replace(/^\[|\]$/g, "");
  const loopback = host === "localhost" || host === "127.0.0.1" || host === "::1";
  return `${options.insecure || loopback ? "http" : "https"}://${registry}`;
}

/** The manifest reference to ask for: the digest when there is one, else the tag, else `latest`. */
export function manifestReference(ref: ImageReference): string {
  return ref.digest ?? ref.tag ?? "latest";
}

export function formatReference(ref: ImageReference): string {
  return `${ref.registry}/${ref.repository}${ref.tag ? `:${ref.tag}` : ""}${ref.digest ? `@${ref.digest}` : ""}`;
}
