/** What the module reads from a bundle file before trusting it: the declared length, then the head. */
import { createHash } from "node:crypto";
import { open } from "node:fs/promises";
import { farKeptBytes } from "../delta/bundle/apply.js";
import { HEADER_SIZE, isPresent, parseHeader, readBundleHead } from "../delta/bundle/format.js";
import type { BundleHead } from "./engine.js";

/**
 * A run of zeros this long inside the payloads means a preallocated file not filled yet: the
 * payloads are zstd frames, and zstd never stores that many zeros literally.
 */
export const UNFILLED_BLOCK_SIZE = 64 * 1024;

/**
 * The header's total length; `undefined` while fewer than the header's bytes have arrived or
 * the header is still zeros (a mover that preallocates the file). Throws when it is not a bundle.
 */
export async function declaredLength(path: string): Promise<number | undefined> {
  const handle = await open(path, "r");
  try {
    const bytes = new Uint8Array(HEADER_SIZE);
    const { bytesRead } = await handle.read(bytes, 0, HEADER_SIZE, 0);
    if (bytesRead < HEADER_SIZE || bytes.every((b) => b === 0)) return undefined;
    return parseHeader(bytes).totalLength;
  } finally {
    await handle.close();
  }
}

/** True when an aligned block of the payloads is all zeros: a hole the mover has not written yet. */
export async function hasUnfilledBlock(path: string): Promise<boolean> {
  const head = await readBundleHead(path);
  const handle = await open(path, "r");
  try {
    const block = new Uint8Array(UNFILLED_BLOCK_SIZE);
    const first = Math.ceil(head.payloadsOffset / UNFILLED_BLOCK_SIZE) * UNFILLED_BLOCK_SIZE;
    for (let at = first; at + UNFILLED_BLOCK_SIZE <= head.header.totalLength; at += UNFILLED_BLOCK_SIZE) {
      const { bytesRead } = await handle.read(block, 0, UNFILLED_BLOCK_SIZE, at);
      if (bytesRead === UNFILLED_BLOCK_SIZE && block.every((b) => b === 0)) return true;
    }
    return false;
  } finally {
    await handle.close();
  }
}

export async function readHead(path: string): Promise<BundleHead> {
  const head = await readBundleHead(path);
  const { manifest } = head;
  const held = new Map<string, number>();
  for (const source of manifest.sources) held.set(source.diffId, source.size);
  manifest.layers.forEach((entry, i) => {
    const layer = manifest.target.layers[i]!;
    if (isPresent(entry)) held.set(layer.diffId, layer.size);
  });
  const configBytes = Buffer.from(manifest.target.config, "base64").length;
  return {
    bundleId: `sha256:${createHash("sha256").update(head.manifestBytes).digest("hex")}`,
    declaredLength: head.header.totalLength,
    repository: manifest.target.repository,
    tag: manifest.target.tag,
    sourceDigest: manifest.target.manifestDigest,
    sourceLayers: [...held.keys()],
    outputBytes: manifest.target.layers.reduce((sum, layer) => sum + layer.size, 0) + configBytes,
    // Held layers are inflated into scratch once, then read by random access; far copies keep
    // the bytes they read there too.
    scratchBytes: [...held.values()].reduce((sum, size) => sum + size, 0) + (await farKeptBytes(path, head)),
  };
}
