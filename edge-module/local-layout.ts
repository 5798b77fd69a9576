/**
 * The device's images in an OCI image layout folder instead of a registry (devices without a
 * registry module; local mode without Debian's docker-registry). Images are named by the full
 * `repository:tag` in the `org.opencontainers.image.ref.name` annotation, the form
 * `skopeo copy … oci:DIR:repository:tag` writes; layers the module rebuilds are stored as plain
 * tars, so they serve as random-access sources for the next bundle.
 */
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import {
  CONTAINERD_NAME_ANNOTATION,
  type Descriptor,
  parseIndex,
  REF_NAME_ANNOTATION,
} from "../delta/image/oci.js";
import { type OciLayoutReader, openOciLayout, writeOciLayout } from "../delta/image/oci-layout.js";
import type { ImageToWrite } from "../delta/image/types.js";
import type { DeviceImageStore, HeldLayer } from "./image-store.js";

/** Images listed beyond this are ignored: a device holds a handful. */
const MAX_LAYOUT_IMAGES = 2_000;

/** The name an index entry answers to: the full name when the writer left one, else its ref name. */
function nameOf(d: Descriptor): string | undefined {
  return d.annotations?.[CONTAINERD_NAME_ANNOTATION] ?? d.annotations?.[REF_NAME_ANNOTATION];
}

export class LocalLayout implements DeviceImageStore {
  constructor(readonly dir: string) {}

  get location(): string {
    return this.dir;
  }

  /** The layout's named entries; an absent index.json is an empty store (nothing deployed yet). */
  private async entries(): Promise<{ name: string; digest: string }[]> {
    const path = join(this.dir, "index.json");
    let bytes: Uint8Array;
    try {
      bytes = await readFile(path);
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === "ENOENT") return [];
      throw error;
    }
    const out: { name: string; digest: string }[] = [];
    for (const d of parseIndex(bytes, path).slice(0, MAX_LAYOUT_IMAGES)) {
      const name = nameOf(d);
      if (name !== undefined && name !== "") out.push({ name, digest: d.digest });
    }
    return out.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  }

  async inventory(): Promise<{ image: string; digest: string }[]> {
    return (await this.entries()).map((e) => ({ image: e.name, digest: e.digest }));
  }

  async digestOf(repository: string, tag: string): Promise<string | undefined> {
    const name = `${repository}:${tag}`;
    return (await this.entries()).find((e) => e.name === name)?.digest;
  }

  async layersByDiffId(): Promise<Map<string, HeldLayer>> {
    const layers = new Map<string, HeldLayer>();
    for (const { name } of await this.entries()) {
      const image = await this.openImage(name);
      for (const layer of image.info.layers) {
        if (!layers.has(layer.diffId)) {
          layers.set(layer.diffId, { ...layer, repository: image.info.repository, image: name });
        }
      }
    }
    return layers;
  }

  openImage(image: string): Promise<OciLayoutReader> {
    return openOciLayout(this.dir, { tag: image });
  }

  /**
   * Blobs first, index.json last (written to a temporary name and renamed), so a crash leaves the
   * previous image under the tag. Held layers are rewritten from their verified streams: a plain
   * tar lands on its own digest, so the blob is the same file content.
   */
  async store(image: ImageToWrite, _held: ReadonlyMap<string, HeldLayer>): Promise<string> {
    const written = await writeOciLayout(this.dir, image, { tag: `${image.repository}:${image.tag}` });
    return written.digest;
  }
}
