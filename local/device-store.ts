/**
 * Where a simulated device keeps its images: its own `docker-registry` (as an IoT Edge device's
 * registry module), or an OCI layout folder when that package is missing or `--store oci` asks
 * for it. Either way the device starts with byte-exact copies of the container registry's
 * images (what a first `docker pull` left), the edge module gets the settings to use it, and the
 * demo reads the rebuilt images back from it to verify them.
 */
import { mkdir } from "node:fs/promises";
import { openOciLayout } from "../delta/image/oci-layout.js";
import { openRegistryImage, pushImage } from "../delta/image/registry.js";
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

/** A device registry: pushed gzip-compressed, as the container registry holds it, so the digests match. */
export async function registryStore(registry: TestRegistry): Promise<DeviceStore> {
  // The module checks free space where the registry stores blobs; an empty registry has not made it yet.
  await mkdir(registry.storageDir, { recursive: true });
  return {
    kind: "registry",
    location: registry.host,
    moduleEnv: { DELTASHIP_REGISTRY: registry.host, DELTASHIP_REGISTRY_STORAGE: registry.storageDir },
    async hold(sample) {
      const pushed = await pushImage(`${registry.host}/${sample.name}`, sample.image, {
        compression: "gzip",
      });
      return pushed.manifestDigest;
    },
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
