/**
 * What activities need from the outside world, passed in so each activity is a plain async
 * function that tests call against Azurite and local stand-ins.
 */
import type { EmailSender } from "../adapters/email.js";
import type { IotHubAdapter } from "../adapters/iothub.js";
import type { SigningKey } from "../delta/bundle/sign.js";
import type { ImageReader } from "../delta/image/types.js";
import type { BlobStore } from "../state/blobs.js";
import type { StateStore } from "../state/store.js";

/** The container registry module images live in (ACR in production). */
export interface ImageRegistry {
  /** Resolves a reference (tag or digest) to the image it names, with its config's labels (priority rules read them). */
  resolve(ref: string): Promise<{
    repository: string;
    tag: string;
    digest: string;
    fullBytes: number;
    labels?: Record<string, string>;
  }>;
  /** Opens an image pinned by digest; a tag, when given, names it (bundles carry it to devices). The caller closes it. */
  open(repository: string, digest: string, tag?: string): Promise<ImageReader>;
}

export interface ActivityDeps {
  state: StateStore;
  blobs: BlobStore;
  registry: ImageRegistry;
  iotHub: Pick<IotHubAdapter, "pushManifest">;
  email: EmailSender;
  signingKey: SigningKey;
  /** Where bundles are built before upload; the OS temp directory when absent. */
  scratchDir?: string;
}
