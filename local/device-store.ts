/**
 * Where a simulated device keeps its images: its own `docker-registry` (as an IoT Edge device's
 * registry module), or an OCI layout folder when that package is missing or `--store oci` asks
 * for it. Either way the device starts with byte-exact copies of the container registry's
 * images (what a first `docker pull` left), the edge module gets the settings to use it, and the
 * demo reads the rebuilt images back from it to verify them.
 */
import { mkdir } from "node:fs/promises";
import { openOciLayout } from "../delta/image/oci-layout.js";
import { openRegistryImage, RegistryClient } from "../delta/image/registry.js";
import type { ImageReader } from "../delta/image/types.js";
import type { SampleImage } from "./sample-images.js";
import type { LayoutRegistry } from "./services/layout-registry.js";
import type { TestRegistry } from "./services/registry.js";

export type StoreKind = "registry" | "oci";

export interface DeviceStore {
  readonly kind: StoreKind;
  /** `127.0.0.1:PORT` or the layout folder, for messages. */
  readonly location: string;
  /** The edge module's settings for this store. */
  readonly moduleEnv: Record<string, string>;
  /** Puts the container registry's copy of `sample` on the device; returns its manifest digest there. */
  hold(sample: SampleImage): Promise<string>;
  /** Opens the image the device holds under `repository:tag`; the caller closes it. */
  open(name: string): Promise<ImageReader>;
}

/**
 * Copies an image blob for blob from one registry to another, manifest bytes unchanged (as a pull
 * and push would), so it keeps its digest; blobs the target has are not sent again.
 */
async function copyRegistryImage(fromHost: string, toHost: string, name: string): Promise<string> {
  const source = await openRegistryImage(`${fromHost}/${name}`);
  const target = new RegistryClient(toHost, { insecure: true });
  try {
    const repository = source.reference.repository;
    const blobs = [
      { digest: source.info.configDigest, size: source.info.config.length },
      ...source.info.layers.map((l) => ({ digest: l.digest, size: l.size })),
    ];
    for (const blob of blobs) {
      if ((await target.blobSize(repository, blob.digest)) !== undefined) continue;
      await target.uploadBlob(
        repository,
        await source.client.openBlob(repository, blob.digest, blob.size),
        blob,
      );
    }
    return await target.putManifest(
      repository,
      source.reference.tag ?? "latest",
      source.manifest.bytes,
      source.manifest.mediaType,
    );
  } finally {
    target.close();
    await source.close();
  }
}

/** A device registry: images copied blob for blob from the container registry, so the digests match. */
export async function registryStore(
  registry: TestRegistry,
  containerRegistryHost: string,
): Promise<DeviceStore> {
  // The module checks free space where the registry stores blobs; an empty registry has not made it yet.
  await mkdir(registry.storageDir, { recursive: true });
  return {
    kind: "registry",
    location: registry.host,
    moduleEnv: { DELTASHIP_REGISTRY: registry.host, DELTASHIP_REGISTRY_STORAGE: registry.storageDir },
    hold: (sample) => copyRegistryImage(containerRegistryHost, registry.host, sample.name),
    open: (name) => openRegistryImage(`${registry.host}/${name}`),
  };
}

/** A device layout folder: images copied blob for blob from the container registry's layout. */
export async function layoutStore(dir: string, registry: LayoutRegistry): Promise<DeviceStore> {
  await mkdir(dir, { recursive: true });
  return {
    kind: "oci",
    location: dir,
    moduleEnv: { DELTASHIP_IMAGE_LAYOUT: dir },
    hold: (sample) => registry.copyImage(sample.name, dir),
    open: (name) => openOciLayout(dir, { tag: name }),
  };
}
