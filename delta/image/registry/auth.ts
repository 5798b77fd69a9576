/**
 * Registry authentication: anonymous, HTTP basic, and the bearer token flow of the Docker
 * token spec that ACR uses. A 401 names a realm, service and scope in `WWW-Authenticate`;
 * the client asks the realm for a token (with basic credentials, with a refresh token, or
 * anonymously) and caches it per scope until shortly before it expires.
 */
import { describeErrorBody, RegistryError, readBounded } from "./errors.js";
import type { HttpResponse, HttpTransport } from "./http.js";

export interface RegistryCredentials {
  readonly username?: string;
  readonly password?: string;
  /** An OAuth2 refresh token (ACR's exchanged AAD token): sent as `grant_type=refresh_token`. */
  readonly refreshToken?: string;
}

export interface Challenge {
  readonly scheme: "basic" | "bearer";
  readonly realm?: string;
  readonly service?: string;
  readonly scope?: string;
  /** `insufficient_scope` when a token was valid but did not grant what the request needs. */
  readonly error?: string;
}

/** Longest token response we accept: real ones are a few KB. */
const MAX_TOKEN_RESPONSE_BYTES = 1024 * 1024;
/** The token spec's default lifetime when `expires_in` is absent. */
const DEFAULT_TOKEN_SECONDS = 60;
/** Renew this long before expiry so a token never lapses between check and use. */
const TOKEN_RENEW_MARGIN_MS = 10_000;

/** Parses `Bearer realm="…",service="…",scope="…"` (or `Basic realm="…"`); undefined if neither. */
export function parseChallenge(header: string | null): Challenge | undefined {
  if (!header) return undefined;
  const match = /^\s*(\w+)\s*(.*)$/s.exec(header);
  if (!match) return undefined;
  const scheme = match[1]!.toLowerCase();
  if (scheme !== "basic" && scheme !== "bearer") return undefined;
  const params: Record<string, string> = {};
  const pattern = /([A-Za-z_]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^,\s]*))\s*,?/g;
  for (let m = pattern.exec(match[2]!); m; m = pattern.exec(match[2]!)) {
    params[m[1]!.toLowerCase()] = m[2] !== undefined ? m[2].replace(/\\(.)/g, "$1") : m[3]!;
  }
  return { scheme, realm: params.realm, service: params.service, scope: params.scope, error: params.error };
}

interface CachedToken {
  readonly token: string;
  readonly expiresAt: number;
}

/** Fetches and caches bearer tokens for one registry. */
export class TokenCache {
  private readonly tokens = new Map<string, CachedToken>();

  constructor(
    private readonly credentials: RegistryCredentials,
    private readonly transport: HttpTransport,
    private readonly now: () => number = Date.now,
  ) {}

  /** Number of token requests made so far (tests check that tokens are reused). */
  requests = 0;

  clear(): void {
    this.tokens.clear();
  }

  async token(challenge: Challenge, scopes: readonly string[]): Promise<string> {
    if (!challenge.realm) {
      throw new RegistryError(
        "the registry asked for a bearer token but named no realm in WWW-Authenticate; check the registry's auth config",
      );
    }
    const key = `${challenge.realm} ${challenge.service ?? ""} ${scopes.join(" ")}`;
    const cached = this.tokens.get(key);
    if (cached && cached.expiresAt - TOKEN_RENEW_MARGIN_MS > this.now()) return cached.token;
    const fresh = await this.request(challenge.realm, challenge.service, scopes);
    this.tokens.set(key, fresh);
    return fresh.token;
  }

  private async request(
    realm: string,
    service: string | undefined,
    scopes: readonly string[],
  ): Promise<CachedToken> {
    this.requests++;
    const { username, password, refreshToken } = this.credentials;
    let response: HttpResponse;
    const what = `token request to ${realm} for scope "${scopes.join(" ")}"`;
    try {
      if (refreshToken) {
        // OAuth2 form post: what ACR expects for a refresh token.
        const form = new URLSearchParams({ grant_type: "refresh_token", refresh_token: refreshToken });
        if (service) form.set("service", service);
        if (scopes.length > 0) form.set("scope", scopes.join(" "));
        response = await this.transport.send(
          new URL(realm),
          "POST",
          { "content-type": "application/x-www-form-urlencoded" },
          new TextEncoder().encode(form.toString()),
        );
      } else {
        const url = new URL(realm);
        if (service) url.searchParams.set("service", service);
        for (const scope of scopes) url.searchParams.append("scope", scope);
        const headers: Record<string, string> = {};
        if (username !== undefined) headers.authorization = basicHeader(username, password ?? "");
        response = await this.transport.send(url, "GET", headers, undefined);
      }
    } catch (error) {
      throw new RegistryError(
        `${what} failed: ${(error as Error).message}; check that the token service is reachable`,
      );
    }
    if (response.status !== 200) {
      const body = await describeErrorBody(response);
      const hint =
        response.status === 401 || response.status === 403
          ? "check the registry credentials (username/password or refresh token) and their permissions"
          : "retry later or check the token service";
      throw new RegistryError(
        `${what} answered ${response.status}${body.text}; ${hint}`,
        response.status,
        body.codes,
      );
    }
    const bytes = await readBounded(response, MAX_TOKEN_RESPONSE_BYTES, `${what} response`);
    let body: { token?: unknown; access_token?: unknown; expires_in?: unknown };
    try {
      body = JSON.parse(new TextDecoder().decode(bytes));
    } catch {
      throw new RegistryError(`${what} answered a body that is not JSON; check the realm URL`);
    }
    const token = typeof body.token === "string" ? body.token : body.access_token;
    if (typeof token !== "string" || token === "") {
      throw new RegistryError(`${what} answered JSON without "token" or "access_token"; check the realm URL`);
    }
    const seconds =
      typeof body.expires_in === "number" && body.expires_in > 0 ? body.expires_in : DEFAULT_TOKEN_SECONDS;
    return { token, expiresAt: this.now() + seconds * 1000 };
  }
}

export function basicHeader(username: string, password: string): string {
  return `Basic ${Buffer.from(`${username}:${password}`).toString("base64")}`;
}
