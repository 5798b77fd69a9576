import assert from "node:assert/strict";
import { execFile, execFileSync, spawnSync } from "node:child_process";
import { existsSync, statSync } from "node:fs";
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { openImage } from "../../delta/image/open.js";
import { pushImage } from "../../delta/image/registry.js";
import type { ImageToWrite } from "../../delta/image/types.js";
import {
  buildTar,
  imageOf,
  patched,
  realFiles,
  sha256,
  withContent,
  writeArchive,
} from "../bundle/fixtures.js";
import { assertLayerTars, withImages } from "../support/bundles.js";
import { startRegistry, type TestRegistry } from "../support/registry.js";

const CLI = join(import.meta.dirname, "..", "..", "bin", "deltaship.mjs");

interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
}

function deltaship(...args: string[]): Promise<CliResult> {
  return new Promise((resolve) => {
    execFile(process.execPath, [CLI, ...args], { maxBuffer: 64 * 1024 * 1024 }, (err, stdout, stderr) => {
      const code = err === null ? 0 : typeof err.code === "number" ? err.code : 1;
      resolve({ code, stdout, stderr });
    });
  });
}

/** `deltaship diff` to v2, signed with the key the keygen test writes, at a level fast enough for tests. */
function diffToV2(from: string, out: string, ...flags: string[]): Promise<CliResult> {
  return deltaship(
    "diff",
    "--from",
    from,
    "--to",
    v2,
    "--key",
    join(dir, "k.key"),
    "--out",
    out,
    "--level",
    "3",
    ...flags,
  );
}

/** `deltaship apply` trusting the public key of that name in the test directory. */
function applyBundle(
  bundle: string,
  from: string,
  to: string,
  trust: string,
  ...flags: string[]
): Promise<CliResult> {
  return deltaship("apply", bundle, "--from", from, "--to", to, "--trust", join(dir, trust), ...flags);
}

let dir: string;
let registry: TestRegistry;
let v1: string;
let v2: string;
let layersV2: Uint8Array[];
let imageV1: ImageToWrite;

before(async () => {
  dir = await mkdtemp(join(tmpdir(), "bundle-cli-"));
  registry = await startRegistry();
  const bins = realFiles("/usr/bin", "usr/bin", { limit: 30, maxBytes: 3_000_000, skip: 10 });
  const libs = realFiles("/usr/lib/x86_64-linux-gnu", "usr/lib", { limit: 20, maxBytes: 2_000_000, skip: 5 });
  const base = await buildTar(bins);
  const app1 = await buildTar(libs);
  const app2 = await buildTar(libs.map((e, i) => (i === 4 ? withContent(e, patched(e.content!, 4)) : e)));
  imageV1 = imageOf("apps/cli", "1", [base, app1]);
  layersV2 = [base, app2];
  v1 = await writeArchive(join(dir, "v1.tar"), imageV1);
  v2 = await writeArchive(join(dir, "v2.tar"), imageOf("apps/cli", "2", layersV2));
  // Seeded with skopeo, an independent client, so the registry holds what a real push makes.
  execFileSync("skopeo", [
    "copy",
    "--quiet",
    "--dest-tls-verify=false",
    `docker-archive:${v1}`,
    `docker://${registry.host}/apps/cli:1`,
  ]);
});

after(async () => {
  await registry?.stop();
  await rm(dir, { recursive: true, force: true });
});

