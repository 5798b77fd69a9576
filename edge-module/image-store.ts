/**
 * The device's image store as the engine sees it: a local registry (`local-registry.ts`) or an
 * OCI image layout folder (`local-layout.ts`). Either one lists its tagged images, finds a held
 * layer by diff_id, opens the image holding it for reading, and stores a rebuilt image under its
 * tag, blobs first and the name last.
 */
import type { ImageReader, ImageToWrite, LayerInfo } from "../delta/image/types.js";

export interface HeldLayer extends LayerInfo {
  /** A repository that holds the blob. */
  readonly repository: string;
  /** `repository:tag` of an image using it, for messages and to open it. */
  readonly image: string;
}

export interface DeviceImageStore {
  /** Where the images live, for messages: `127.0.0.1:5000` or `/var/lib/images`. */
  readonly location: string;
  /** Every tagged image and its manifest digest. */
  inventory(): Promise<{ image: string; digest: string }[]>;
  digestOf(repository: string, tag: string): Promise<string | undefined>;
  /** Every layer of every tagged image, by diff_id (first holder wins). */
  layersByDiffId(): Promise<Map<string, HeldLayer>>;
  /** Opens a tagged image (`repository:tag`) for reading; the caller closes it. */
  openImage(image: string): Promise<ImageReader>;
  /**
   * Stores a verified image under its repository and tag: the layers in `held` are reused where
   * they lie, the others written from their streams; the tag moves last. Returns the manifest digest.
   */
  store(image: ImageToWrite, held: ReadonlyMap<string, HeldLayer>): Promise<string>;
}
