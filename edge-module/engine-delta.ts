/**
 * `EdgeEngine` on the real image engine: bundle header and signature from `delta/bundle`, the
 * apply path of `delta/bundle/apply.ts` with the device's image store (a local registry or an
 * OCI layout folder) as layer provider and as the writer (blobs first, the tag last). Layers the
 * store already holds are reused, not written again.
 */
import { applyBundle, ImageLayerProvider, openVerifiedBundle } from "../delta/bundle/apply.js";
import { loadTrustedKey, type TrustedKey } from "../delta/bundle/sign.js";
import type { ImageReader } from "../delta/image/types.js";
import { declaredLength, hasUnfilledBlock, readHead } from "./bundle-file.js";
import type { EdgeEngine, RebuiltImage, TrustedKeys } from "./engine.js";
import type { DeviceImageStore } from "./image-store.js";

/** Loads every configured key; a key that does not load is named in the error, not skipped silently. */
export function loadTrust(keys: TrustedKeys): TrustedKey[] {
  return Object.entries(keys).map(([label, material]) => {
    try {
      return loadTrustedKey(material);
    } catch (error) {
      throw new Error(`trusted key "${label}" cannot be loaded: ${(error as Error).message}`);
    }
  });
}

export function createDeltaEngine(store: DeviceImageStore): EdgeEngine {
  return {
    declaredLength,
    readHead,
    hasUnfilledBlock,

    async verifySignature(path, trust) {
      await openVerifiedBundle(path, loadTrust(trust));
    },

    async missingSourceLayers(head) {
      const held = await store.layersByDiffId();
      return head.sourceLayers.filter((diffId) => !held.has(diffId));
    },

    async rebuild(path, trust, scratchDir, beforePush): Promise<RebuiltImage> {
      const held = await store.layersByDiffId();
      const images: ImageReader[] = [];
      const seen = new Set<string>();
      try {
        for (const layer of held.values()) {
          if (seen.has(layer.image)) continue;
          seen.add(layer.image);
          images.push(await store.openImage(layer.image));
        }
      } catch (error) {
        await Promise.all(images.map((image) => image.close()));
        throw error;
      }
      const provider = new ImageLayerProvider(images, scratchDir);
      try {
        const result = await applyBundle({
          bundle: path,
          trust: loadTrust(trust),
          layers: provider,
          scratchDir,
          // The module checked scratch and store space itself, with its configured reserve.
          skipDiskCheck: true,
          write: async (image) => {
            beforePush();
            const digest = await store.store(image, held);
            const bytesWritten =
              image.config.length + image.layers.reduce((sum, layer) => sum + layer.size, 0);
            return { image: `${image.repository}:${image.tag}`, digest, bytesWritten };
          },
        });
        return { digest: result.digest, bytesWritten: result.bytesWritten };
      } finally {
        await provider.close();
        await Promise.all(images.map((image) => image.close()));
      }
    },

    digestOf: (repository, tag) => store.digestOf(repository, tag),
    inventory: () => store.inventory(),
  };
}
