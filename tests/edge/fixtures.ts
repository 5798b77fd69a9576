/**
 * Images and bundles for the edge module tests, made with the real engine: layers from real
 * files of this machine (tests/bundle/fixtures.ts), the device's starting image pushed to a real
 * registry, target images in docker-archives, bundles from `buildBundle`, signed with Ed25519.
 */
import { readFile, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { buildBundle } from "../../delta/bundle/diff.js";
import { generateSigningKey, publicKeyPem, type SigningKey } from "../../delta/bundle/sign.js";
import { openImage, writeImage } from "../../delta/image/open.js";
import { pushImage } from "../../delta/image/registry.js";
import type { ImageToWrite } from "../../delta/image/types.js";
import { buildTar, imageOf, patched, realFiles, withContent } from "../bundle/fixtures.js";

export interface EdgeImages {
  /** On the device from the start: `apps/telemetry:1.0` = base + app 1.0. */
  readonly base: ImageToWrite;
  /** The update: base + app 1.1 (patched binaries), under a tag chosen per bundle. */
  update(tag: string): ImageToWrite;
  /** An image whose base the device never had (for the missing-source case). */
  readonly foreign: ImageToWrite;
  /** The same app on the foreign base, under another name. */
  readonly foreignUpdate: ImageToWrite;
}

export async function makeImages(appFiles = 12): Promise<EdgeImages> {
  const baseFiles = realFiles("/usr/bin", "usr/bin", { limit: 40, maxBytes: 3_000_000 });
  const app = realFiles("/usr/lib/x86_64-linux-gnu", "opt/app", { limit: appFiles, maxBytes: 2_000_000 });
  const baseLayer = await buildTar(baseFiles);
  const appLayer = await buildTar(app);
  const appUpdate = await buildTar(
    app.map((entry, i) => withContent(entry, patched(entry.content as Uint8Array, i))),
  );
  const otherBase = await buildTar(
    realFiles("/usr/bin", "usr/local/bin", { limit: 10, skip: 40, maxBytes: 1_000_000 }),
  );
  return {
    base: imageOf("apps/telemetry", "1.0", [baseLayer, appLayer]),
    update: (tag) => imageOf("apps/telemetry", tag, [baseLayer, appUpdate]),
    foreign: imageOf("apps/other", "1.0", [otherBase, appLayer]),
    foreignUpdate: imageOf("apps/other", "1.1", [otherBase, appUpdate]),
  };
}

export async function pushToRegistry(host: string, image: ImageToWrite): Promise<string> {
  const result = await pushImage(`${host}/${image.repository}:${image.tag}`, image);
  return result.manifestDigest;
}

export interface Signer {
  readonly key: SigningKey;
  readonly publicPem: string;
}

export function newSigner(): Signer {
  const key = generateSigningKey();
  return { key, publicPem: publicKeyPem(key) };
}

/** Builds a bundle from `target` against `sources` (what the device holds); returns its bytes. */
export async function makeBundle(
  dir: string,
  name: string,
  target: ImageToWrite,
  sources: readonly ImageToWrite[],
  signer: Signer,
): Promise<Buffer> {
  const targetPath = join(dir, `${name}.target.tar`);
  await writeImage(`docker-archive:${targetPath}`, target);
  const sourceReaders = [];
  for (const [i, source] of sources.entries()) {
    const path = join(dir, `${name}.source${i}.tar`);
    await writeImage(`docker-archive:${path}`, source);
    sourceReaders.push(await openImage(path));
  }
  const targetReader = await openImage(targetPath);
  const out = join(dir, `${name}.bundle`);
  try {
    await buildBundle({
      target: targetReader,
      sources: sourceReaders,
      key: signer.key,
      out,
      scratchDir: dir,
    });
  } finally {
    await targetReader.close();
    for (const reader of sourceReaders) await reader.close();
  }
  return readFile(out);
}

export async function writeAll(path: string, bytes: Uint8Array): Promise<void> {
  await writeFile(path, bytes);
}
