/**
 * Local mode without Debian's `docker-registry`: the container registry is an OCI image layout
 * folder, and the activities read it through the same `ImageRegistry` interface as ACR
 * (`activities/deps.ts`). Images are named by their full `repository:tag` (the ref name
 * annotation), stored gzip-compressed as a pull would fetch them. A device's layout gets a
 * byte-exact copy of an image (`copyImage`), as `skopeo copy` from ACR would make, so the device
 * reports the registry's manifest digest.
 */
import { copyFile, mkdir, readFile, rename, stat, writeFile } from "node:fs/promises";
import { join } from "node:path";
import type { ImageRegistry } from "../../activities/deps.js";
import { imageLabels } from "../../config/priorities.js";
import { digestHex } from "../../delta/image/digest.js";
import {
  type Descriptor,
  MediaType,
  parseIndex,
  REF_NAME_ANNOTATION,
  splitImageName,
} from "../../delta/image/oci.js";
import {
  OCI_LAYOUT_FILE,
  type OciLayoutReader,
  openOciLayout,
  writeOciLayout,
} from "../../delta/image/oci-layout.js";
import type { ImageToWrite } from "../../delta/image/types.js";

/** The host part image references carry in layout mode; no server answers it, the activities read the folder. */
export const LAYOUT_REGISTRY_HOST = "registry.deltaship.local";

function blobPath(dir: string, digest: string): string {
  return join(dir, "blobs", "sha256", digestHex(digest));
}

async function readIndex(dir: string): Promise<Descriptor[]> {
  const path = join(dir, "index.json");
  const bytes = await readFile(path).catch(() => undefined);
  return bytes === undefined ? [] : parseIndex(bytes, path);
}

export class LayoutRegistry {
  constructor(readonly dir: string) {}

  /** Stores an image under `repository:tag`, layers gzip-compressed; returns its manifest digest. */
  async push(name: string, image: ImageToWrite): Promise<string> {
    const written = await writeOciLayout(this.dir, image, { tag: name, compression: "gzip" });
    return written.digest;
  }

  /** The image under `repository:tag`, or the one whose manifest has `digest`. */
  async open(name: string | undefined, digest?: string): Promise<OciLayoutReader> {
    const entries = await readIndex(this.dir);
    const found = entries.find(
      (d) =>
        (name === undefined || d.annotations?.[REF_NAME_ANNOTATION] === name) &&
        (digest === undefined || d.digest === digest),
    );
    const ref = found?.annotations?.[REF_NAME_ANNOTATION];
    if (found === undefined || ref === undefined) {
      const held = entries.map((d) => `${d.annotations?.[REF_NAME_ANNOTATION] ?? "unnamed"} (${d.digest})`);
      throw new Error(
        `the local registry ${this.dir} has no image ${name ?? ""}${digest ? `@${digest}` : ""}; it holds ${held.join(", ") || "nothing"}`,
      );
    }
    return openOciLayout(this.dir, { tag: ref });
  }

  /** The activities' view of this folder, in place of ACR. */
  imageRegistry(): ImageRegistry {
    return {
      resolve: async (ref) => {
        const at = ref.indexOf("@");
        const digest = at >= 0 ? ref.slice(at + 1) : undefined;
        const { repository, tag } = splitImageName(ref);
        const image = await this.open(tag ? `${repository}:${tag}` : undefined, digest);
        try {
          let fullBytes = image.info.config.length;
          for (const layer of image.info.layers) fullBytes += layer.size;
          return {
            repository: image.info.repository,
            tag: image.info.tag,
            digest: image.info.manifestDigest!,
            fullBytes,
            labels: imageLabels(image.info.config),
          };
        } finally {
          await image.close();
        }
      },
      open: (repository, digest, tag) => this.open(tag ? `${repository}:${tag}` : undefined, digest),
    };
  }

  /**
   * Copies the image named `name` blob for blob into the layout at `dest`, under the same name:
   * the same manifest bytes, so the same digest. Blobs first, index.json last.
   */
  async copyImage(name: string, dest: string): Promise<string> {
    const image = await this.open(name);
    await image.close();
    const manifestDigest = image.info.manifestDigest!;
    await mkdir(join(dest, "blobs", "sha256"), { recursive: true });
    await writeFile(join(dest, OCI_LAYOUT_FILE), '{"imageLayoutVersion":"1.0.0"}');
    for (const digest of [
      manifestDigest,
      image.info.configDigest,
      ...image.info.layers.map((l) => l.digest),
    ]) {
      await copyFile(blobPath(this.dir, digest), blobPath(dest, digest));
    }
    const size = (await stat(blobPath(dest, manifestDigest))).size;
    const others = (await readIndex(dest)).filter((d) => d.annotations?.[REF_NAME_ANNOTATION] !== name);
    const index = {
      schemaVersion: 2,
      mediaType: MediaType.ociIndex,
      manifests: [
        ...others,
        {
          mediaType: MediaType.ociManifest,
          digest: manifestDigest,
          size,
          annotations: { [REF_NAME_ANNOTATION]: name },
        },
      ],
    };
    await writeFile(join(dest, "index.json.tmp"), JSON.stringify(index));
    await rename(join(dest, "index.json.tmp"), join(dest, "index.json"));
    return manifestDigest;
  }
}
