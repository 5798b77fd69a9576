/**
 * Test images built from real files of this machine (/usr/bin, /usr/lib) with our tar writer
 * and written by our docker-archive writer: a base layer, application layers and their updates.
 */
import { createHash } from "node:crypto";
import { readdirSync, readFileSync, statSync } from "node:fs";
import {
  type ApplyBundleOptions,
  type ApplyResult,
  applyBundle,
  ImageLayerProvider,
} from "../../delta/bundle/apply.js";
import { buildBundle } from "../../delta/bundle/diff.js";
import type { SigningKey } from "../../delta/bundle/sign.js";
import { openImage, writeImage } from "../../delta/image/open.js";
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

/**
 * Two versions of a two-layer image: a base of real executables and an app of real libraries,
 * then both updated (every fourth file patched).
 */
type TwoLayers = [base: Uint8Array, app: Uint8Array];
export async function twoLayerUpdate(): Promise<{ v1: TwoLayers; v2: TwoLayers }> {
  const bins = realFiles("/usr/bin", "usr/bin", { limit: 30, maxBytes: 3_000_000 });
  const libs = realFiles("/usr/lib/x86_64-linux-gnu", "usr/lib", { limit: 20, maxBytes: 3_000_000 });
  const update = (entries: typeof bins) =>
    entries.map((e, i) => (i % 4 === 1 ? withContent(e, patched(e.content!, i)) : e));
  const base = (files: typeof bins) =>
    buildTar([{ path: "usr", type: "directory" }, { path: "usr/bin", type: "directory" }, ...files]);
  const app = (files: typeof libs) => buildTar([{ path: "usr/lib", type: "directory" }, ...files]);
  return {
    v1: [await base(bins), await app(libs)],
    v2: [await base(update(bins)), await app(update(libs))],
  };
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

/** Builds a bundle from the archive `from` to the archive `to` at zstd level 3 (quick to build). */
export async function bundleBetween(
  from: string,
  to: string,
  key: SigningKey,
  out: string,
  scratchDir: string,
): Promise<void> {
  const target = await openImage(to);
  const source = await openImage(from);
  try {
    await buildBundle({ target, sources: [source], key, out, zstdLevel: 3, scratchDir });
  } finally {
    await Promise.all([target.close(), source.close()]);
  }
}

/** Applies a bundle with the layers of the archive `from` as the device's, no free-space check. */
export async function applyFromArchive(
  from: string,
  options: Omit<ApplyBundleOptions, "layers" | "skipDiskCheck"> & { readonly scratchDir: string },
): Promise<ApplyResult> {
  const image = await openImage(from);
  const provider = new ImageLayerProvider([image], options.scratchDir);
  try {
    return await applyBundle({ ...options, layers: provider, skipDiskCheck: true });
  } finally {
    await provider.close();
    await image.close();
  }
}

/** Every regular file under `dir` (sorted, recursive) as `prefix/relative/path`. */
export function treeFiles(dir: string, prefix: string): TarWriterEntry[] {
  const out: TarWriterEntry[] = [];
  const walk = (sub: string) => {
    for (const name of readdirSync(`${dir}${sub}`).sort()) {
      const rel = `${sub}/${name}`;
      const info = statSync(`${dir}${rel}`, { throwIfNoEntry: false });
      if (info === undefined) continue;
      if (info.isDirectory()) walk(rel);
      else if (info.isFile())
        out.push({ path: `${prefix}${rel}`, type: "file", content: readFileSync(`${dir}${rel}`) });
    }
  };
  walk("");
  return out;
}

/**
 * npm packages this checkout holds in two versions (nested node_modules), as [name, older dir,
 * newer dir]: real version bumps of real JavaScript, the shape of an application update.
 */
export const TWO_VERSION_PACKAGES: readonly (readonly [string, string, string])[] = (() => {
  const candidates: [string, string[]][] = [
    [
      "@azure/msal-common",
      [
        "node_modules/@azure/msal-node/node_modules/@azure/msal-common",
        "node_modules/tedious/node_modules/@azure/msal-common",
        "node_modules/@azure/msal-common",
      ],
    ],
    [
      "@azure/core-rest-pipeline",
      [
        "node_modules/applicationinsights/node_modules/@azure/core-rest-pipeline",
        "node_modules/@azure/core-rest-pipeline",
      ],
    ],
    [
      "@opentelemetry/core",
      [
        "node_modules/@opentelemetry/sdk-trace-web/node_modules/@opentelemetry/core",
        "node_modules/@opentelemetry/sdk-trace/node_modules/@opentelemetry/core",
        "node_modules/@azure/opentelemetry-instrumentation-azure-sdk/node_modules/@opentelemetry/core",
      ],
    ],
    ["iconv-lite", ["node_modules/tedious/node_modules/iconv-lite", "node_modules/iconv-lite"]],
    ["ws", ["node_modules/mqtt/node_modules/ws", "node_modules/ws"]],
    ["semver", ["node_modules/jsonwebtoken/node_modules/semver", "node_modules/semver"]],
    ["uuid", ["node_modules/azurite/node_modules/uuid", "node_modules/uuid"]],
  ];
  const out: [string, string, string][] = [];
  for (const [name, dirs] of candidates) {
    const found = dirs
      .filter((d) => statSync(`${d}/package.json`, { throwIfNoEntry: false }) !== undefined)
      .map((d) => ({
        d,
        v: (JSON.parse(readFileSync(`${d}/package.json`, "utf8")) as { version: string }).version,
      }));
    const versions = [...new Set(found.map((f) => f.v))];
    if (versions.length < 2) continue;
    const order = (v: string) => v.split(/[.-]/).map((p) => Number(p) || 0);
    found.sort((a, b) => {
      const x = order(a.v);
      const y = order(b.v);
      for (let i = 0; i < Math.max(x.length, y.length); i++)
        if ((x[i] ?? 0) !== (y[i] ?? 0)) return (x[i] ?? 0) - (y[i] ?? 0);
      return 0;
    });
    // Two adjacent versions: the smallest real step between them.
    out.push([name, found[found.length - 2]!.d, found[found.length - 1]!.d]);
  }
  return out;
})();

/** An application layer: the given packages at their older or newer versions, plus unchanged ones. */
export function appLayerEntries(version: "older" | "newer", unchanged: readonly string[]): TarWriterEntry[] {
  const entries: TarWriterEntry[] = [];
  for (const [name, older, newer] of TWO_VERSION_PACKAGES) {
    entries.push(...treeFiles(version === "older" ? older : newer, `app/node_modules/${name}`));
  }
  for (const name of unchanged)
    entries.push(...treeFiles(`node_modules/${name}`, `app/node_modules/${name}`));
  return entries;
}
