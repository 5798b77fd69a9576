/**
 * Test images built from real files of this machine (/usr/bin, /usr/lib) with our tar writer
 * and written by our docker-archive writer: a base layer, application layers and their updates.
 */
import { createHash } from "node:crypto";
import { readdirSync, readFileSync, statSync } from "node:fs";
import { writeImage } from "../../delta/image/open.js";
import type { ImageToWrite } from "../../delta/image/types.js";
import { buildTar, type TarWriterEntry } from "../../delta/tar/writer.js";

export function sha256(bytes: Uint8Array): string {
  return `sha256:${createHash("sha256").update(bytes).digest("hex")}`;
}

/** Regular files of `dir` (sorted, no recursion) up to `limit` files and `maxBytes` in total. */
export function realFiles(
  dir: string,
  prefix: string,
  options: { limit: number; maxFile?: number; maxBytes?: number; skip?: number },
): TarWriterEntry[] {
  const out: TarWriterEntry[] = [];
  let total = 0;
  let skipped = 0;
  for (const name of readdirSync(dir).sort()) {
    const path = `${dir}/${name}`;
    const info = statSync(path, { throwIfNoEntry: false });
    if (info === undefined || !info.isFile() || info.size === 0 || info.size > (options.maxFile ?? 2_000_000))
      continue;
    if (skipped++ < (options.skip ?? 0)) continue;
    if (total + info.size > (options.maxBytes ?? Number.POSITIVE_INFINITY)) break;
    out.push({ path: `${prefix}/${name}`, type: "file", content: readFileSync(path), mode: 0o755 });
    total += info.size;
    if (out.length >= options.limit) break;
  }
  return out;
}

/** A "patch release" of a binary: a few bytes inserted near the start (shifting the rest) and some scattered changes. */
export function patched(content: Uint8Array, seed: number): Uint8Array {
  const out = Buffer.concat([
    content.subarray(0, 1000),
    Buffer.from(`patch ${seed}`),
    content.subarray(1000),
  ]);
  for (let i = 0; i < 20; i++) {
    const at = 2000 + ((seed * 7919 + i * 104729) % Math.max(1, out.length - 2000));
    out[at] = (out[at]! + 1) & 0xff;
  }
  return out;
}

export function withContent(entry: TarWriterEntry, content: Uint8Array): TarWriterEntry {
  return { ...entry, content };
}

/** An image config that names the layers' diff_ids, like the ones Docker writes. */
export function imageOf(repository: string, tag: string, layers: readonly Uint8Array[]): ImageToWrite {
  const config = new TextEncoder().encode(
    JSON.stringify({
      architecture: "amd64",
      os: "linux",
      config: { Cmd: ["/usr/bin/app"], Env: [`VERSION=${tag}`] },
      rootfs: { type: "layers", diff_ids: layers.map(sha256) },
    }),
  );
  return {
    repository,
    tag,
    config,
    layers: layers.map((tar) => ({
      diffId: sha256(tar),
      size: tar.length,
      async open() {
        return (async function* () {
          yield tar;
        })();
      },
    })),
  };
}

export async function writeArchive(path: string, image: ImageToWrite): Promise<string> {
  await writeImage(`docker-archive:${path}`, image);
  return path;
}

export { buildTar };
