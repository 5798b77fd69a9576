/**
 * Building and applying bundles between images on disk, the way the bundle tests do it: open
 * the images, hand their layers over, close them whatever happens.
 */
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { writeFileSync } from "node:fs";
import {
  type ApplyBundleOptions,
  type ApplyResult,
  applyBundle,
  ImageLayerProvider,
} from "../../delta/bundle/apply.js";
import { buildBundle } from "../../delta/bundle/diff.js";
import {
  type BundleHead,
  encodeHeader,
  encodeManifest,
  encodeSignatureBlock,
  type LayerPayload,
  SIGNATURE_BLOCK_SIZE,
} from "../../delta/bundle/format.js";
import { type SigningKey, signManifest } from "../../delta/bundle/sign.js";
import { openImage, writeImage } from "../../delta/image/open.js";
import type { ImageReader } from "../../delta/image/types.js";
import { sha256 } from "../bundle/fixtures.js";

/** Opens each image in turn, runs fn on them, and closes every one that opened. */
export async function withImages<T>(refs: string[], fn: (images: ImageReader[]) => Promise<T>): Promise<T> {
  const images: ImageReader[] = [];
  try {
    for (const ref of refs) images.push(await openImage(ref));
    return await fn(images);
  } finally {
    await Promise.all(images.map((i) => i.close()));
  }
}

type BuildOptions = Parameters<typeof buildBundle>[0];

/** buildBundle from the images at `from` to the image at `to`. */
export function buildBundleBetween(
  from: string[],
  to: string,
  options: Omit<BuildOptions, "target" | "sources">,
): ReturnType<typeof buildBundle> {
  return withImages([to, ...from], ([target, ...sources]) =>
    buildBundle({ ...options, target: target!, sources }),
  );
}

export interface ApplyFromImagesOptions extends Omit<ApplyBundleOptions, "layers" | "write" | "scratchDir"> {
  /** Images on disk whose layers the device holds. */
  from: string[];
  /** Where the rebuilt image goes, as writeImage names it: `docker-archive:…`, `oci:…`. */
  dest: string;
  /** Scratch space for the layer provider and the apply. */
  scratchDir: string;
}

/** applyBundle with the layers of the images at `from`, writing the rebuilt image to `dest`. */
export function applyFromImages(options: ApplyFromImagesOptions): Promise<ApplyResult> {
  const { from, dest, ...apply } = options;
  return withImages(from, async (images) => {
    const provider = new ImageLayerProvider(images, options.scratchDir);
    try {
      return await applyBundle({
        ...apply,
        layers: provider,
        write: async (image) => {
          const written = await writeImage(dest, image);
          return { image: written.path, digest: written.manifestDigest, bytesWritten: 0 };
        },
      });
    } finally {
      await provider.close();
    }
  });
}

/** Applies `bundle` with nothing on the device (a first image) into a docker-archive at `dest`. */
export function applyFirstImage(
  bundle: string,
  key: SigningKey,
  dest: string,
  scratchDir: string,
): Promise<ApplyResult> {
  return applyFromImages({
    bundle,
    trust: [key],
    from: [],
    dest: `docker-archive:${dest}`,
    scratchDir,
    skipDiskCheck: true,
  });
}

/** Each of the image's layers reads back as a tar with the same sha256 as the one expected. */
export async function assertLayerTars(image: ImageReader, expected: readonly Uint8Array[]): Promise<void> {
  for (let i = 0; i < expected.length; i++) {
    const parts: Uint8Array[] = [];
    for await (const chunk of await image.openLayerTar(i)) parts.push(chunk);
    assert.equal(sha256(Buffer.concat(parts)), sha256(expected[i]!));
  }
}

/**
 * Rewrites a one-layer bundle (`head` read from it) with another payload for its layer, the
 * manifest's length and sha256 updated and signed by `key`: what a cloud with a bug would send.
 * `codec`, if given, replaces the layer's codec too.
 */
export function resignWithPayload(
  bundle: string,
  head: BundleHead,
  payload: Uint8Array,
  key: SigningKey,
  codec?: LayerPayload["codec"],
): void {
  const entry = head.manifest.layers[0] as LayerPayload;
  const layer = {
    ...entry,
    ...(codec !== undefined ? { codec } : {}),
    length: payload.length,
    sha256: `sha256:${createHash("sha256").update(payload).digest("hex")}`,
  };
  const manifest = encodeManifest({ ...head.manifest, layers: [layer] });
  writeFileSync(
    bundle,
    Buffer.concat([
      encodeHeader({
        manifestLength: manifest.length,
        signatureLength: SIGNATURE_BLOCK_SIZE,
        payloadsLength: payload.length,
      }),
      manifest,
      encodeSignatureBlock(signManifest(manifest, key)),
      payload,
    ]),
  );
}
