/**
 * Starts Debian's `docker-registry` (Distribution 2.8) on a free port of 127.0.0.1 with
 * filesystem storage in a temp dir and deletes enabled, for one test file:
 *
 *   const registry = await startRegistry();               // no auth
 *   after(() => registry.stop());
 *   await pushImage(`${registry.host}/apps/x:1`, image);  // 127.0.0.1 speaks http
 *
 * Auth modes, both checked by the real registry:
 * - `{ auth: "basic", users }`: htpasswd (bcrypt, written by `htpasswd` from apache2-utils).
 * - `{ auth: "token", users, refreshTokens }`: the Docker token flow ACR uses. The registry
 *   trusts a throwaway certificate; a small token service of ours (in this process) signs
 *   RS256 JWTs with its key, granting whatever scope is asked to any known user or refresh
 *   token (pull only to a user marked `pullOnly`), and nothing to anonymous callers. It stands in for ACR's token endpoint (which
 *   has no local equivalent); the registry's validation of the tokens is real.
 *
 * `blobPath(digest)` names a blob's file in the storage dir, so a test can tamper with it.
 */
import { type ChildProcess, execFileSync, spawn } from "node:child_process";
import { createPrivateKey, randomUUID, sign, X509Certificate } from "node:crypto";
import { once } from "node:events";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import { createServer as createNetServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { stopProcess } from "./process.js";

const REGISTRY_BIN = "/usr/bin/docker-registry";
/** How long the registry may take to answer /v2/ (it starts in well under a second). */
const START_TIMEOUT_MS = 20_000;
/** Pause between readiness probes. */
const PROBE_INTERVAL_MS = 100;
/** Ports tried when another process takes the free port first. */
const START_ATTEMPTS = 3;
const IDENTITY_HEADER = "X-Deltaship-Test-Registry";
/** Registry output kept for error messages. */
const MAX_LOG_CHARS = 20_000;
/** Token lifetime the stand-in grants; long enough for any test. */
const TOKEN_SECONDS = 300;
/** Largest form body the token stand-in reads. */
const MAX_TOKEN_BODY_BYTES = 64 * 1024;

export const TOKEN_SERVICE = "deltaship-test-registry";
const TOKEN_ISSUER = "deltaship-test-token-service";

export interface RegistryUser {
  readonly username: string;
  readonly password: string;
  /** Token mode: grant this user `pull` only, whatever it asks for. */
  readonly pullOnly?: boolean;
}

export interface RegistryStartOptions {
  readonly auth?: "none" | "basic" | "token";
  readonly users?: readonly RegistryUser[];
  /** Refresh tokens the token service accepts (`grant_type=refresh_token`), as ACR issues them. */
  readonly refreshTokens?: readonly string[];
}

export interface TestRegistry {
  /** `http://127.0.0.1:PORT` */
  readonly url: string;
  /** `127.0.0.1:PORT`, the registry part of an image reference. */
  readonly host: string;
  /** The registry's storage root (filesystem driver). */
  readonly storageDir: string;
  /** The file holding a blob's bytes in storage. */
  blobPath(digest: string): string;
  /** Token requests the token service has answered (token mode), to check clients cache tokens. */
  readonly tokenRequests: number;
  stop(): Promise<void>;
}

export async function startRegistry(options: RegistryStartOptions = {}): Promise<TestRegistry> {
  if (!existsSync(REGISTRY_BIN)) {
    throw new Error(
      `expected ${REGISTRY_BIN}, found nothing; run scripts/setup-debian.sh (package docker-registry)`,
    );
  }
  const auth = options.auth ?? "none";
  const dir = mkdtempSync(join(tmpdir(), "deltaship-registry-"));
  const storageDir = join(dir, "storage");
  let tokenService: TokenService | undefined;
  let child: ChildProcess | undefined;
  try {
    let authConfig = "";
    if (auth === "basic") {
      const lines = (options.users ?? []).map((u) =>
        execFileSync("htpasswd", ["-nbB", u.username, u.password], { encoding: "utf8" }).trim(),
      );
      writeFileSync(join(dir, "htpasswd"), `${lines.join("\n")}\n`);
      authConfig = `auth:\n  htpasswd:\n    realm: deltaship-test\n    path: ${join(dir, "htpasswd")}\n`;
    } else if (auth === "token") {
      tokenService = await startTokenService(dir, options);
      authConfig =
        `auth:\n  token:\n    realm: ${tokenService.realm}\n    service: ${TOKEN_SERVICE}\n` +
        `    issuer: ${TOKEN_ISSUER}\n    rootcertbundle: ${tokenService.certPath}\n`;
    }
    // The port is free when asked but another process may take it first: then try another.
    let started: { child: ChildProcess; port: number } | undefined;
    for (let attempt = 1; !started; attempt++) {
      const port = await freePort();
      const identity = randomUUID();
      const config = join(dir, "config.yml");
      writeFileSync(
        config,
        [
          "version: 0.1",
          "log:",
          "  level: warn",
          "  accesslog:",
          "    disabled: true",
          "storage:",
          "  filesystem:",
          `    rootdirectory: ${storageDir}`,
          "  delete:",
          "    enabled: true",
          "  maintenance:",
          "    uploadpurging:",
          "      enabled: false",
          "http:",
          `  addr: 127.0.0.1:${port}`,
          `  secret: ${randomUUID()}`,
          "  headers:",
          // Lets the readiness probe tell our registry from another process on the same port.
          `    ${IDENTITY_HEADER}: ["${identity}"]`,
          authConfig,
        ].join("\n"),
      );
      let log = "";
      const keep = (chunk: Buffer) => {
        log = (log + chunk.toString("utf8")).slice(-MAX_LOG_CHARS);
      };
      child = spawn(REGISTRY_BIN, ["serve", config], { stdio: ["ignore", "pipe", "pipe"] });
      child.stdout?.on("data", keep);
      child.stderr?.on("data", keep);
      // A test process that crashes must not leave a registry running on a shared machine.
      const running = child;
      const killOnExit = () => running.kill("SIGKILL");
      process.once("exit", killOnExit);
      running.once("exit", () => process.off("exit", killOnExit));
      try {
        await waitForRegistry(`http://127.0.0.1:${port}`, identity, running, () => log);
        started = { child: running, port };
      } catch (error) {
        await stopProcess(running);
        child = undefined;
        if (attempt === START_ATTEMPTS || !/address already in use/.test(log)) throw error;
      }
    }
    const { child: running, port } = started;
    const url = `http://127.0.0.1:${port}`;
    const service = tokenService;
    return {
      url,
      host: `127.0.0.1:${port}`,
      storageDir,
      blobPath(digest: string) {
        const hex = digest.replace(/^sha256:/, "");
        return join(storageDir, "docker/registry/v2/blobs/sha256", hex.slice(0, 2), hex, "data");
      },
      get tokenRequests() {
        return service?.requests ?? 0;
      },
      async stop() {
        await stopProcess(running);
        await service?.close();
        rmSync(dir, { recursive: true, force: true });
      },
    };
  } catch (error) {
    if (child) await stopProcess(child);
    await tokenService?.close();
    rmSync(dir, { recursive: true, force: true });
    throw error;
  }
}

async function freePort(): Promise<number> {
  const server = createNetServer();
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  const address = server.address();
  server.close();
  await once(server, "close");
  if (!address || typeof address === "string") throw new Error("could not find a free port on 127.0.0.1");
  return address.port;
}

async function waitForRegistry(
  url: string,
  identity: string,
  child: ChildProcess,
  log: () => string,
): Promise<void> {
  const deadline = Date.now() + START_TIMEOUT_MS;
  for (;;) {
    if (child.exitCode !== null || child.signalCode !== null) {
      throw new Error(
        `docker-registry exited (code ${child.exitCode}) before answering ${url}/v2/; output:\n${log()}`,
      );
    }
    try {
      const response = await fetch(`${url}/v2/`);
      await response.body?.cancel();
      // 401 is an answer too: the auth modes refuse anonymous calls.
      const ours = response.headers.get(IDENTITY_HEADER) === identity;
      if (ours && (response.status === 200 || response.status === 401)) return;
    } catch {
      // Not listening yet.
    }
    if (Date.now() > deadline) {
      await stopProcess(child);
      throw new Error(
        `docker-registry did not answer ${url}/v2/ within ${START_TIMEOUT_MS} ms; output:\n${log()}`,
      );
    }
    await new Promise((resolve) => setTimeout(resolve, PROBE_INTERVAL_MS));
  }
}

// ---- the token service stand-in ----

interface TokenService {
  readonly realm: string;
  readonly certPath: string;
  readonly requests: number;
  close(): Promise<void>;
}

async function startTokenService(dir: string, options: RegistryStartOptions): Promise<TokenService> {
  const keyPath = join(dir, "token.key");
  const certPath = join(dir, "token.crt");
  execFileSync(
    "openssl",
    [
      "req",
      "-x509",
      "-newkey",
      "rsa:2048",
      "-nodes",
      "-keyout",
      keyPath,
      "-out",
      certPath,
      "-days",
      "2",
    ].concat(["-subj", "/CN=deltaship test token service"]),
    { stdio: "ignore" },
  );
  const key = createPrivateKey(readFileSync(keyPath));
  const certDer = new X509Certificate(readFileSync(certPath)).raw.toString("base64");
  const users = new Map((options.users ?? []).map((u) => [u.username, u]));
  const refreshTokens = new Set(options.refreshTokens ?? []);
  const state = { requests: 0 };

  const issue = (subject: string, scopes: string[]) => {
    const access = scopes.flatMap((scope) => {
      const [type, name, actions] = scope.split(":");
      return type && name && actions ? [{ type, name, actions: actions.split(",") }] : [];
    });
    const now = Math.floor(Date.now() / 1000);
    const claims = {
      iss: TOKEN_ISSUER,
      sub: subject,
      aud: TOKEN_SERVICE,
      exp: now + TOKEN_SECONDS,
      nbf: now - 10,
      iat: now,
      jti: randomUUID(),
      access,
    };
    const header = { typ: "JWT", alg: "RS256", x5c: [certDer] };
    const payload = `${b64url(JSON.stringify(header))}.${b64url(JSON.stringify(claims))}`;
    return `${payload}.${sign("sha256", Buffer.from(payload), key).toString("base64url")}`;
  };

  const handle = async (request: IncomingMessage, response: ServerResponse) => {
    state.requests++;
    const url = new URL(request.url ?? "/", "http://token");
    let subject: string | undefined;
    let scopes: string[] = [];
    if (request.method === "POST") {
      const form = new URLSearchParams(await readBody(request));
      scopes = (form.get("scope") ?? "").split(" ").filter(Boolean);
      const token = form.get("refresh_token");
      if (form.get("grant_type") !== "refresh_token" || !token || !refreshTokens.has(token)) {
        return reply(response, 401, { error: "invalid_grant", details: "unknown refresh token" });
      }
      subject = "refresh-token-user";
    } else {
      scopes = url.searchParams.getAll("scope").flatMap((s) => s.split(" ").filter(Boolean));
      const header = request.headers.authorization ?? "";
      if (header.startsWith("Basic ")) {
        const [username, ...rest] = Buffer.from(header.slice(6), "base64").toString("utf8").split(":");
        if (!username || users.get(username)?.password !== rest.join(":")) {
          return reply(response, 401, {
            errors: [{ code: "UNAUTHORIZED", message: "bad username or password" }],
          });
        }
        subject = username;
      }
    }
    if (url.searchParams.get("service") !== null && url.searchParams.get("service") !== TOKEN_SERVICE) {
      return reply(response, 400, { errors: [{ code: "UNSUPPORTED", message: "unknown service" }] });
    }
    // Anonymous callers get a token that grants nothing, as ACR does with anonymous pull off.
    const granted = users.get(subject ?? "")?.pullOnly
      ? scopes.map((scope) => scope.replace(/^(repository:[^:]+):.*$/, "$1:pull"))
      : scopes;
    const token = issue(subject ?? "", subject ? granted : []);
    reply(response, 200, { token, access_token: token, expires_in: TOKEN_SECONDS });
  };

  const server: Server = createServer((request, response) => {
    handle(request, response).catch((error) => reply(response, 500, { error: String(error) }));
  });
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  const address = server.address();
  if (!address || typeof address === "string") throw new Error("token service did not get a port");
  return {
    realm: `http://127.0.0.1:${address.port}/token`,
    certPath,
    get requests() {
      return state.requests;
    },
    async close() {
      server.closeAllConnections();
      server.close();
      await once(server, "close").catch(() => {});
    },
  };
}

function b64url(text: string): string {
  return Buffer.from(text).toString("base64url");
}

async function readBody(request: IncomingMessage): Promise<string> {
  let body = "";
  for await (const chunk of request) {
    body += chunk;
    if (body.length > MAX_TOKEN_BODY_BYTES) throw new Error("token request body too large");
  }
  return body;
}

function reply(response: ServerResponse, status: number, body: unknown): void {
  response.writeHead(status, { "content-type": "application/json" });
  response.end(JSON.stringify(body));
}
