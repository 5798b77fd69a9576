import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import {
  closeSync,
  existsSync,
  mkdtempSync,
  openSync,
  readFileSync,
  rmSync,
  writeFileSync,
  writeSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { promisify } from "node:util";
import { gzipSync } from "node:zlib";
import { DigestError, digestOf } from "../../delta/image/digest.js";
import {
  type DockerArchiveReader,
  openDockerArchive,
  writeDockerArchive,
} from "../../delta/image/docker-archive.js";
import { ImageFormatError } from "../../delta/image/oci.js";
import { openOciLayout, writeOciLayout } from "../../delta/image/oci-layout.js";
import { locateImage, openImage, writeImage } from "../../delta/image/open.js";
import type { ImageReader } from "../../delta/image/types.js";
import { TarError } from "../../delta/tar/format.js";
import { buildTar, encodeHeader, type TarWriterEntry } from "../../delta/tar/writer.js";
import {
  assertLayersExact,
  bytesStream,
  collect,
  type FixtureImage,
  fixtureImage,
  skopeo,
} from "./archive-fixture.js";

const run = promisify(execFile);

async function assertSameImage(reader: ImageReader, image: FixtureImage): Promise<void> {
  assert.equal(reader.info.configDigest, digestOf(image.config));
  await assertLayersExact(reader, image);
}

const text = (s: string) => new TextEncoder().encode(s);

describe("docker-archive", () => {
  let dir: string;
  let one: FixtureImage;
  let two: FixtureImage;
  before(async () => {
    dir = mkdtempSync(join(tmpdir(), "docker-archive-"));
    one = await fixtureImage("apps/telemetry", "1.0", "one");
    two = await fixtureImage("library/alpine", "3.19", "two");
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  it("writes an archive that skopeo inspects and copies with the same layers and config", async () => {
    const path = join(dir, "ours.tar");
    const written = await writeDockerArchive(path, one);
    const { stdout } = await run("tar", ["-tf", path]);
    assert.deepEqual(stdout.trim().split("\n"), [
      "blobs/",
      "blobs/sha256/",
      ...one.layers.map((l) => `blobs/sha256/${l.diffId.slice(7)}`),
      `blobs/sha256/${written.configDigest.slice(7)}`,
      `blobs/sha256/${written.manifestDigest.slice(7)}`,
      "index.json",
      "manifest.json",
      "oci-layout",
      "repositories",
    ]);
    const manifestJson = JSON.parse(
      (await run("tar", ["-xOf", path, "manifest.json"], { encoding: "utf8" })).stdout,
    );
    assert.deepEqual(manifestJson, [
      {
        Config: `blobs/sha256/${digestOf(one.config).slice(7)}`,
        RepoTags: ["apps/telemetry:1.0"],
        Layers: one.layers.map((l) => `blobs/sha256/${l.diffId.slice(7)}`),
      },
    ]);

    const inspected = JSON.parse(await skopeo("inspect", `docker-archive:${path}`));
    assert.deepEqual(
      inspected.Layers,
      one.layers.map((l) => l.diffId),
    );
    assert.deepEqual(inspected.Labels, { variant: "one" });
    const rawConfig = await skopeo("inspect", "--config", "--raw", `docker-archive:${path}`);
    assert.equal(digestOf(text(rawConfig)), digestOf(one.config));

    const copy = join(dir, "from-ours");
    await skopeo("copy", `docker-archive:${path}`, `oci:${copy}:copied`);
    await assertSameImage(await openOciLayout(copy, { tag: "copied" }), one);
  });

  it("reads back what it wrote, by positional reads inside the archive", async () => {
    const path = join(dir, "roundtrip.tar");
    const written = await writeDockerArchive(path, one);
    const reader = await openDockerArchive(path);
    try {
      assert.equal(reader.info.repository, "apps/telemetry");
      assert.equal(reader.info.tag, "1.0");
      assert.equal(reader.info.manifestDigest, written.manifestDigest);
      assert.deepEqual(reader.tags, ["apps/telemetry:1.0"]);
      await assertSameImage(reader, one);
      const where = reader.locateLayerBlob(2);
      assert.equal(where.size, one.tars[2]!.length);
      const file = readFileSync(path);
      assert.deepEqual(new Uint8Array(file.subarray(where.offset, where.offset + where.size)), one.tars[2]);
    } finally {
      await reader.close();
    }
  });

  it("serves an uncompressed layer inside the archive as a random-access source", async () => {
    const path = join(dir, "source.tar");
    await writeDockerArchive(path, one);
    const reader = await openDockerArchive(path);
    const source = await reader.openLayerSource(0);
    try {
      const tar = one.tars[0]!;
      assert.equal(source.size, tar.length);
      const into = new Uint8Array(700);
      await source.read(tar.length - 600, into, 100, 600);
      assert.deepEqual(into.subarray(100), tar.subarray(tar.length - 600));
      await source.read(3, into, 0, 10);
      assert.deepEqual(into.subarray(0, 10), tar.subarray(3, 13));
      await assert.rejects(source.read(tar.length - 5, into, 0, 10), /outside the \d+-byte blob/);
    } finally {
      await source.close();
      await reader.close();
    }
  });

  it("writes the same bytes for the same image", async () => {
    await writeDockerArchive(join(dir, "det-a.tar"), one);
    await writeDockerArchive(join(dir, "det-b.tar"), one);
    assert.deepEqual(readFileSync(join(dir, "det-a.tar")), readFileSync(join(dir, "det-b.tar")));
  });

  it("refuses a layer that does not hash to its diff_id and leaves no file behind", async () => {
    const wrong = one.tars[1]!.slice();
    wrong[600] ^= 1;
    const bad = {
      ...one,
      layers: one.layers.map((l, i) => (i === 1 ? { ...l, open: async () => bytesStream(wrong) } : l)),
    };
    const path = join(dir, "bad.tar");
    await assert.rejects(writeDockerArchive(path, bad), (err: Error) => {
      assert.ok(err instanceof DigestError);
      assert.match(err.message, /layer 1 \(sha256:[0-9a-f]{64}\) should be sha256:.* but is sha256:/);
      return true;
    });
    assert.equal(existsSync(path), false);
    assert.equal(existsSync(`${path}.tmp-${process.pid}`), false);
  });

  it("reads archives skopeo wrote from gzip layers, both docker-archive and oci-archive", async () => {
    const layout = join(dir, "src-layout");
    await writeOciLayout(layout, one, { compression: "gzip" });
    const archive = join(dir, "skopeo.tar");
    await skopeo(
      "copy",
      `oci:${layout}:1.0`,
      `docker-archive:${archive}:registry.local:5000/apps/telemetry:1.0`,
    );
    const reader = await openImage(archive);
    assert.equal(reader.info.repository, "apps/telemetry");
    assert.equal(reader.info.tag, "1.0");
    await assertSameImage(reader, one);
    await reader.close();

    const ociArchive = join(dir, "skopeo-oci.tar");
    await skopeo("copy", `oci:${layout}:1.0`, `oci-archive:${ociArchive}:1.0`);
    const fromOci = await openDockerArchive(ociArchive);
    assert.deepEqual(
      fromOci.info.layers.map((l) => l.compression),
      ["gzip", "gzip", "gzip"],
    );
    await assertSameImage(fromOci, one);
    await fromOci.close();
  });

  it("reads a legacy multi-image archive with <id>/layer.tar paths and symlinked shared layers", async () => {
    // Image "b" has one's layers and its own config, as older `docker save a b` wrote it.
    const configB = text(
      JSON.stringify({
        ...JSON.parse(new TextDecoder().decode(one.config)),
        config: { Labels: { variant: "b" } },
      }),
    );
    const ids = one.layers.map((_, i) => `${String(i).repeat(64)}`);
    const idsB = one.layers.map((_, i) => `${String(i + 5).repeat(64)}`);
    const entries: TarWriterEntry[] = [];
    for (const [i, id] of ids.entries()) {
      entries.push({ path: id, type: "directory" });
      entries.push({ path: `${id}/VERSION`, type: "file", content: text("1.0") });
      entries.push({ path: `${id}/layer.tar`, type: "file", content: one.tars[i]! });
      entries.push({ path: `${idsB[i]}`, type: "directory" });
      entries.push({ path: `${idsB[i]}/layer.tar`, type: "symlink", linkName: `../${id}/layer.tar` });
    }
    const configName = (c: Uint8Array) => `${digestOf(c).slice(7)}.json`;
    entries.push({ path: configName(one.config), type: "file", content: one.config });
    entries.push({ path: configName(configB), type: "file", content: configB });
    entries.push({
      path: "manifest.json",
      type: "file",
      content: text(
        JSON.stringify([
          {
            Config: configName(one.config),
            RepoTags: ["apps/telemetry:1.0"],
            Layers: ids.map((id) => `${id}/layer.tar`),
          },
          {
            Config: configName(configB),
            RepoTags: ["alpine:b", "alpine:latest"],
            Layers: idsB.map((id) => `./${id}/layer.tar`),
          },
        ]),
      ),
    });
    const path = join(dir, "legacy.tar");
    writeFileSync(path, await buildTar(entries));

    await assert.rejects(openImage(path), (err: Error) => {
      assert.ok(err instanceof ImageFormatError);
      assert.match(
        err.message,
        /holds 2 images; choose one with path:repo:tag \(apps\/telemetry:1\.0, alpine:b, alpine:latest\)/,
      );
      return true;
    });
    await assert.rejects(openImage(`${path}:alpine:c`), /has no image tagged "alpine:c"/);
    const a = await openImage(`${path}:apps/telemetry:1.0`);
    await assertSameImage(a, one);
    assert.equal(a.info.manifestDigest, undefined);
    await a.close();
    for (const name of ["alpine:b", "docker.io/library/alpine:b", "b"]) {
      const b = await openImage(`docker-archive:${path}:${name}`);
      assert.equal(b.info.configDigest, digestOf(configB), name);
      assert.equal(b.info.repository, "alpine");
      assert.equal(b.info.tag, "b");
      assert.deepEqual(await collect(await b.openLayerTar(2)), one.tars[2]);
      await b.close();
    }
  });

  it("writes through writeImage with a name that overrides the image's tag", async () => {
    const path = join(dir, "named.tar");
    const written = await writeImage(`docker-archive:${path}:edge/reader:7`, two);
    assert.equal(written.kind, "docker-archive");
    const reader = await openImage(`${path}:edge/reader:7`);
    assert.equal(reader.info.repository, "edge/reader");
    await assertSameImage(reader, two);
    await reader.close();
  });

  it("tells archives, layouts and registry references apart", async () => {
    const archive = join(dir, "det-a.tar");
    assert.deepEqual(await locateImage(archive), { kind: "docker-archive", path: archive });
    assert.deepEqual(await locateImage(`${archive}:apps/telemetry:1.0`), {
      kind: "docker-archive",
      path: archive,
      name: "apps/telemetry:1.0",
    });
    const layout = join(dir, "src-layout");
    assert.deepEqual(await locateImage(`${layout}:1.0`), { kind: "oci", path: layout, name: "1.0" });
    assert.deepEqual(await locateImage("localhost:5000/apps/telemetry:1.0"), {
      kind: "registry",
      reference: "localhost:5000/apps/telemetry:1.0",
    });
    await assert.rejects(locateImage(dir), /is a directory without an oci-layout file/);
    await assert.rejects(
      locateImage("./missing.tar"),
      /\.\/missing\.tar does not exist; give an existing docker-archive/,
    );
    await assert.rejects(locateImage(join(dir, "nope")), /nope does not exist/);
  });

  it("asks for a compressed archive to be decompressed first", async () => {
    const gz = join(dir, "det-a.tar.gz");
    writeFileSync(gz, gzipSync(readFileSync(join(dir, "det-a.tar"))));
    await assert.rejects(
      openImage(gz),
      /det-a\.tar\.gz is gzip-compressed; .* decompress it first \(gunzip /,
    );
  });

  it("finds members past 4 GiB by offsets alone (a sparse archive with a 4.5 GiB layer)", async () => {
    const layerSize = 4.5 * 1024 ** 3 + 3;
    const layerDigest = digestOf(text("stands in for the 4.5 GiB layer's diff_id"));
    const config = text(JSON.stringify({ os: "linux", rootfs: { type: "layers", diff_ids: [layerDigest] } }));
    const configPath = `blobs/sha256/${digestOf(config).slice(7)}`;
    const layerPath = `blobs/sha256/${layerDigest.slice(7)}`;
    const header = encodeHeader({
      path: layerPath,
      type: "file",
      stream: { size: layerSize, open: async function* () {} },
    });
    const rest = await buildTar([
      { path: configPath, type: "file", content: config },
      {
        path: "manifest.json",
        type: "file",
        content: text(JSON.stringify([{ Config: configPath, RepoTags: ["big:1"], Layers: [layerPath] }])),
      },
    ]);
    const path = join(dir, "sparse-big.tar");
    const restOffset = header.length + Math.ceil(layerSize / 512) * 512;
    const fd = openSync(path, "w");
    try {
      writeSync(fd, header, 0, header.length, 0);
      writeSync(fd, rest, 0, rest.length, restOffset);
    } finally {
      closeSync(fd);
    }
    const reader = await openImage(path);
    try {
      assert.deepEqual(reader.info.config, config);
      assert.equal(reader.info.tag, "1");
      assert.deepEqual(reader.info.layers, [
        {
          digest: layerDigest,
          size: layerSize,
          mediaType: "application/vnd.oci.image.layer.v1.tar",
          compression: "none",
          diffId: layerDigest,
        },
      ]);
      assert.deepEqual(reader.locateLayerBlob!(0), { path, offset: header.length, size: layerSize });
      assert.equal(
        (reader as DockerArchiveReader).member("manifest.json")?.headerOffset,
        restOffset + 512 + 512,
      );
    } finally {
      await reader.close();
    }
  });

  it("refuses a truncated archive with the offset where it ends", async () => {
    const full = readFileSync(join(dir, "det-a.tar"));
    const path = join(dir, "truncated.tar");
    writeFileSync(path, full.subarray(0, 3000));
    await assert.rejects(openDockerArchive(path), (err: Error) => {
      assert.ok(err instanceof TarError, String(err));
      assert.equal(err.code, "TRUNCATED");
      assert.equal(err.offset, 1536);
      return true;
    });
  });

  it("fails reading a layer whose bytes in the archive were altered", async () => {
    const path = join(dir, "corrupt.tar");
    await writeDockerArchive(path, one);
    const reader = await openDockerArchive(path);
    const where = reader.locateLayerBlob(0);
    const bytes = readFileSync(path);
    bytes[where.offset + 100] ^= 0xff;
    writeFileSync(path, bytes);
    await assert.rejects(collect(await reader.openLayerTar(0)), DigestError);
    await reader.close();
  });
});