describe("deltaship bundle commands", () => {
  it("keygen writes a private key only its owner can read and a public key", async () => {
    const result = await deltaship("keygen", "--out", join(dir, "k"), "--json");
    assert.equal(result.code, 0, result.stderr);
    const out = JSON.parse(result.stdout);
    assert.match(out.keyId, /^[0-9a-f]{16}$/);
    assert.equal(statSync(join(dir, "k.key")).mode & 0o777, 0o600);
    assert.match(await readFile(join(dir, "k.pub"), "utf8"), /^-----BEGIN PUBLIC KEY-----/);
    assert.equal((await deltaship("keygen", "--out", join(dir, "k"))).code, 1, "refuses to overwrite");
  });

  it("diff, inspect and apply rebuild the archive byte for byte", async () => {
    const bundle = join(dir, "v2.bundle");
    const diff = await diffToV2(v1, bundle, "--json");
    assert.equal(diff.code, 0, diff.stderr);
    const built = JSON.parse(diff.stdout);
    assert.equal(built.bytes, statSync(bundle).size);
    assert.deepEqual(
      built.layers.map((l: { present: boolean }) => l.present),
      [true, false],
    );

    const inspect = await deltaship("inspect", bundle, "--trust", join(dir, "k.pub"), "--json");
    assert.equal(inspect.code, 0, inspect.stderr);
    const shown = JSON.parse(inspect.stdout);
    assert.equal(shown.verified, true);
    assert.deepEqual(shown.target.repository, "apps/cli");
    assert.deepEqual(
      shown.makes.map((m: { diffId: string }) => m.diffId),
      layersV2.map(sha256),
    );

    const dest = join(dir, "out.tar");
    const apply = await applyBundle(bundle, v1, dest, "k.pub", "--json");
    assert.equal(apply.code, 0, apply.stderr);
    assert.deepEqual(await readFile(dest), await readFile(v2));
  });

  it("applies from a registry image into the registry and the image reads back identical", async () => {
    const bundle = join(dir, "registry.bundle");
    const diff = await diffToV2(`${registry.host}/apps/cli:1`, bundle);
    assert.equal(diff.code, 0, diff.stderr);
    const apply = await applyBundle(
      bundle,
      `${registry.host}/apps/cli:1`,
      `${registry.host}/apps/cli`,
      "k.pub",
      "--json",
    );
    assert.equal(apply.code, 0, apply.stderr);
    const result = JSON.parse(apply.stdout);
    assert.equal(result.image, `${registry.host}/apps/cli:2@${result.digest}`);
    await withImages([`${registry.host}/apps/cli:2`], async ([pushed]) => {
      assert.equal(pushed!.info.manifestDigest, result.digest);
      assert.equal(pushed!.info.configDigest, sha256((await openImage(v2)).info.config));
      await assertLayerTars(pushed!, layersV2);
    });

    // Into another repository of the same registry: the layer the device holds is mounted from
    // the --from image (its gzip blob, as skopeo stored it), only the rebuilt one is uploaded.
    const copy = await applyBundle(
      bundle,
      `${registry.host}/apps/cli:1`,
      `${registry.host}/apps/cli-copy`,
      "k.pub",
      "--json",
    );
    assert.equal(copy.code, 0, copy.stderr);
    await withImages(
      [`${registry.host}/apps/cli:1`, `${registry.host}/apps/cli-copy:2`],
      async ([held, pushed]) => {
        const [base, app] = pushed!.info.layers;
        assert.equal(base!.digest, held!.info.layers[0]!.digest, "the held layer's blob is reused");
        assert.equal(base!.compression, "gzip");
        assert.equal(app!.digest, sha256(layersV2[1]!), "the rebuilt layer goes up as its tar");
        await assertLayerTars(pushed!, layersV2);
      },
    );
    // skopeo pushed Docker media types; our OCI manifest names the mounted blob as OCI does, so
    // an independent reader takes the image (it refuses a manifest that mixes the two).
    const raw = JSON.parse(
      execFileSync(
        "skopeo",
        ["inspect", "--raw", "--tls-verify=false", `docker://${registry.host}/apps/cli-copy:2`],
        {
          encoding: "utf8",
        },
      ),
    );
    assert.deepEqual(
      raw.layers.map((l: { mediaType: string }) => l.mediaType),
      ["application/vnd.oci.image.layer.v1.tar+gzip", "application/vnd.oci.image.layer.v1.tar"],
    );
    const pulled = join(dir, "cli-copy.tar");
    execFileSync("skopeo", [
      "copy",
      "--quiet",
      "--src-tls-verify=false",
      `docker://${registry.host}/apps/cli-copy:2`,
      `docker-archive:${pulled}`,
    ]);
    await withImages([pulled], async ([image]) => assertLayerTars(image!, layersV2));
  });

  it("applies from uncompressed registry layers; a corrupted one is named and nothing is pushed", async () => {
    // Pushed by our client, which stores layers uncompressed as the edge module's store does
    // (skopeo gzips them). The held app layer's blob is then changed in place in the registry's
    // own storage (same size), as a failing disk would: the registry serves the bad bytes, and
    // the copy of the layer to scratch is hashed and refused, naming it.
    const held = `${registry.host}/apps/cli-plain:1`;
    await pushImage(held, imageV1);
    const layer = await withImages([held], async ([image]) => image!.info.layers[1]!);
    assert.equal(layer.compression, "none");
    const bundle = join(dir, "v2.bundle");
    const good = await applyBundle(bundle, held, join(dir, "from-plain.tar"), "k.pub");
    assert.equal(good.code, 0, good.stderr);
    assert.deepEqual(await readFile(join(dir, "from-plain.tar")), await readFile(v2));

    const blob = registry.blobPath(layer.digest);
    const original = await readFile(blob);
    const damaged = Buffer.from(original);
    for (let at = 4096; at < damaged.length; at += 65_536) damaged[at]! ^= 0x5a;
    await writeFile(blob, damaged);
    try {
      const apply = await applyBundle(bundle, held, `${registry.host}/apps/cli-damaged`, "k.pub", "--json");
      assert.equal(apply.code, 6, `${apply.stdout} ${apply.stderr}`);
      const error = JSON.parse(apply.stdout);
      assert.equal(error.code, "DIGEST");
      assert.equal(error.where, layer.diffId);
      assert.match(
        error.error,
        new RegExp(`layer ${layer.diffId} on this device .*corrupt.*re-deploy the image that holds it`),
      );
      const tags = spawnSync(
        "skopeo",
        ["list-tags", "--tls-verify=false", `docker://${registry.host}/apps/cli-damaged`],
        { encoding: "utf8" },
      );
      // Either the repository does not exist (skopeo fails) or it has no tag.
      if (tags.status === 0) assert.deepEqual(JSON.parse(tags.stdout).Tags ?? [], [], "no tag was pushed");
      else assert.match(tags.stderr, /NAME_UNKNOWN|not found|unknown/i);
    } finally {
      await writeFile(blob, original);
    }
  });

  it("exits with distinct codes for usage, bad bundles, untrusted keys and missing layers", async () => {
    const bundle = join(dir, "v2.bundle");
    const dest = join(dir, "never.tar");
    assert.equal((await deltaship("apply", bundle)).code, 2);
    await writeFile(join(dir, "garbage.bundle"), "not a bundle at all, just text that is long enough");
    const bad = await applyBundle(join(dir, "garbage.bundle"), v1, dest, "k.pub");
    assert.equal(bad.code, 3, bad.stderr);
    assert.match(bad.stderr, /not a Deltaship bundle/);
    assert.equal((await deltaship("keygen", "--out", join(dir, "other"))).code, 0);
    const untrusted = await applyBundle(bundle, v1, dest, "other.pub");
    assert.equal(untrusted.code, 4, untrusted.stderr);
    const missing = await deltaship("apply", bundle, "--to", dest, "--trust", join(dir, "k.pub"), "--json");
    assert.equal(missing.code, 5, missing.stderr);
    assert.equal(JSON.parse(missing.stdout).code, "MISSING_SOURCE");
    assert.equal(existsSync(dest), false);
  });

  it("index writes an image index with every layer and file", async () => {
    const out = join(dir, "v2.index.json");
    const result = await deltaship("index", v2, "--out", out, "--json");
    assert.equal(result.code, 0, result.stderr);
    const index = JSON.parse(await readFile(out, "utf8"));
    assert.equal(index.version, 1);
    assert.deepEqual(
      index.layers.map((l: { diffId: string }) => l.diffId),
      layersV2.map(sha256),
    );
    assert.equal(index.layers[0].size, layersV2[0]!.length);
    assert.equal(
      JSON.parse(result.stdout).files,
      index.layers[0].files.length + index.layers[1].files.length,
    );
  });
});
