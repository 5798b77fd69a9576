/**
 * The device's local registry as the module sees it: which images are tagged (the inventory),
 * and which layer (by diff_id) lives in which repository, so bundles can name their source
 * layers by diff_id and the engine can read or mount them.
 */
import {
  type LayerToPush,
  openRegistryImage,
  pushImage,
  RegistryClient,
  type RegistryImage,
} from "../delta/image/registry.js";
import type { ImageToWrite } from "../delta/image/types.js";
import type { DeviceImageStore, HeldLayer } from "./image-store.js";

export type { HeldLayer } from "./image-store.js";

/** Tags listed per repository beyond this are ignored: a device registry holds a handful. */
const MAX_TAGS_PER_REPOSITORY = 500;

export class LocalRegistry implements DeviceImageStore {
  /** One client for the module's life: its kept-alive connections are reused across bundles. */
  readonly client: RegistryClient;

  /** `host:port` (no scheme); plain http, as a registry on the device's own network serves. */
  constructor(readonly host: string) {
    this.client = new RegistryClient(host, { insecure: true });
  }

  /** Accepts `host:port` or `http://host:port`. */
  static fromAddress(address: string): LocalRegistry {
    return new LocalRegistry(address.replace(/^https?:\/\//, "").replace(/\/+$/, ""));
  }

  get location(): string {
    return this.host;
  }

  reference(repository: string, tag: string): string {
    return `${this.host}/${repository}:${tag}`;
  }

  async digestOf(repository: string, tag: string): Promise<string | undefined> {
    return this.client.resolveDigest(repository, tag);
  }

  async images(client = this.client): Promise<{ repository: string; tag: string }[]> {
    const out: { repository: string; tag: string }[] = [];
    for (const repository of (await client.listRepositories()).sort()) {
      const tags = (await client.listTags(repository)).sort().slice(0, MAX_TAGS_PER_REPOSITORY);
      for (const tag of tags) out.push({ repository, tag });
    }
    return out;
  }

  async inventory(): Promise<{ image: string; digest: string }[]> {
    const client = this.client;
    const out: { image: string; digest: string }[] = [];
    for (const { repository, tag } of await this.images(client)) {
      const digest = await client.resolveDigest(repository, tag);
      if (digest) out.push({ image: `${repository}:${tag}`, digest });
    }
    return out;
  }

  /** Every layer of every tagged image, by diff_id (first holder wins). */
  async layersByDiffId(client = this.client): Promise<Map<string, HeldLayer>> {
    const layers = new Map<string, HeldLayer>();
    for (const { repository, tag } of await this.images(client)) {
      const image = await openRegistryImage(this.reference(repository, tag), { client });
      try {
        for (const layer of image.info.layers) {
          if (!layers.has(layer.diffId))
            layers.set(layer.diffId, { ...layer, repository, image: `${repository}:${tag}` });
        }
      } finally {
        await image.close();
      }
    }
    return layers;
  }

  openImage(image: string): Promise<RegistryImage> {
    return openRegistryImage(`${this.host}/${image}`, { client: this.client });
  }

  /** Pushes blobs first and the manifest last; held layers are mounted from their repository, not uploaded. */
  async store(image: ImageToWrite, held: ReadonlyMap<string, HeldLayer>): Promise<string> {
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
      this.reference(image.repository, image.tag),
      { config: image.config, layers },
      { client: this.client },
    );
    return pushed.manifestDigest;
  }
}
