/**
 * `EdgeEngine` on the real image engine: bundle header and signature from `delta/bundle`, the
 * apply path of `delta/bundle/apply.ts` with the local registry as layer provider, and
 * `pushImage` (blobs first, manifest last) as the writer. Layers the registry already holds
 * are mounted, not uploaded again.
 */
import { applyBundle, ImageLayerProvider, openVerifiedBundle } from "../delta/bundle/apply.js";
import { loadTrustedKey, type TrustedKey } from "../delta/bundle/sign.js";
import {
  type LayerToPush,
  openRegistryImage,
  pushImage,
  type RegistryImage,
} from "../delta/image/registry.js";
import { declaredLength, hasUnfilledBlock, readHead } from "./bundle-file.js";
import type { EdgeEngine, RebuiltImage, TrustedKeys } from "./engine.js";
import type { LocalRegistry } from "./local-registry.js";

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

export function createDeltaEngine(registry: LocalRegistry): EdgeEngine {
  return {
    declaredLength,
    readHead,
    hasUnfilledBlock,

    async verifySignature(path, trust) {
      await openVerifiedBundle(path, loadTrust(trust));
    },

    async missingSourceLayers(head) {
      const held = await registry.layersByDiffId();
      return head.sourceLayers.filter((diffId) => !held.has(diffId));
    },

    async rebuild(path, trust, scratchDir, beforePush): Promise<RebuiltImage> {
      const client = registry.client;
      const held = await registry.layersByDiffId(client);
      const images: RegistryImage[] = [];
      const seen = new Set<string>();
      for (const layer of held.values()) {
        if (seen.has(layer.image)) continue;
        seen.add(layer.image);
        images.push(await openRegistryImage(`${registry.host}/${layer.image}`, { client }));
      }
      const provider = new ImageLayerProvider(images, scratchDir);
      try {
        const result = await applyBundle({
          bundle: path,
          trust: loadTrust(trust),
          layers: provider,
          scratchDir,
          // The module checked scratch and registry space itself, with its configured reserve.
          skipDiskCheck: true,
          write: async (image) => {
            beforePush();
            const layers: LayerToPush[] = image.layers.map((layer) => {
              const existing = held.get(layer.diffId);
              return existing
                ? {
                    diffId: existing.diffId,
                    digest: existing.digest,
                    size: existing.size,
                    mediaType: existing.mediaType,
                    repository: existing.repository,
                  }
                : layer;
            });
            const pushed = await pushImage(
              registry.reference(image.repository, image.tag),
              { config: image.config, layers },
              { client },
            );
            const bytesWritten =
              image.config.length + image.layers.reduce((sum, layer) => sum + layer.size, 0);
            return { image: `${image.repository}:${image.tag}`, digest: pushed.manifestDigest, bytesWritten };
          },
        });
        return { digest: result.digest, bytesWritten: result.bytesWritten };
      } finally {
        await provider.close();
        await Promise.all(images.map((image) => image.close()));
      }
    },

    digestOf: (repository, tag) => registry.digestOf(repository, tag),
    inventory: () => registry.inventory(),
  };
}
