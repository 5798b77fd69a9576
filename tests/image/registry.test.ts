/**
 * The registry client against a real Debian `docker-registry` (no auth, htpasswd basic auth,
 * and token auth with the registry checking the JWTs), with skopeo as the independent peer.
 * Stand-ins, each because the real part cannot show the behaviour locally:
 * - a recording proxy (observation only: it forwards every byte unchanged) where a test must
 *   see which requests were made;
 * - the token service (tests/support/registry.ts) in place of ACR's token endpoint;
 * - a storage server that blob GETs are redirected to, as ACR redirects to Blob Storage;
 * - a server that drops kept-alive connections, as front ends with idle timeouts do.
 */
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { createHash } from "node:crypto";
import { appendFileSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import {
  createServer,
  request as httpRequest,
  type IncomingMessage,
  type Server,
  type ServerResponse,
} from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import { promisify } from "node:util";
import { WrittenSoFar } from "../../delta/bundle/scratch.js";
import { parseChallenge, TokenCache } from "../../delta/image/registry/auth.js";
import { HttpTransport } from "../../delta/image/registry/http.js";
import {
  type ImageToPush,
  mediaTypes,
  openRegistryImage,
  parseReference,
  pushImage,
  RegistryClient,
  RegistryError,
} from "../../delta/image/registry.js";
import type { LayerToWrite } from "../../delta/image/types.js";
import { buildTar } from "../../delta/tar/writer.js";
import { startRegistry, type TestRegistry } from "../support/registry.js";

const run = promisify(execFile);

function sha256(bytes: Uint8Array): string {
  return `sha256:${createHash("sha256").update(bytes).digest("hex")}`;
}

/** Bytes that do not compress to nothing, deterministic per seed. */
function noise(size: number, seed: number): Uint8Array {
  const out = new Uint8Array(size);
  let x = seed * 2654435761 + 1;
  for (let i = 0; i < size; i++) {
    x = (x * 1103515245 + 12345) >>> 0;
    out[i] = x >>> 24;
  }
  return out;
}

async function layerTar(seed: number, size = 20_000): Promise<Uint8Array> {
  return buildTar([
    { path: "app/", type: "directory" },
    { path: `app/data-${seed}.bin`, type: "file", content: noise(size, seed) },
    { path: "app/README", type: "file", content: new TextEncoder().encode(`layer ${seed}\n`) },
  ]);
}

function streamLayer(tar: Uint8Array, pieceSize = 7_000): LayerToWrite {
  return {
    diffId: sha256(tar),
    size: tar.length,
    async open() {
      return (async function* () {
        for (let at = 0; at < tar.length; at += pieceSize) yield tar.subarray(at, at + pieceSize);
      })();
    },
  };
}

function configFor(tars: Uint8Array[], architecture = "amd64", variant?: string): Uint8Array {
  return new TextEncoder().encode(
    JSON.stringify({
      architecture,
      os: "linux",
      ...(variant ? { variant } : {}),
      config: { Cmd: ["/app/run"] },
      rootfs: { type: "layers", diff_ids: tars.map(sha256) },
    }),
  );
}

function imageOf(tars: Uint8Array[], architecture = "amd64"): ImageToPush {
  return { config: configFor(tars, architecture), layers: tars.map((t) => streamLayer(t)) };
}

async function collect(stream: AsyncIterable<Uint8Array>): Promise<Uint8Array> {
  const parts: Buffer[] = [];
  for await (const chunk of stream) parts.push(Buffer.from(chunk));
  return new Uint8Array(Buffer.concat(parts));
}

interface Recorded {
  readonly method: string;
  readonly path: string;
  readonly contentRange?: string;
  readonly range?: string;
  readonly status: number;
}

/** Forwards one request to upstream and its answer back, unchanged; `answered` hears each status first. */
function forward(
  upstream: URL,
  req: IncomingMessage,
  res: ServerResponse,
  answered?: (status: number) => void,
) {
  const onward = httpRequest(
    { host: upstream.hostname, port: upstream.port, method: req.method, path: req.url, headers: req.headers },
    (answer) => {
      answered?.(answer.statusCode ?? 0);
      res.writeHead(answer.statusCode ?? 502, answer.headers);
      answer.pipe(res);
    },
  );
  onward.on("error", () => res.destroy());
  req.pipe(onward);
}

/** Starts `server` on a free port of 127.0.0.1 and gives its `host:port`. */
async function listenLocally(server: Server): Promise<string> {
  server.listen(0, "127.0.0.1");
  await new Promise((resolve) => server.once("listening", resolve));
  const address = server.address();
  assert.ok(address && typeof address === "object");
  return `127.0.0.1:${address.port}`;
}

/** Forwards to the registry unchanged and records each request (method, path, ranges, status). */
async function startRecordingProxy(
  target: TestRegistry,
): Promise<{ host: string; log: Recorded[]; stop(): void }> {
  const upstream = new URL(target.url);
  const log: Recorded[] = [];
  const server: Server = createServer((req, res) => {
    forward(upstream, req, res, (status) =>
      log.push({
        method: req.method ?? "",
        path: req.url ?? "",
        contentRange: req.headers["content-range"],
        range: req.headers.range,
        status,
      }),
    );
  });
  return {
    host: await listenLocally(server),
    log,
    stop() {
      server.closeAllConnections();
      server.close();
    },
  };
}

/** Runs fn with a recording proxy in front of the registry, and stops the proxy whatever happens. */
async function withRecordingProxy<T>(
  target: TestRegistry,
  fn: (proxy: Awaited<ReturnType<typeof startRecordingProxy>>) => Promise<T>,
): Promise<T> {
  const proxy = await startRecordingProxy(target);
  try {
    return await fn(proxy);
  } finally {
    proxy.stop();
  }
}

async function skopeo(args: string[]): Promise<string> {
  const { stdout } = await run("skopeo", args, { maxBuffer: 64 * 1024 * 1024 });
  return stdout;
}

/** The manifest bytes skopeo reads for an image in a plain-http registry. */
function skopeoRawManifest(reference: string): Promise<string> {
  return skopeo(["inspect", "--tls-verify=false", "--raw", `docker://${reference}`]);
}

/** skopeo copy out of a plain-http registry, under a policy file that accepts any image. */
async function skopeoCopy(policy: string, from: string, to: string, options: string[] = []): Promise<void> {
  await skopeo(["--policy", policy, "copy", "--src-tls-verify=false", ...options, from, to]);
}

describe("registry client against docker-registry", () => {
  let registry: TestRegistry;
  let work: string;
  before(async () => {
    registry = await startRegistry();
    work = mkdtempSync(join(tmpdir(), "deltaship-registry-test-"));
  });
  after(async () => {
    await registry?.stop();
    rmSync(work, { recursive: true, force: true });
  });

  test("parses references with host, port, tag and digest, and picks http only for loopback", () => {
    const digest = `sha256:${"ab".repeat(32)}`;
    assert.deepEqual(parseReference(`127.0.0.1:5000/apps/telemetry:1.4@${digest}`), {
      registry: "127.0.0.1:5000",
      baseUrl: "http://127.0.0.1:5000",
      repository: "apps/telemetry",
      tag: "1.4",
      digest,
    });
    assert.deepEqual(parseReference("myacr.azurecr.io/edge/agent"), {
      registry: "myacr.azurecr.io",
      baseUrl: "https://myacr.azurecr.io",
      repository: "edge/agent",
      tag: undefined,
      digest: undefined,
    });
    assert.equal(parseReference("localhost:5000/x:1").baseUrl, "http://localhost:5000");
    assert.equal(
      parseReference("edge-registry:5000/x:1", { insecure: true }).baseUrl,
      "http://edge-registry:5000",
    );
    assert.throws(() => parseReference("ubuntu:22.04"), /has no registry host; write it as host\[:port\]/);
    assert.throws(() => parseReference("h.io/Apps/x"), /invalid repository "Apps\/x"/);
    assert.throws(() => parseReference("h.io/x@sha256:12"), /expected sha256:<64 hex>/);
  });

  test("pushes an image uncompressed (digest = diff_id) and reads it back byte for byte; skopeo agrees", async () => {
    const tars = [await layerTar(1), await layerTar(2)];
    const image = imageOf(tars);
    const pushed = await pushImage(`${registry.host}/apps/plain:1.0`, image);
    assert.deepEqual(
      pushed.layers.map((l) => [l.digest, l.size, l.mediaType, l.outcome]),
      tars.map((t) => [sha256(t), t.length, mediaTypes.OCI_LAYER, "uploaded"]),
    );
    assert.equal(pushed.manifestDigest, sha256(pushed.manifest));
    assert.equal(pushed.reference, `${registry.host}/apps/plain:1.0@${pushed.manifestDigest}`);

    const read = await openRegistryImage(`${registry.host}/apps/plain:1.0`);
    assert.equal(read.info.manifestDigest, pushed.manifestDigest);
    assert.equal(read.info.configDigest, sha256(image.config));
    assert.deepEqual(read.info.config, image.config);
    assert.deepEqual(
      read.info.layers,
      tars.map((t) => ({
        digest: sha256(t),
        size: t.length,
        mediaType: mediaTypes.OCI_LAYER,
        compression: "none",
        diffId: sha256(t),
      })),
    );
    for (const [i, tar] of tars.entries()) {
      assert.deepEqual(await collect(await read.openLayerTar(i)), tar);
      assert.deepEqual(await collect(await read.openLayerBlob(i)), tar);
    }

    // A manifest that calls the same uncompressed blobs `tar.gzip`, as a pusher reusing blobs
    // the registry already holds may write: the layers still read as their tars.
    const client = new RegistryClient(registry.host);
    const mislabelled = new TextEncoder().encode(
      JSON.stringify({
        schemaVersion: 2,
        mediaType: "application/vnd.docker.distribution.manifest.v2+json",
        config: {
          mediaType: "application/vnd.docker.container.image.v1+json",
          size: image.config.length,
          digest: sha256(image.config),
        },
        layers: tars.map((t) => ({
          mediaType: "application/vnd.docker.image.rootfs.diff.tar.gzip",
          size: t.length,
          digest: sha256(t),
        })),
      }),
    );
    await client.putManifest(
      "apps/plain",
      "mislabelled",
      mislabelled,
      "application/vnd.docker.distribution.manifest.v2+json",
    );
    const relabelled = await openRegistryImage(`${registry.host}/apps/plain:mislabelled`);
    assert.equal(relabelled.info.layers[0]!.compression, "gzip");
    for (const [i, tar] of tars.entries())
      assert.deepEqual(await collect(await relabelled.openLayerTar(i)), tar);

    const raw = await skopeoRawManifest(`${registry.host}/apps/plain:1.0`);
    assert.equal(sha256(Buffer.from(raw)), pushed.manifestDigest);
    const inspected = JSON.parse(
      await skopeo(["inspect", "--tls-verify=false", `docker://${registry.host}/apps/plain:1.0`]),
    );
    assert.equal(inspected.Digest, pushed.manifestDigest);
    assert.deepEqual(inspected.Layers, tars.map(sha256));
    assert.equal(inspected.Architecture, "amd64");
  });

  test("pushing the same image again uploads nothing: HEAD finds every blob", async () => {
    const tars = [await layerTar(1), await layerTar(2)];
    await withRecordingProxy(registry, async (proxy) => {
      const pushed = await pushImage(`${proxy.host}/apps/plain:1.0-again`, imageOf(tars));
      assert.equal(pushed.config.outcome, "exists");
      assert.deepEqual(
        pushed.layers.map((l) => l.outcome),
        ["exists", "exists"],
      );
      assert.deepEqual(
        proxy.log.map((r) => `${r.method} ${r.status}`),
        ["HEAD 200", "HEAD 200", "HEAD 200", "PUT 201"],
      );
    });
  });

  test("uploads a layer larger than a chunk as PATCHes with Content-Range, then PUT ?digest=", async () => {
    const tar = await layerTar(3, 100_000);
    await withRecordingProxy(registry, async (proxy) => {
      const chunkSize = 32 * 1024;
      const pushed = await pushImage(`${proxy.host}/apps/chunked:1`, imageOf([tar]), { chunkSize });
      assert.equal(pushed.layers[0]!.outcome, "uploaded");
      const layerRequests = proxy.log.filter((r) => r.method === "PATCH" || r.method === "PUT");
      const expectedRanges: string[] = [];
      for (let at = 0; at < tar.length; at += chunkSize) {
        expectedRanges.push(`${at}-${Math.min(at + chunkSize, tar.length) - 1}`);
      }
      // The config (small) goes up in one PUT; the layer in PATCHes; the manifest last.
      assert.deepEqual(
        layerRequests.map((r) => `${r.method} ${r.contentRange ?? ""} ${r.status}`),
        ["PUT  201", ...expectedRanges.map((range) => `PATCH ${range} 202`), "PUT  201", "PUT  201"],
      );
      assert.match(layerRequests.at(-2)!.path, new RegExp(`digest=${encodeURIComponent(sha256(tar))}`));
      assert.match(layerRequests.at(-1)!.path, /^\/v2\/apps\/chunked\/manifests\/1$/);
      const read = await openRegistryImage(`${registry.host}/apps/chunked:1`);
      assert.deepEqual(await collect(await read.openLayerTar(0)), tar);
    });
  });

  test("mounts blobs from another repository instead of uploading them", async () => {
    const base = await layerTar(10);
    const app = await layerTar(11);
    await pushImage(`${registry.host}/apps/base:1`, imageOf([base]));
    await withRecordingProxy(registry, async (proxy) => {
      const pushed = await pushImage(`${proxy.host}/apps/derived:1`, imageOf([base, app]), {
        mountFrom: ["apps/base"],
      });
      assert.deepEqual(
        pushed.layers.map((l) => l.outcome),
        ["mounted", "uploaded"],
      );
      // Config: not in apps/base (declined); base layer: mounted; app layer: declined. Layers are
      // placed side by side, so their requests come in any order.
      const mountOf = (digest: string) =>
        proxy.log
          .filter(
            (r) =>
              r.method === "POST" && r.path.includes(`mount=${encodeURIComponent(digest)}&from=apps%2Fbase`),
          )
          .map((r) => r.status);
      assert.deepEqual(mountOf(sha256(configFor([base, app]))), [202]);
      assert.deepEqual(mountOf(sha256(base)), [201]);
      assert.deepEqual(mountOf(sha256(app)), [202]);
      // Declined mounts leave no open upload behind: each is cancelled.
      assert.equal(proxy.log.filter((r) => r.method === "DELETE").length, 2);

      // An existing blob referenced by digest alone is mounted from the repository named with it.
      const baseImage = await openRegistryImage(`${registry.host}/apps/base:1`);
      const again = await pushImage(
        `${proxy.host}/apps/derived2:1`,
        { config: configFor([base]), layers: [{ ...baseImage.info.layers[0]!, repository: "apps/base" }] },
        { mountFrom: ["apps/base"] },
      );
      assert.deepEqual(
        again.layers.map((l) => l.outcome),
        ["mounted"],
      );
      const read = await openRegistryImage(`${registry.host}/apps/derived2:1`);
      assert.deepEqual(await collect(await read.openLayerTar(0)), base);
    });
  });

  test("a mounted layer is named as the manifest's format names it", () => {
    const { layerMediaTypeFor } = mediaTypes;
    const docker = "application/vnd.docker.image.rootfs.diff.tar";
    const oci = "application/vnd.oci.image.layer.v1.tar";
    assert.equal(layerMediaTypeFor(`${docker}.gzip`, "oci"), `${oci}+gzip`);
    assert.equal(layerMediaTypeFor(docker, "oci"), oci);
    assert.equal(layerMediaTypeFor(`${oci}+gzip`, "docker"), `${docker}.gzip`);
    assert.equal(layerMediaTypeFor(`${oci}+gzip`, "oci"), `${oci}+gzip`);
    assert.equal(layerMediaTypeFor(`${oci}+zstd`, "docker"), undefined, "Docker has no name for zstd");
    const nondistributable = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip";
    assert.equal(layerMediaTypeFor(nondistributable, "oci"), nondistributable);
    assert.equal(layerMediaTypeFor(nondistributable, "docker"), undefined);
  });

  test("an existing layer that cannot be mounted is uploaded from the stream given with it", async () => {
    const base = await layerTar(12);
    const app = await layerTar(13);
    await pushImage(`${registry.host}/apps/held:1`, imageOf([base]));
    const held = await openRegistryImage(`${registry.host}/apps/held:1`);
    const blob = held.info.layers[0]!;
    // Mountable: the blob is reused, the stream is not read.
    const mounted = await pushImage(`${registry.host}/apps/reuse:1`, {
      config: configFor([base, app]),
      layers: [{ ...blob, repository: "apps/held", upload: streamLayer(base) }, streamLayer(app)],
    });
    assert.deepEqual(
      mounted.layers.map((l) => l.outcome),
      ["mounted", "uploaded"],
    );
    // Named with a repository that lacks it (as a layer of an image in another registry would be):
    // the stream goes up instead, verified against the diff_id.
    const fallback = await pushImage(`${registry.host}/apps/fallback:1`, {
      config: configFor([base]),
      layers: [{ ...blob, digest: sha256(app), repository: "apps/nowhere", upload: streamLayer(base) }],
    });
    assert.deepEqual(
      fallback.layers.map((l) => [l.outcome, l.digest]),
      [["uploaded", sha256(base)]],
    );
    const read = await openRegistryImage(`${registry.host}/apps/fallback:1`);
    assert.deepEqual(await collect(await read.openLayerTar(0)), base);
    await assert.rejects(
      pushImage(`${registry.host}/apps/nofallback:1`, {
        config: configFor([base]),
        layers: [{ ...blob, digest: sha256(app), repository: "apps/nowhere" }],
      }),
      /neither in apps\/nofallback nor mountable from \[apps\/nowhere\]; nothing was pushed/,
    );
  });

  test("refuses to commit a layer whose stream does not hash to its diff_id, and pushes no manifest", async () => {
    const good = await layerTar(20);
    const bad = await layerTar(21);
    const lying: LayerToWrite = { ...streamLayer(bad), diffId: sha256(good), size: bad.length };
    await assert.rejects(
      pushImage(`${registry.host}/apps/lying:1`, { config: configFor([good]), layers: [lying] }),
      (error: RegistryError) =>
        error instanceof RegistryError &&
        error.message.includes(
          `the stream hashes to ${sha256(bad)}, not ${sha256(good)}; nothing was committed`,
        ),
    );
    const client = new RegistryClient(registry.host);
    assert.equal(await client.blobSize("apps/lying", sha256(bad)), undefined);
    assert.equal(await client.blobSize("apps/lying", sha256(good)), undefined);
    assert.equal(await client.resolveDigest("apps/lying", "1"), undefined);

    // Gzip on the way up: the diff_id is checked on the uncompressed side, before the PUT.
    await assert.rejects(
      pushImage(
        `${registry.host}/apps/lying-gz:1`,
        { config: configFor([good]), layers: [lying] },
        { compression: "gzip" },
      ),
      new RegExp(
        `layer 0 tar \\(diff_id\\): the ${bad.length} bytes received hash to ${sha256(bad)}, not ${sha256(good)}; nothing was committed`,
      ),
    );
    assert.deepEqual(await client.listTags("apps/lying-gz"), []);
  });

  test("places layers side by side, keeps their order in the manifest, and pushes none after a failure", async () => {
    const tars = [await layerTar(60), await layerTar(61), await layerTar(62)];
    // Layer 0's stream waits until layer 1's is opened: placed one after another, it would wait
    // out the bounded timeout instead.
    let openedSecond!: () => void;
    const second = new Promise<void>((resolve) => {
      openedSecond = resolve;
    });
    let released: "by layer 1" | "by the timeout" | undefined;
    const waiting: LayerToWrite = {
      ...streamLayer(tars[0]!),
      async open() {
        let timer: NodeJS.Timeout | undefined;
        released = await Promise.race([
          second.then(() => "by layer 1" as const),
          new Promise<"by the timeout">((resolve) => {
            timer = setTimeout(() => resolve("by the timeout"), 10_000);
          }),
        ]);
        clearTimeout(timer);
        return streamLayer(tars[0]!).open();
      },
    };
    const telling: LayerToWrite = {
      ...streamLayer(tars[1]!),
      async open() {
        openedSecond();
        return streamLayer(tars[1]!).open();
      },
    };
    const pushed = await pushImage(`${registry.host}/apps/side-by-side:1`, {
      config: configFor(tars),
      layers: [waiting, telling, streamLayer(tars[2]!)],
    });
    assert.equal(released, "by layer 1");
    assert.deepEqual(
      pushed.layers.map((l) => l.digest),
      tars.map(sha256),
    );
    const read = await openRegistryImage(`${registry.host}/apps/side-by-side:1`);
    for (const [i, tar] of tars.entries()) assert.deepEqual(await collect(await read.openLayerTar(i)), tar);

    // The middle layer lies about its content while the others go up: its error, and no manifest.
    const lying: LayerToWrite = { ...streamLayer(tars[2]!), diffId: sha256(tars[1]!), size: tars[2]!.length };
    await assert.rejects(
      pushImage(`${registry.host}/apps/side-by-side-bad:1`, {
        config: configFor(tars),
        layers: [streamLayer(tars[0]!), lying, streamLayer(tars[2]!)],
      }),
      new RegExp(`the stream hashes to ${sha256(tars[2]!)}, not ${sha256(tars[1]!)}; nothing was committed`),
    );
    const client = new RegistryClient(registry.host);
    assert.deepEqual(await client.listTags("apps/side-by-side-bad"), []);
    assert.equal(await client.blobSize("apps/side-by-side-bad", sha256(tars[1]!)), undefined);
    client.close();
  });

  test("a chunked upload that fails at any point commits nothing", async () => {
    const good = await layerTar(26, 200_000);
    const bad = Uint8Array.from(good, (b, i) => (i === 150_000 ? b ^ 1 : b));
    const chunkSize = 16 * 1024;
    const pieces = function* (bytes: Uint8Array) {
      for (let at = 0; at < bytes.length; at += 5_000) yield bytes.subarray(at, at + 5_000);
    };
    await withRecordingProxy(registry, async (proxy) => {
      const client = new RegistryClient(proxy.host, { chunkSize });
      // Claimed verified but wrong: not hashed here, so the registry's own check refuses it.
      await assert.rejects(
        client.uploadBlob("apps/chunked-bad", pieces(bad), {
          digest: sha256(good),
          size: bad.length,
          verified: true,
        }),
        (error: RegistryError) => error instanceof RegistryError && error.codes.includes("DIGEST_INVALID"),
      );
      assert.equal(await client.blobSize("apps/chunked-bad", sha256(good)), undefined);
      assert.equal(await client.blobSize("apps/chunked-bad", sha256(bad)), undefined);

      // The stream fails midway, after several PATCHes: the open upload is cancelled.
      const before = proxy.log.filter((r) => r.method === "DELETE").length;
      const failing = async function* () {
        let n = 0;
        for (const piece of pieces(good)) {
          if (++n === 20) throw new Error("disk on fire");
          yield piece;
        }
      };
      await assert.rejects(
        client.uploadBlob("apps/chunked-fail", failing(), { digest: sha256(good), size: good.length }),
        /disk on fire/,
      );
      assert.equal(proxy.log.filter((r) => r.method === "DELETE").length, before + 1);
      assert.equal(await client.blobSize("apps/chunked-fail", sha256(good)), undefined);
    });
  });

  test("a layer in a local file goes up in PATCHes streamed from the file, read again when a PATCH is sent again", async () => {
    const tar = await layerTar(27, 150_000);
    // The tar sits inside a larger file, as a layer inside a docker-archive does.
    const path = join(work, "held-inside.bin");
    writeFileSync(path, Buffer.concat([Buffer.from(noise(1000, 9)), tar, Buffer.from(noise(500, 8))]));
    const layer: LayerToWrite = {
      diffId: sha256(tar),
      size: tar.length,
      async open() {
        throw new Error("the file's stream is not wanted when the file is given");
      },
      local: { location: { path, offset: 1000, size: tar.length }, verified: true },
    };
    // Stand-in for an auth challenge in the middle of an upload (a token that expired): the
    // proxy reads the first PATCH whole and answers 401; the client must send that range again.
    let challenged = 0;
    await withRecordingProxy(registry, async (proxy) => {
      const fileChunkSize = 48 * 1024;
      const pushed = await pushImage(
        `${proxy.host}/apps/from-file:1`,
        {
          config: configFor([tar]),
          layers: [layer],
        },
        { chunkSize: 16 * 1024, fileChunkSize },
      );
      assert.equal(pushed.layers[0]!.outcome, "uploaded");
      const expectedRanges: string[] = [];
      for (let at = 0; at < tar.length; at += fileChunkSize) {
        expectedRanges.push(`${at}-${Math.min(at + fileChunkSize, tar.length) - 1}`);
      }
      assert.deepEqual(
        proxy.log.filter((r) => r.method === "PATCH").map((r) => `${r.contentRange} ${r.status}`),
        expectedRanges.map((range) => `${range} 202`),
      );
      const read = await openRegistryImage(`${registry.host}/apps/from-file:1`);
      assert.deepEqual(await collect(await read.openLayerTar(0)), tar);
    });
    const upstream = new URL(registry.url);
    const server = createServer((req, res) => {
      if (req.method === "PATCH" && challenged === 0) {
        challenged++;
        req.resume();
        req.on("end", () => {
          res.writeHead(401, { "www-authenticate": 'Basic realm="registry"', "content-length": "0" });
          res.end();
        });
        return;
      }
      forward(upstream, req, res);
    });
    const host = await listenLocally(server);
    try {
      const client = new RegistryClient(host, {
        credentials: { username: "device", password: "secret" },
        chunkSize: 16 * 1024,
        fileChunkSize: 64 * 1024,
      });
      const blob = await client.uploadFile("apps/from-file-again", layer.local!.location, {
        digest: layer.diffId,
        verified: true,
      });
      assert.equal(challenged, 1);
      assert.deepEqual(blob, { digest: sha256(tar), size: tar.length, outcome: "uploaded" });
      assert.deepEqual(await collect(await client.openBlob("apps/from-file-again", sha256(tar))), tar);
      client.close();
    } finally {
      server.closeAllConnections();
      server.close();
    }
  });

  test("an upload follows a file while it is written and commits only once told the file is checked", async () => {
    const blob = await layerTar(29, 300_000);
    const path = join(work, "growing.tar");
    writeFileSync(path, blob.subarray(0, 100_000));
    const progress = new WrittenSoFar("the growing test file");
    progress.advance(100_000);
    let checked!: () => void;
    const check = new Promise<void>((resolve) => {
      checked = resolve;
    });
    const location = { path, offset: 0, size: blob.length };
    /** Waits (bounded) until the proxy has seen `count` PATCHes. */
    const patches = async (log: Recorded[], count: number) => {
      for (let i = 0; i < 500 && log.filter((r) => r.method === "PATCH").length < count; i++)
        await new Promise((resolve) => setTimeout(resolve, 10));
      return log.filter((r) => r.method === "PATCH").map((r) => r.contentRange);
    };
    await withRecordingProxy(registry, async (proxy) => {
      const client = new RegistryClient(proxy.host, { chunkSize: 16 * 1024, fileChunkSize: 64 * 1024 });
      const upload = client.uploadFile("apps/growing", location, {
        digest: sha256(blob),
        verified: true,
        written: (end) => progress.until(end),
        beforeCommit: () => check,
      });
      // The first 64 KiB are in the file and go; the second range waits for bytes not yet written.
      assert.deepEqual(await patches(proxy.log, 1), ["0-65535"]);
      await new Promise((resolve) => setTimeout(resolve, 100));
      assert.deepEqual(await patches(proxy.log, 1), ["0-65535"]);
      appendFileSync(path, blob.subarray(100_000));
      progress.advance(blob.length);
      progress.end();
      assert.equal((await patches(proxy.log, 5)).length, 5);
      // Every byte is sent, but nothing is committed until the check says so.
      await new Promise((resolve) => setTimeout(resolve, 100));
      assert.equal(
        proxy.log.some((r) => r.method === "PUT"),
        false,
      );
      assert.equal(await client.blobSize("apps/growing", sha256(blob)), undefined);
      checked();
      assert.deepEqual(await upload, { digest: sha256(blob), size: blob.length, outcome: "uploaded" });
      assert.deepEqual(await collect(await client.openBlob("apps/growing", sha256(blob))), blob);

      // The file's writer fails midway: the upload is cancelled with its reason, nothing committed.
      const failing = new WrittenSoFar("the failing test file");
      failing.advance(100_000);
      const deletes = proxy.log.filter((r) => r.method === "DELETE").length;
      const refused = client.uploadFile("apps/growing-bad", location, {
        digest: sha256(blob),
        verified: true,
        written: (end) => failing.until(end),
      });
      failing.end(new Error("the rebuilt layer does not hash to its diff_id"));
      await assert.rejects(
        refused,
        /reading the bytes to send failed \(the rebuilt layer does not hash to its diff_id\)/,
      );
      assert.equal(proxy.log.filter((r) => r.method === "DELETE").length, deletes + 1);
      assert.equal(await client.blobSize("apps/growing-bad", sha256(blob)), undefined);
      client.close();
    });
  });

  test("the pieces of one streamed PATCH share a read buffer and still arrive intact", async () => {
    // 1 MiB pieces, 2 MiB PATCHes: each piece is handed to the socket before the next is read
    // into the same buffer. A piece overwritten too early would fail the registry's digest check.
    const blob = noise(3_500_000, 5);
    const path = join(work, "big-layer.bin");
    writeFileSync(path, blob);
    const client = new RegistryClient(registry.host, {
      chunkSize: 64 * 1024,
      fileChunkSize: 2 * 1024 * 1024,
    });
    try {
      await client.uploadFile(
        "apps/from-file-big",
        { path, offset: 0, size: blob.length },
        {
          digest: sha256(blob),
          verified: true,
        },
      );
      assert.deepEqual(await collect(await client.openBlob("apps/from-file-big", sha256(blob))), blob);
    } finally {
      client.close();
    }
  });

  test("a streamed PATCH that the server cuts off fails cleanly instead of waiting", async () => {
    // Stand-in for a front end that answers an upload early and drops the connection (a size
    // limit, a restart): the body's writes can never finish, and the upload must fail, not hang.
    const blob = noise(3_000_000, 6);
    const path = join(work, "cut-off.bin");
    writeFileSync(path, blob);
    const upstream = new URL(registry.url);
    const server = createServer((req, res) => {
      if (req.method === "PATCH") {
        res.writeHead(500, { "content-length": "0", connection: "close" });
        res.end();
        req.socket.destroy();
        return;
      }
      forward(upstream, req, res);
    });
    const client = new RegistryClient(await listenLocally(server), {
      chunkSize: 64 * 1024,
      fileChunkSize: 2 * 1024 * 1024,
    });
    try {
      await assert.rejects(
        client.uploadFile(
          "apps/cut-off",
          { path, offset: 0, size: blob.length },
          { digest: sha256(blob), verified: true },
        ),
        (error: RegistryError) =>
          error instanceof RegistryError && /PATCH bytes 0-2097151/.test(error.message),
      );
      assert.equal(await new RegistryClient(registry.host).blobSize("apps/cut-off", sha256(blob)), undefined);
    } finally {
      client.close();
      server.closeAllConnections();
      server.close();
    }
  });

  test("a layer file that is not what it claims, or ends early, commits nothing", async () => {
    const good = await layerTar(28, 120_000);
    const bad = Uint8Array.from(good, (b, i) => (i === 100_000 ? b ^ 1 : b));
    const badPath = join(work, "bad-layer.tar");
    writeFileSync(badPath, bad);
    const location = { path: badPath, offset: 0, size: bad.length };
    await withRecordingProxy(registry, async (proxy) => {
      const client = new RegistryClient(proxy.host, { chunkSize: 16 * 1024, fileChunkSize: 32 * 1024 });
      // Not hashed yet: hashed first, and refused before any request.
      await assert.rejects(
        client.uploadFile("apps/file-bad", location, { digest: sha256(good) }),
        new RegExp(`the file hashes to ${sha256(bad)}, not ${sha256(good)}; nothing was sent`),
      );
      assert.equal(proxy.log.length, 0);
      // Claimed hashed but wrong: the registry's own check refuses it and the upload is cancelled.
      await assert.rejects(
        client.uploadFile("apps/file-bad", location, { digest: sha256(good), verified: true }),
        (error: RegistryError) => error instanceof RegistryError && error.codes.includes("DIGEST_INVALID"),
      );
      assert.equal(await client.blobSize("apps/file-bad", sha256(good)), undefined);
      assert.equal(await client.blobSize("apps/file-bad", sha256(bad)), undefined);
      // The file ends before the size given (truncated behind our back): cancelled, nothing committed.
      const deletes = proxy.log.filter((r) => r.method === "DELETE").length;
      await assert.rejects(
        client.uploadFile(
          "apps/file-short",
          { path: badPath, offset: 0, size: bad.length + 70_000 },
          { digest: sha256(good), verified: true },
        ),
        new RegExp(
          `PATCH bytes 98304-131071: reading the bytes to send failed \\(.*bad-layer\\.tar ends at byte ${bad.length}, .* the file is truncated\\)`,
        ),
      );
      assert.equal(proxy.log.filter((r) => r.method === "DELETE").length, deletes + 1);
      assert.equal(await client.blobSize("apps/file-short", sha256(good)), undefined);
      client.close();
    });
  });

  test("refuses a config whose diff_ids do not match the layers before pushing anything", async () => {
    const a = await layerTar(22);
    const b = await layerTar(23);
    await assert.rejects(
      pushImage(`${registry.host}/apps/mismatch:1`, { config: configFor([b]), layers: [streamLayer(a)] }),
      /do not match the layers given .*nothing was pushed/,
    );
    assert.equal(await new RegistryClient(registry.host).blobSize("apps/mismatch", sha256(a)), undefined);
  });

  test("refuses to read an image whose manifest and config disagree on the layers", async () => {
    const a = await layerTar(24);
    const b = await layerTar(25);
    const client = new RegistryClient(registry.host);
    const config = configFor([a, b]);
    await client.uploadBlob("apps/inconsistent", [config]);
    await client.uploadBlob("apps/inconsistent", [a]);
    const manifest = new TextEncoder().encode(
      JSON.stringify({
        schemaVersion: 2,
        mediaType: mediaTypes.OCI_MANIFEST,
        config: { mediaType: mediaTypes.OCI_CONFIG, digest: sha256(config), size: config.length },
        layers: [{ mediaType: mediaTypes.OCI_LAYER, digest: sha256(a), size: a.length }],
      }),
    );
    await client.putManifest("apps/inconsistent", "1", manifest, mediaTypes.OCI_MANIFEST);
    await assert.rejects(
      openRegistryImage(`${registry.host}/apps/inconsistent:1`),
      new RegExp(
        `^RegistryError: ${registry.host}/apps/inconsistent:1: the manifest lists 1 layers but the config's rootfs.diff_ids has 2; the image is inconsistent$`,
      ),
    );
  });

  test("pushes gzip-compressed layers when asked and reads them back through gunzip", async () => {
    const tars = [await layerTar(30), await layerTar(31)];
    const pushed = await pushImage(`${registry.host}/apps/gz:1`, imageOf(tars), {
      compression: "gzip",
      chunkSize: 8 * 1024,
    });
    assert.deepEqual(
      pushed.layers.map((l) => [l.mediaType, l.diffId]),
      tars.map((t) => [mediaTypes.OCI_LAYER_GZIP, sha256(t)]),
    );
    const read = await openRegistryImage(`${registry.host}/apps/gz:1`);
    for (const [i, tar] of tars.entries()) {
      const layer = read.info.layers[i]!;
      assert.equal(layer.compression, "gzip");
      assert.notEqual(layer.digest, sha256(tar));
      const blob = await collect(await read.openLayerBlob(i));
      assert.equal(sha256(blob), layer.digest);
      assert.equal(blob.length, layer.size);
      assert.deepEqual(await collect(await read.openLayerTar(i)), tar);
    }
    const raw = await skopeoRawManifest(`${registry.host}/apps/gz:1`);
    assert.equal(sha256(Buffer.from(raw)), pushed.manifestDigest);
    assert.deepEqual(
      JSON.parse(raw).layers.map((l: { mediaType: string; digest: string }) => [l.mediaType, l.digest]),
      pushed.layers.map((l) => [l.mediaType, l.digest]),
    );
  });

  test("reads images skopeo re-pushed with zstd layers and as Docker schema 2 with gzip (a peer's uploads)", async () => {
    const tars = [await layerTar(40), await layerTar(41)];
    await pushImage(`${registry.host}/apps/forzstd:1`, imageOf(tars));
    const policy = join(work, "policy.json");
    writeFileSync(policy, JSON.stringify({ default: [{ type: "insecureAcceptAnything" }] }));
    await skopeoCopy(
      policy,
      `docker://${registry.host}/apps/forzstd:1`,
      `docker://${registry.host}/peer/zstd:1`,
      ["--dest-tls-verify=false", "--dest-compress-format", "zstd"],
    );
    const read = await openRegistryImage(`${registry.host}/peer/zstd:1`);
    assert.deepEqual(
      read.info.layers.map((l) => [l.compression, l.mediaType, l.diffId]),
      tars.map((t) => ["zstd", mediaTypes.OCI_LAYER_ZSTD, sha256(t)]),
    );
    for (const [i, tar] of tars.entries()) assert.deepEqual(await collect(await read.openLayerTar(i)), tar);

    // Docker schema 2 with gzip layers, as skopeo writes them for v2s2. Into a second registry:
    // into this one skopeo would reuse the uncompressed blobs it finds here.
    const other = await startRegistry();
    try {
      await skopeoCopy(
        policy,
        `docker://${registry.host}/apps/forzstd:1`,
        `docker://${other.host}/peer/docker:1`,
        ["--dest-tls-verify=false", "--format", "v2s2", "--dest-compress-format", "gzip"],
      );
      const docker = await openRegistryImage(`${other.host}/peer/docker:1`);
      assert.equal(docker.manifest.mediaType, mediaTypes.DOCKER_MANIFEST);
      assert.deepEqual(
        docker.info.layers.map((l) => [l.compression, l.mediaType, l.diffId]),
        tars.map((t) => ["gzip", mediaTypes.DOCKER_LAYER_GZIP, sha256(t)]),
      );
      for (const [i, tar] of tars.entries())
        assert.deepEqual(await collect(await docker.openLayerTar(i)), tar);
    } finally {
      await other.stop();
    }

    // And the other way: skopeo copies what we pushed into a directory (dir: keeps blobs as stored).
    const layout = join(work, "dir");
    await skopeoCopy(policy, `docker://${registry.host}/apps/forzstd:1`, `dir:${layout}`);
    for (const tar of tars) {
      const hex = sha256(tar).slice(7);
      assert.deepEqual(new Uint8Array(readFileSync(join(layout, hex))), tar);
    }
  });

  test("serves an uncompressed layer as a random-access source over Range reads with a bounded cache", async () => {
    const tar = await layerTar(50, 300_000);
    await pushImage(`${registry.host}/apps/ranged:1`, imageOf([tar]));
    const image = await openRegistryImage(`${registry.host}/apps/ranged:1`);
    const source = image.openLayerSource(0, { blockSize: 16 * 1024, cacheBlocks: 4 });
    assert.equal(source.size, tar.length);
    const block = 16 * 1024;
    // [position, length, Range requests made so far]; read-ahead is cacheBlocks / 2 = 2 blocks.
    const reads: [number, number, number][] = [
      [0, 512, 1], // blocks 0-1: block 0 plus one ahead
      [100, 1000, 1], // cached
      [block - 10, 20, 1], // straddles blocks 0 and 1: both cached thanks to read-ahead
      [2 * block + 7, 100, 2], // block 2 is where the last fetch ended: blocks 2-3
      [tar.length - 700, 700, 3], // the short last block, no read-ahead past the end
      [50_000, 4 * block + 1, 4], // spans 5 blocks, more than the cache holds: one straight read
      [123_457, 3, 5], // block 7: straight reads are not cached
      [2 * block + 5, 10, 5], // block 2 is still cached (0 and 1 were evicted first)
      [0, 10, 6], // block 0 was evicted
    ];
    for (const [position, length, requests] of reads) {
      const into = new Uint8Array(length + 8);
      await source.read(position, into, 8, length);
      assert.deepEqual(
        into.subarray(8),
        tar.subarray(position, position + length),
        `read ${length} at ${position}`,
      );
      assert.equal(source.requests, requests, `Range requests after reading ${length} at ${position}`);
    }
    // A sequential scan in small reads fetches 16 blocks per request.
    const scan = image.openLayerSource(0, { blockSize: 4096, cacheBlocks: 64 });
    const scanned = new Uint8Array(tar.length);
    for (let at = 0; at < tar.length; at += 1000) {
      await scan.read(at, scanned, at, Math.min(1000, tar.length - at));
    }
    assert.deepEqual(scanned, tar);
    assert.equal(scan.requests, Math.ceil(Math.ceil(tar.length / 4096) / 16));
    await assert.rejects(
      source.read(tar.length - 10, new Uint8Array(20), 0, 20),
      /read of 20 bytes at .* is past the end of the .*-byte blob/,
    );

    const gz = await openRegistryImage(`${registry.host}/apps/gz:1`);
    assert.throws(() => gz.openLayerSource(0), /stored gzip-compressed, so it has no random access/);
  });

  test("refuses a blob and a manifest whose bytes were tampered with in the registry's storage", async () => {
    const tar = await layerTar(60);
    const pushed = await pushImage(`${registry.host}/apps/tampered:1`, imageOf([tar]));
    const path = registry.blobPath(sha256(tar));
    const bytes = readFileSync(path);
    bytes[1000] ^= 0xff;
    writeFileSync(path, bytes);

    const image = await openRegistryImage(`${registry.host}/apps/tampered:1`);
    for (const open of [() => image.openLayerBlob(0), () => image.openLayerTar(0)]) {
      await assert.rejects(
        collect(await open()),
        new RegExp(
          `hash to sha256:[0-9a-f]{64}, not ${sha256(tar)}; the registry's copy is corrupt or was tampered`,
        ),
      );
    }

    const manifestPath = registry.blobPath(pushed.manifestDigest);
    const manifest = readFileSync(manifestPath);
    writeFileSync(manifestPath, Buffer.from(manifest.toString("utf8").replace("{", "{ ")));
    await assert.rejects(
      openRegistryImage(`${registry.host}/apps/tampered@${pushed.manifestDigest}`),
      /the manifest's bytes hash to sha256:[0-9a-f]{64}, not sha256:.*corrupt or substituted manifest/,
    );
  });

  test("chooses the platform's image from an OCI index and a Docker manifest list", async () => {
    const amd = [await layerTar(70)];
    const arm = [await layerTar(71)];
    const client = new RegistryClient(registry.host);
    const pushedAmd = await pushImage(`${registry.host}/apps/multi:amd64`, imageOf(amd, "amd64"));
    const armImage = { config: configFor(arm, "arm64", "v8"), layers: arm.map((t) => streamLayer(t)) };
    const pushedArm = await pushImage(`${registry.host}/apps/multi:arm64`, armImage);
    const entries = [
      {
        digest: pushedArm.manifestDigest,
        size: pushedArm.manifest.length,
        platform: { architecture: "arm64", os: "linux", variant: "v8" },
      },
      {
        digest: pushedAmd.manifestDigest,
        size: pushedAmd.manifest.length,
        platform: { architecture: "amd64", os: "linux" },
      },
    ];
    const index = new TextEncoder().encode(
      JSON.stringify({
        schemaVersion: 2,
        mediaType: mediaTypes.OCI_INDEX,
        manifests: entries.map((e) => ({ mediaType: mediaTypes.OCI_MANIFEST, ...e })),
      }),
    );
    const indexDigest = await client.putManifest("apps/multi", "1", index, mediaTypes.OCI_INDEX);

    const chosen = await openRegistryImage(`${registry.host}/apps/multi:1`);
    assert.equal(chosen.indexDigest, indexDigest);
    assert.equal(chosen.info.manifestDigest, pushedAmd.manifestDigest);
    assert.deepEqual(await collect(await chosen.openLayerTar(0)), amd[0]);
    const armRead = await openRegistryImage(`${registry.host}/apps/multi:1`, {
      platform: { os: "linux", architecture: "arm64" },
    });
    assert.equal(armRead.info.manifestDigest, pushedArm.manifestDigest);
    assert.deepEqual(await collect(await armRead.openLayerTar(0)), arm[0]);
    await assert.rejects(
      openRegistryImage(`${registry.host}/apps/multi:1`, {
        platform: { os: "linux", architecture: "arm64", variant: "v7" },
      }),
      /is a multi-platform index without linux\/arm64\/v7 \(it has: linux\/arm64\/v8, linux\/amd64\); choose one/,
    );

    // The Docker flavour: schema 2 manifests in a manifest list.
    const dockerAmd = await pushImage(`${registry.host}/apps/multi-docker:amd64`, imageOf(amd, "amd64"), {
      manifestFormat: "docker",
    });
    assert.equal(dockerAmd.manifestMediaType, mediaTypes.DOCKER_MANIFEST);
    const list = new TextEncoder().encode(
      JSON.stringify({
        schemaVersion: 2,
        mediaType: mediaTypes.DOCKER_MANIFEST_LIST,
        manifests: [
          {
            mediaType: mediaTypes.DOCKER_MANIFEST,
            digest: dockerAmd.manifestDigest,
            size: dockerAmd.manifest.length,
            platform: { architecture: "amd64", os: "linux" },
          },
        ],
      }),
    );
    await client.putManifest("apps/multi-docker", "1", list, mediaTypes.DOCKER_MANIFEST_LIST);
    const fromList = await openRegistryImage(`${registry.host}/apps/multi-docker:1`);
    assert.equal(fromList.manifest.mediaType, mediaTypes.DOCKER_MANIFEST);
    assert.equal(fromList.info.manifestDigest, dockerAmd.manifestDigest);
    assert.deepEqual(
      fromList.info.layers.map((l) => [l.mediaType, l.compression]),
      [["application/vnd.docker.image.rootfs.diff.tar", "none"]],
    );
  });

  test("lists repositories and tags, deletes a manifest by digest, and explains a missing tag", async () => {
    const client = new RegistryClient(registry.host);
    const repositories = await client.listRepositories();
    for (const name of [
      "apps/base",
      "apps/chunked",
      "apps/derived",
      "apps/gz",
      "apps/multi",
      "apps/plain",
      "peer/zstd",
    ]) {
      assert.ok(repositories.includes(name), `catalog has ${name}: ${repositories.join(", ")}`);
    }
    assert.deepEqual((await client.listTags("apps/multi")).sort(), ["1", "amd64", "arm64"]);
    assert.deepEqual(await client.listTags("apps/never-pushed"), []);
    await assert.rejects(
      client.listTags("apps/../../v2/_catalog"),
      /repository name "apps\/\.\.\/\.\.\/v2\/_catalog" is not valid/,
    );
    // Two per page: the client follows the registry's Link headers to the end.
    assert.deepEqual(await client.listRepositories(2), repositories);
    assert.deepEqual((await client.listTags("apps/multi", 2)).sort(), ["1", "amd64", "arm64"]);

    const pushed = await pushImage(`${registry.host}/apps/doomed:1`, imageOf([await layerTar(80)]));
    assert.equal(await client.resolveDigest("apps/doomed", "1"), pushed.manifestDigest);
    await client.deleteManifest("apps/doomed", pushed.manifestDigest);
    assert.equal(await client.resolveDigest("apps/doomed", "1"), undefined);
    await assert.rejects(
      openRegistryImage(`${registry.host}/apps/doomed:1`),
      (error: RegistryError) =>
        error instanceof RegistryError &&
        error.status === 404 &&
        error.codes.includes("MANIFEST_UNKNOWN") &&
        error.message.startsWith(
          "GET manifest apps/doomed:1 answered 404 Not Found (MANIFEST_UNKNOWN: manifest unknown",
        ) &&
        error.message.endsWith(
          "; check the repository name, the tag or digest, and that the image was pushed",
        ),
    );
    const blob = sha256(await layerTar(80));
    await client.deleteBlob("apps/doomed", blob);
    assert.equal(await client.blobSize("apps/doomed", blob), undefined);
  });

  test("retries once on a new connection when the server dropped a kept-alive one", async () => {
    // docker-registry keeps idle connections open; proxies in front of ACR do not. This
    // stand-in drops every connection on its second request, as a server that timed it out would.
    const perSocket = new Map<unknown, number>();
    let served = 0;
    const server = createServer((req, res) => {
      const count = (perSocket.get(req.socket) ?? 0) + 1;
      perSocket.set(req.socket, count);
      if (count > 1) {
        req.socket.destroy();
        return;
      }
      served++;
      res.writeHead(200, { "content-type": "application/json", "content-length": "2" });
      res.end("{}");
    });
    const client = new RegistryClient(await listenLocally(server));
    try {
      await client.ping();
      await client.ping();
      await client.ping();
      assert.equal(served, 3);
      assert.equal(perSocket.size, 3);
    } finally {
      client.close();
      server.closeAllConnections();
      server.close();
    }
  });

  test("says where nothing answers", async () => {
    const unused = await startRegistry();
    const host = unused.host;
    await unused.stop();
    await assert.rejects(
      openRegistryImage(`${host}/apps/x:1`),
      /GET manifest apps\/x:1: no answer from http:\/\/127\.0\.0\.1:\d+ \(.*\); check that the registry runs/,
    );
  });
});

describe("registry auth", () => {
  const users = [{ username: "deployer", password: "s3cret" }];
  const readers = [{ username: "reader", password: "r3ad", pullOnly: true }];
  const refreshTokens = ["refresh-token-from-aad-exchange"];

  test("bearer tokens (the flow ACR uses) from basic credentials and from a refresh token, cached per scope", async () => {
    const registry = await startRegistry({ auth: "token", users: [...users, ...readers], refreshTokens });
    try {
      const tars = [await layerTar(90), await layerTar(91)];
      const client = new RegistryClient(registry.host, { credentials: users[0] });
      const pushed = await pushImage(`${registry.host}/apps/secure:1`, imageOf(tars), { client });
      assert.equal(pushed.layers.length, 2);
      // One token for pull,push on the repository, one for pull (HEAD checks); then reused.
      assert.equal(client.tokenRequests, 2);
      const again = await openRegistryImage(`${registry.host}/apps/secure:1`, { client });
      assert.deepEqual(await collect(await again.openLayerTar(1)), tars[1]);
      assert.equal(client.tokenRequests, 2);

      const viaRefresh = await openRegistryImage(`${registry.host}/apps/secure:1`, {
        credentials: { refreshToken: refreshTokens[0] },
      });
      assert.deepEqual(await collect(await viaRefresh.openLayerTar(0)), tars[0]);
      assert.equal(viaRefresh.client.tokenRequests, 1);

      await assert.rejects(
        openRegistryImage(`${registry.host}/apps/secure:1`),
        (error: RegistryError) =>
          error.status === 401 &&
          error.message.startsWith("GET manifest apps/secure:1 answered 401 Unauthorized (UNAUTHORIZED:") &&
          error.message.endsWith("the registry needs credentials; pass username/password or a refresh token"),
      );
      await assert.rejects(
        openRegistryImage(`${registry.host}/apps/secure:1`, {
          credentials: { username: "deployer", password: "wrong" },
        }),
        /token request to http:\/\/127\.0\.0\.1:\d+\/token for scope "repository:apps\/secure:pull" answered 401 \(UNAUTHORIZED: bad username or password\); check the registry credentials/,
      );
      await assert.rejects(
        openRegistryImage(`${registry.host}/apps/secure:1`, { credentials: { refreshToken: "stale" } }),
        /answered 401 .*check the registry credentials/,
      );
      assert.ok(registry.tokenRequests >= 6);

      // Valid credentials without push (the blobs exist, so the manifest PUT is the first write).
      await assert.rejects(
        pushImage(`${registry.host}/apps/secure:2`, imageOf(tars), { credentials: readers[0] }),
        (error: RegistryError) =>
          error.status === 401 &&
          error.message.startsWith("PUT manifest apps/secure:2 answered 401 Unauthorized (UNAUTHORIZED:") &&
          error.message.endsWith("; grant that permission on the repository or use other credentials") &&
          /the credentials are valid but do not grant "repository:apps\/secure:(pull,push|push,pull)"/.test(
            error.message,
          ),
      );
    } finally {
      await registry.stop();
    }
  });

  test("parses WWW-Authenticate challenges, commas inside quotes included", () => {
    assert.deepEqual(
      parseChallenge(
        'Bearer realm="https://x.azurecr.io/oauth2/token",service="x.azurecr.io",scope="repository:a/b:pull,push",error="insufficient_scope"',
      ),
      {
        scheme: "bearer",
        realm: "https://x.azurecr.io/oauth2/token",
        service: "x.azurecr.io",
        scope: "repository:a/b:pull,push",
        error: "insufficient_scope",
      },
    );
    assert.deepEqual(parseChallenge('Basic realm="registry"'), {
      scheme: "basic",
      realm: "registry",
      service: undefined,
      scope: undefined,
      error: undefined,
    });
    assert.equal(parseChallenge("Negotiate abc"), undefined);
    assert.equal(parseChallenge(null), undefined);
  });

  test("reuses a token until shortly before it expires, then asks again", async () => {
    const registry = await startRegistry({ auth: "token", users });
    const transport = new HttpTransport();
    try {
      const answer = await fetch(`${registry.url}/v2/`);
      await answer.body?.cancel();
      const challenge = parseChallenge(answer.headers.get("www-authenticate"));
      assert.ok(challenge?.realm);
      let now = 1_000_000;
      const tokens = new TokenCache(users[0]!, transport, () => now);
      const scopes = ["repository:apps/x:pull"];
      const first = await tokens.token(challenge, scopes);
      now += 289_000; // the stand-in grants 300 s; renewal starts 10 s before
      assert.equal(await tokens.token(challenge, scopes), first);
      assert.equal(tokens.requests, 1);
      await tokens.token(challenge, ["repository:apps/y:pull"]);
      assert.equal(tokens.requests, 2);
      now += 2_000;
      await tokens.token(challenge, scopes);
      assert.equal(tokens.requests, 3);
    } finally {
      transport.close();
      await registry.stop();
    }
  });

  test("follows a blob redirect to storage without sending the registry's token along", async () => {
    // ACR answers blob GETs with a redirect to Azure Blob Storage; docker-registry's filesystem
    // driver never redirects. So a stand-in does that part: a front that forwards everything to
    // the real token-auth registry except blob GETs, which it redirects to a small "storage"
    // server of another origin that serves the blob file from the registry's own storage.
    const registry = await startRegistry({ auth: "token", users });
    const storageAuth: (string | undefined)[] = [];
    const storage = createServer((req, res) => {
      storageAuth.push(req.headers.authorization);
      const digest = new URL(req.url ?? "/", "http://x").pathname.slice(1);
      res.writeHead(200, { "content-type": "application/octet-stream" });
      res.end(readFileSync(registry.blobPath(digest)));
    });
    const storageHost = await listenLocally(storage);
    const upstream = new URL(registry.url);
    const front = createServer((req, res) => {
      const blob = /^\/v2\/.+\/blobs\/(sha256:[0-9a-f]{64})$/.exec(req.url ?? "");
      if (req.method === "GET" && blob && req.headers.authorization) {
        res.writeHead(307, { location: `http://${storageHost}/${blob[1]}?sig=signed` });
        res.end();
        return;
      }
      forward(upstream, req, res);
    });
    const frontHost = await listenLocally(front);
    try {
      const tar = await layerTar(93);
      await pushImage(`${registry.host}/apps/redirected:1`, imageOf([tar]), { credentials: users[0] });
      const read = await openRegistryImage(`${frontHost}/apps/redirected:1`, { credentials: users[0] });
      assert.deepEqual(await collect(await read.openLayerTar(0)), tar);
      // The config and the layer came from storage, and storage never saw the bearer token.
      assert.deepEqual(storageAuth, [undefined, undefined]);
    } finally {
      front.closeAllConnections();
      front.close();
      storage.closeAllConnections();
      storage.close();
      await registry.stop();
    }
  });

  test("basic auth checked by the registry's htpasswd", async () => {
    const registry = await startRegistry({ auth: "basic", users });
    try {
      const tar = await layerTar(95);
      await pushImage(`${registry.host}/apps/basic:1`, imageOf([tar]), { credentials: users[0] });
      const read = await openRegistryImage(`${registry.host}/apps/basic:1`, { credentials: users[0] });
      assert.deepEqual(await collect(await read.openLayerTar(0)), tar);
      assert.deepEqual(await read.client.listTags("apps/basic"), ["1"]);
      await assert.rejects(
        openRegistryImage(`${registry.host}/apps/basic:1`, {
          credentials: { username: "deployer", password: "no" },
        }),
        (error: RegistryError) =>
          error.status === 401 && /answered 401 Unauthorized \(UNAUTHORIZED: /.test(error.message),
      );
    } finally {
      await registry.stop();
    }
  });
});
