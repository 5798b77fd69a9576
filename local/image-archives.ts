/**
 * Real images for the demo, from files a DevOps engineer already has: a docker-archive
 * (`docker save`, `skopeo copy … docker-archive:FILE:repo:tag`) or an OCI layout folder
 * (`skopeo copy … oci:DIR:tag`), each optionally followed by `:name` to pick one image of several.
 * Each image keeps the repository and tag it was saved with; those are the names it is deployed
 * under. Readers stay open for the run: layers stream from the file whenever they are pushed.
 */
import { resolve } from "node:path";
import { locateImage, openImage } from "../delta/image/open.js";
import type { ImageReader, LayerToWrite } from "../delta/image/types.js";
import type { SampleImage } from "./sample-images.js";

/** A path given with --image, --from or --holds that does not name a usable image: the user's to fix. */
export class ImageOptionError extends Error {
  override name = "ImageOptionError";
}

export interface OpenedArchives {
  /** One entry per distinct path given, in the order first given. */
  readonly byPath: ReadonlyMap<string, SampleImage>;
  close(): Promise<void>;
}

async function uncompressedSize(reader: ImageReader, index: number): Promise<number> {
  let size = 0;
  for await (const chunk of await reader.openLayerTar(index)) size += chunk.length;
  return size;
}

/** Opens one image; `option` (`--image`, `--holds ship-1=`) names where the path came from in errors. */
async function openArchive(
  path: string,
  option: string,
): Promise<{ sample: SampleImage; reader: ImageReader }> {
  let location: Awaited<ReturnType<typeof locateImage>>;
  try {
    location = await locateImage(path);
  } catch (error) {
    throw new ImageOptionError(`${option} ${path}: ${(error as Error).message}`);
  }
  if (location.kind === "registry") {
    throw new ImageOptionError(
      `${option} ${path}: no such file or folder; give a docker-archive file (docker save, skopeo copy … docker-archive:FILE:repo:tag) or an OCI layout folder`,
    );
  }
  let reader: ImageReader;
  try {
    reader = await openImage(path);
  } catch (error) {
    throw new ImageOptionError(
      `${option} ${path} is not a readable container image (docker-archive or OCI layout): ${(error as Error).message}`,
    );
  }
  try {
    const { repository, tag } = reader.info;
    if (repository === "" || tag === "") {
      throw new ImageOptionError(
        `${option} ${path} holds an image without a repository:tag name; save it with one (docker save repo:tag, skopeo copy … oci:DIR:repo:tag)`,
      );
    }
    const layers: LayerToWrite[] = [];
    for (const [i, layer] of reader.info.layers.entries()) {
      const size =
        layer.compression === "none"
          ? layer.size
          : await uncompressedSize(reader, i).catch((error: Error) => {
              throw new ImageOptionError(`${option} ${path}: layer ${i} cannot be read: ${error.message}`);
            });
      layers.push({ diffId: layer.diffId, size, open: () => reader.openLayerTar(i) });
    }
    return {
      sample: {
        name: `${repository}:${tag}`,
        image: { repository, tag, config: reader.info.config, layers },
      },
      reader,
    };
  } catch (error) {
    await reader.close();
    throw error;
  }
}

/**
 * Opens every distinct path of `paths` (each with the option it came from). Two paths holding
 * different images under one name are refused: the device could not tell them apart.
 */
export async function openImageArchives(
  paths: readonly { path: string; option: string }[],
): Promise<OpenedArchives> {
  const byPath = new Map<string, SampleImage>();
  const readers: ImageReader[] = [];
  const byName = new Map<string, { path: string; configDigest: string }>();
  const close = async () => {
    await Promise.all(readers.map((r) => r.close()));
  };
  try {
    for (const { path, option } of paths) {
      const key = resolve(path);
      if (byPath.has(key)) continue;
      const { sample, reader } = await openArchive(path, option);
      readers.push(reader);
      const same = byName.get(sample.name);
      if (same !== undefined && same.configDigest !== reader.info.configDigest) {
        throw new ImageOptionError(
          `${same.path} and ${path} both hold an image named ${sample.name}, with different contents; give each version its own tag`,
        );
      }
      byName.set(sample.name, { path, configDigest: reader.info.configDigest });
      byPath.set(key, sample);
    }
  } catch (error) {
    await close();
    throw error;
  }
  return { byPath, close };
}
