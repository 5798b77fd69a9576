/** buildBundle: builds one content-addressed bundle, unless it already exists. Retried by the orchestration. */
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { buildBundle as buildBundleFile } from "../delta/bundle/diff.js";
import type { ImageReader } from "../delta/image/types.js";
import { parseImageIndex } from "../delta/index/index.js";
import { sourceSetHash } from "../state/blobs.js";
import type { ActivityDeps } from "./deps.js";
import type { BuildBundleInput, BuildBundleOutput } from "./names.js";

export async function buildBundle(
  input: BuildBundleInput,
  deps: Pick<ActivityDeps, "blobs" | "state" | "registry" | "signingKey" | "scratchDir">,
  now: () => Date = () => new Date(),
): Promise<BuildBundleOutput> {
  const { bundle } = input;
  const hash = sourceSetHash(bundle.sourceLayers, bundle.presentLayers ?? []);
  const existing = await deps.blobs.bundleSize(bundle.bundleId);
  if (existing !== undefined) {
    // Content-addressed: a blob under this name is this bundle (uploads are whole or absent).
    await recordRow(deps, bundle.targetDigest, hash, bundle.bundleId, existing, bundle.sourceDigests, now());
    return { bundleId: bundle.bundleId, size: existing, built: false };
  }
  const indexOf = async (digest: string) =>
    parseImageIndex(JSON.stringify(await deps.blobs.readIndex(digest)));
  const repositoryOf = async (digest: string) => (await indexOf(digest)).repository;
  const opened: ImageReader[] = [];
  const dir = await mkdtemp(join(deps.scratchDir ?? tmpdir(), "deltaship-bundle-"));
  try {
    // The tag the image was indexed under travels in the bundle: the device pushes the image under it.
    const targetIndex = await indexOf(bundle.targetDigest);
    const target = await deps.registry.open(targetIndex.repository, bundle.targetDigest, targetIndex.tag);
    opened.push(target);
    const sources: ImageReader[] = [];
    for (const digest of bundle.sourceDigests) {
      const source = await deps.registry.open(await repositoryOf(digest), digest);
      opened.push(source);
      sources.push(source);
    }
    const out = join(dir, "bundle");
    const built = await buildBundleFile({
      target,
      sources,
      key: deps.signingKey,
      out,
      sourceLayers: bundle.sourceLayers,
      scratchDir: dir,
    });
    const size = await deps.blobs.uploadBundle(bundle.bundleId, built.path);
    await recordRow(deps, bundle.targetDigest, hash, bundle.bundleId, size, bundle.sourceDigests, now());
    return { bundleId: bundle.bundleId, size, built: true };
  } finally {
    for (const image of opened) await image.close();
    await rm(dir, { recursive: true, force: true });
  }
}

function recordRow(
  deps: Pick<ActivityDeps, "state">,
  targetDigest: string,
  sourceSetHash: string,
  bundleId: string,
  size: number,
  sourceDigests: string[],
  at: Date,
) {
  return deps.state.bundles.record({
    targetDigest,
    sourceSetHash,
    bundleId,
    size,
    createdAt: at.toISOString(),
    sourceDigests: JSON.stringify(sourceDigests),
  });
}
