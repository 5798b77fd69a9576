/** Small real images for the archive and layout tests: layers written by our tar writer, a real config. */
import assert from "node:assert/strict";
import { execFile } from "node:child_process";
import { promisify } from "node:util";
import { digestOf } from "../../delta/image/digest.js";
import type { ImageReader, ImageToWrite, LayerToWrite } from "../../delta/image/types.js";
import { concatBytes } from "../../delta/tar/format.js";
import { buildTar, type TarWriterEntry, whiteout } from "../../delta/tar/writer.js";

export interface FixtureImage extends ImageToWrite {
  readonly tars: readonly Uint8Array[];
}

/** Runs skopeo under its insecure policy (the images are the test's own) and returns its stdout. */
export async function skopeo(...args: string[]): Promise<string> {
  const { stdout } = await promisify(execFile)("skopeo", ["--insecure-policy", ...args], {
    maxBuffer: 16 * 1024 * 1024,
  });
  return stdout;
}

export async function* bytesStream(bytes: Uint8Array, chunk = 3000): AsyncGenerator<Uint8Array> {
  for (let i = 0; i < bytes.length; i += chunk) yield bytes.subarray(i, Math.min(bytes.length, i + chunk));
}

export async function collect(stream: AsyncIterable<Uint8Array>): Promise<Uint8Array> {
  const parts: Uint8Array[] = [];
  for await (const c of stream) parts.push(c.slice());
  return concatBytes(parts);
}

/** The reader lists the image's layers by diff_id, and each layer reads back as the very tar written. */
export async function assertLayersExact(reader: ImageReader, image: FixtureImage): Promise<void> {
  assert.deepEqual(
    reader.info.layers.map((l) => l.diffId),
    image.layers.map((l) => l.diffId),
  );
  for (const [i, tar] of image.tars.entries()) {
    assert.deepEqual(await collect(await reader.openLayerTar(i)), tar, `layer ${i}`);
  }
}

function layerOf(tar: Uint8Array): LayerToWrite {
  return { diffId: digestOf(tar), size: tar.length, open: async () => bytesStream(tar) };
}

const text = (s: string) => new TextEncoder().encode(s);

/** A three-layer image whose content depends on `variant`, so several distinct images can be made. */
export async function fixtureImage(repository: string, tag: string, variant: string): Promise<FixtureImage> {
  const base: TarWriterEntry[] = [
    { path: "etc", type: "directory" },
    { path: "etc/os-release", type: "file", content: text(`ID=fixture\nVARIANT=${variant}\n`) },
    { path: "bin", type: "directory" },
    {
      path: "bin/app",
      type: "file",
      content: new Uint8Array(5000).map((_, i) => (i * 31 + variant.length) & 0xff),
    },
  ];
  const app: TarWriterEntry[] = [
    { path: "app", type: "directory" },
    { path: `app/${"deep/".repeat(30)}config.json`, type: "file", content: text(`{"variant":"${variant}"}`) },
    { path: "app/current", type: "symlink", linkName: "config.json" },
  ];
  const patch: TarWriterEntry[] = [
    whiteout("etc/os-release"),
    { path: "bin/app2", type: "hardlink", linkName: "bin/app" },
  ];
  const tars = [await buildTar(base), await buildTar(app), await buildTar(patch)];
  const layers = tars.map(layerOf);
  const config = text(
    JSON.stringify({
      architecture: "amd64",
      os: "linux",
      config: { Env: ["PATH=/usr/bin:/bin"], Cmd: ["/bin/app"], Labels: { variant } },
      rootfs: { type: "layers", diff_ids: layers.map((l) => l.diffId) },
      history: tars.map((_, i) => ({ created: "2020-01-01T00:00:00Z", created_by: `step ${i}` })),
    }),
  );
  return { repository, tag, config, layers, tars };
}
