/**
 * `deltaship diff --from IMAGE... --to IMAGE --key KEY --out BUNDLE`: builds the signed bundle
 * that rebuilds the target from the layers of the --from images (the images a device holds).
 */
import { readFile } from "node:fs/promises";
import { buildBundle, DEFAULT_ZSTD_LEVEL, DEFAULT_ZSTD_WINDOW_LOG } from "../delta/bundle/diff.js";
import { PAYLOAD_CODECS, type PayloadCodec } from "../delta/bundle/format.js";
import { loadSigningKey } from "../delta/bundle/sign.js";
import { openImage } from "../delta/image/open.js";
import type { ImageReader } from "../delta/image/types.js";
import {
  EXIT_OK,
  formatBytes,
  ProgressBar,
  parseArgs,
  registryOptions,
  reportError,
  UsageError,
  usageError,
} from "./bundle-args.js";

const USAGE = `usage: deltaship diff --to IMAGE --key KEY --out BUNDLE [--from IMAGE]... [options]

  --from IMAGE      an image the device holds (repeat for each); none: the bundle carries every layer
  --to IMAGE        the image to ship
  --key KEY         Ed25519 private key (PEM from 'deltaship keygen', or raw hex/base64)
  --out BUNDLE      where to write the bundle
  --level N         zstd level (default ${DEFAULT_ZSTD_LEVEL})
  --window-log N    zstd window log; the device needs 2^N bytes to decode (default ${DEFAULT_ZSTD_WINDOW_LOG}, at most 26)
  --codec NAME      payload codec: ref-zstd (default for layers with a source), vcdiff-zstd,
                    brotli-far, brotli-gz or brotli-x86 (default without a source, up to
                    256 MiB: repeats beyond Brotli's window as copies, .gz files as their text,
                    executables through the x86 filter; larger layers the zstd forms), brotli
                    (no filter), or zstd-far, zstd-gz, zstd-x86 and zstd (zstd instead of
                    Brotli: faster to build; with zstd-far --level 12 a first image diffs at
                    about 30 MB/s instead of 1.3, and its bundle is about 18% larger)
  --scratch DIR     scratch folder (default the system temp folder)
  --insecure        plain http for registries other than localhost
  --json            print the result as JSON

IMAGE is a docker-archive file, an OCI layout folder or a registry reference.`;

function integer(text: string | undefined, name: string, min: number, max: number): number | undefined {
  if (text === undefined) return undefined;
  const value = Number(text);
  if (!Number.isInteger(value) || value < min || value > max)
    throw new UsageError(`--${name} must be an integer from ${min} to ${max}, found '${text}'`);
  return value;
}

export async function run(args: string[]): Promise<number> {
  let opts: ReturnType<typeof parseArgs>;
  let level: number | undefined;
  let windowLog: number | undefined;
  let codec: PayloadCodec | undefined;
  try {
    opts = parseArgs(args, {
      values: ["from", "to", "key", "out", "level", "window-log", "scratch", "codec"],
      flags: ["json", "insecure", "help"],
    });
    if (opts.flags.has("help")) {
      console.log(USAGE);
      return EXIT_OK;
    }
    if (opts.positional.length > 0) throw new UsageError(`unexpected argument '${opts.positional[0]}'`);
    for (const name of ["to", "key", "out"])
      if (opts.one(name) === undefined) throw new UsageError(`--${name} is required`);
    level = integer(opts.one("level"), "level", -7, 22);
    windowLog = integer(opts.one("window-log"), "window-log", 10, 26);
    const codecName = opts.one("codec");
    if (codecName !== undefined && !(PAYLOAD_CODECS as readonly string[]).includes(codecName))
      throw new UsageError(`--codec must be one of ${PAYLOAD_CODECS.join(", ")}, found '${codecName}'`);
    codec = codecName as PayloadCodec | undefined;
  } catch (err) {
    return usageError("diff", USAGE, err);
  }
  const json = opts.flags.has("json");
  const bar = new ProgressBar();
  const images: ImageReader[] = [];
  try {
    const key = loadSigningKey(await readFile(opts.one("key")!, "utf8"));
    const registry = registryOptions(opts.flags.has("insecure"));
    const target = await openImage(opts.one("to")!, { registry });
    images.push(target);
    const sources: ImageReader[] = [];
    for (const ref of opts.values.get("from") ?? []) {
      const image = await openImage(ref, { registry });
      images.push(image);
      sources.push(image);
    }
    const scratch = opts.one("scratch");
    const result = await buildBundle({
      target,
      sources,
      key,
      out: opts.one("out")!,
      ...(level !== undefined ? { zstdLevel: level } : {}),
      ...(windowLog !== undefined ? { zstdWindowLog: windowLog } : {}),
      ...(codec !== undefined ? { codec } : {}),
      ...(scratch !== undefined ? { scratchDir: scratch } : {}),
      onProgress: (p) => bar.update(`${p.phase} ${p.diffId.slice(7, 19)}`, p.done, p.total),
    });
    bar.finish();
    const targetBytes = result.layers.reduce((n, l) => n + l.size, 0);
    if (json) {
      console.log(
        JSON.stringify({
          ok: true,
          out: result.path,
          bytes: result.bytes,
          targetBytes,
          keyId: key.keyId,
          layers: result.layers,
          sources: result.manifest.sources,
          durationMs: result.durationMs,
        }),
      );
    } else {
      console.log(
        `wrote ${result.path}: ${formatBytes(result.bytes)}, ${((100 * result.bytes) / Math.max(1, targetBytes)).toFixed(2)}% of the ${formatBytes(targetBytes)} target; ` +
          `${result.layers.filter((l) => l.present).length} layer(s) already on the device, ${result.layers.filter((l) => !l.present).length} sent, ` +
          `${result.manifest.sources.length} source layer(s) needed; key ${key.keyId}; ${(result.durationMs / 1000).toFixed(1)} s`,
      );
    }
    return EXIT_OK;
  } catch (err) {
    bar.finish();
    return reportError("diff", err, json);
  } finally {
    await Promise.all(images.map((i) => i.close()));
  }
}
