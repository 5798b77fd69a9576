/** The production ImageRegistry: ACR through the engine's registry client. */
import { imageLabels } from "../config/priorities.js";
import { openRegistryImage } from "../delta/image/registry.js";
import type { ImageRegistry } from "./deps.js";

export interface AcrSettings {
  /** `https://<name>.azurecr.io` */
  acrUrl: string;
  acrUsername: string;
  acrPassword: string;
}

export function acrRegistry(settings: AcrSettings): ImageRegistry {
  const host = new URL(settings.acrUrl).host;
  const options =
    settings.acrUsername !== ""
      ? { credentials: { username: settings.acrUsername, password: settings.acrPassword } }
      : {};
  return {
    async resolve(ref) {
      const image = await openRegistryImage(ref, options);
      try {
        const digest = image.info.manifestDigest;
        if (digest === undefined) throw new Error(`expected a manifest digest for ${ref}, found none`);
        let fullBytes = image.info.config.length;
        for (const layer of image.info.layers) fullBytes += layer.size;
        return {
          repository: image.reference.repository,
          tag: image.reference.tag ?? "",
          digest,
          fullBytes,
          labels: imageLabels(image.info.config),
        };
      } finally {
        await image.close();
      }
    },
    open(repository, digest, tag) {
      const name = tag ? `${repository}:${tag}` : repository;
      return openRegistryImage(`${host}/${name}@${digest}`, options);
    },
  };
}
