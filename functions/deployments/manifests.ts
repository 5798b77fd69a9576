// Named deployment manifests: JSON blobs in the manifests container.

import type { ContainerClient } from "@azure/storage-blob";
import { InvalidRequestError } from "./request.js";

/** Largest manifest blob read: IoT Edge limits a deployment to far less, so a bigger blob is a mistake. */
export const MAX_MANIFEST_BYTES = 1024 * 1024;

/** The manifest blob's JSON, or undefined when the blob does not exist; InvalidRequestError when unusable. */
export async function readManifestBlob(
  container: ContainerClient,
  name: string,
): Promise<unknown | undefined> {
  const blob = container.getBlockBlobClient(name);
  let bytes: Buffer;
  try {
    const properties = await blob.getProperties();
    if ((properties.contentLength ?? 0) > MAX_MANIFEST_BYTES) {
      throw new InvalidRequestError(
        "manifestName",
        `manifest blob ${name} is ${properties.contentLength} bytes, over the ${MAX_MANIFEST_BYTES}-byte limit; trim the manifest`,
      );
    }
    bytes = await blob.downloadToBuffer();
  } catch (error) {
    if ((error as { statusCode?: number }).statusCode === 404) return undefined;
    throw error;
  }
  try {
    return JSON.parse(bytes.toString("utf8"));
  } catch (error) {
    throw new InvalidRequestError(
      "manifestName",
      `manifest blob ${name} is not JSON (${(error as Error).message}); upload a deployment.json`,
    );
  }
}
