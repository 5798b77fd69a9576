/**
 * `deltaship apply BUNDLE --from IMAGE... --to DEST --trust PUBKEY`: checks the bundle's signature,
 * rebuilds the target image from the layers of the --from images, verifies every layer and the
 * config, and only then writes it: a docker-archive file, an OCI layout folder, or a registry.
 */
import { readFile } from "node:fs/promises";
import { applyBundle, ImageLayerProvider, type ImageWriter } from "../delta/bundle/apply.js";
import { loadTrustedKey } from "../delta/bundle/sign.js";
import { locateImage, openImage, writeDestinationKind, writeImage } from "../delta/image/open.js";
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

const USAGE = `usage: deltaship apply BUNDLE --to DEST --trust PUBKEY [--from IMAGE]... [options]

  --from IMAGE      an image whose layers the bundle may need (repeat for each)
  --to DEST         a docker-archive path, an OCI layout folder (oci:DIR or DIR/) or a registry reference
  --trust PUBKEY    a trusted public key (repeat for several)
  --scratch DIR     scratch folder (default the system temp folder)
  --insecure        plain http for registries other than localhost
  --json            print the result as JSON

Exit codes: 0 done, 1 other failure, 2 usage, 3 malformed or incomplete bundle, 4 signature
or key not trusted, 5 a needed layer is missing, 6 a rebuilt layer or config did not verify.`;

/** A registry reference starts with a host (`name.domain/`, `host:port/`, `localhost/`); anything else is a path. */
async function isRegistryDestination(dest: string): Promise<boolean> {
  if (
    dest.startsWith("/") ||
    dest.startsWith(".") ||
    dest.startsWith("oci:") ||
    dest.startsWith("docker-archive:")
  )
    return false;
  if (!/^(localhost|[^/]*[.:][^/]*)\/[^/]/.test(dest)) return false;
  return (await locateImage(dest)).kind === "registry";
}

function writerFor(
  dest: string,
  registry: ReturnType<typeof registryOptions>,
  from: readonly ImageReader[],
): ImageWriter {
  return async (image) => {
    let bytes = 0;
    for (const layer of image.layers) bytes += layer.size;
    bytes += image.config.length;
    if (await isRegistryDestination(dest)) {
      const { mountableLayers, parseReference, pushImage } = await import("../delta/image/registry.js");
      const bare = dest.startsWith("docker://") ? dest.slice("docker://".length) : dest;
      // A reference without tag or digest gets the bundle's tag.
      const named = bare.includes("@") || bare.slice(bare.lastIndexOf("/") + 1).includes(":");
      const reference = named ? bare : `${bare}:${image.tag || "latest"}`;
      // Layers of --from images in the same registry are mounted, not uploaded again; a layer that
      // cannot be mounted is uploaded from its verified tar.
      const held = mountableLayers(from, parseReference(reference, registry));
      const layers = image.layers.map((layer) => {
        const blob = held.get(layer.diffId);
        return blob === undefined ? layer : { ...blob, upload: layer };
      });
      const pushed = await pushImage(reference, { config: image.config, layers }, registry);
      return { image: pushed.reference, digest: pushed.manifestDigest, bytesWritten: bytes };
    }
    const written = await writeImage(dest, image);
    return { image: written.path, digest: written.manifestDigest, bytesWritten: bytes };
  };
}

export async function run(args: string[]): Promise<number> {
  let opts: ReturnType<typeof parseArgs>;
  try {
    opts = parseArgs(args, {
      values: ["from", "to", "trust", "scratch"],
      flags: ["json", "insecure", "help"],
    });
    if (opts.flags.has("help")) {
      console.log(USAGE);
      return EXIT_OK;
    }
    if (opts.positional.length !== 1) throw new UsageError("expected exactly one BUNDLE");
    if (opts.one("to") === undefined) throw new UsageError("--to is required");
    if ((opts.values.get("trust") ?? []).length === 0)
      throw new UsageError("--trust is required (the public key the bundle must be signed with)");
  } catch (err) {
    return usageError("apply", USAGE, err);
  }
  const json = opts.flags.has("json");
  const bar = new ProgressBar();
  const images: ImageReader[] = [];
  let provider: ImageLayerProvider | undefined;
  try {
    const trust = await Promise.all(
      (opts.values.get("trust") ?? []).map(async (f) => loadTrustedKey(await readFile(f, "utf8"))),
    );
    const registry = registryOptions(opts.flags.has("insecure"));
    for (const ref of opts.values.get("from") ?? []) images.push(await openImage(ref, { registry }));
    const scratch = opts.one("scratch");
    const dest = opts.one("to")!;
    // A docker-archive is written to a temporary name and checks each layer as it goes, so rebuilt
    // layers stream into it without a scratch copy.
    // Into a registry, each rebuilt layer is uploaded while the next one decodes.
    const toRegistry = await isRegistryDestination(dest);
    const streamToWriter = !toRegistry && (await writeDestinationKind(dest)) === "docker-archive";
    provider = new ImageLayerProvider(images, scratch);
    const result = await applyBundle({
      bundle: opts.positional[0]!,
      trust,
      layers: provider,
      write: writerFor(dest, registry, images),
      streamToWriter,
      writeWhileDecoding: toRegistry,
      ...(scratch !== undefined ? { scratchDir: scratch } : {}),
      onProgress: (p) => bar.update(`rebuild ${p.diffId.slice(7, 19)}`, p.done, p.total),
    });
    bar.finish();
    if (json) {
      console.log(JSON.stringify({ ok: true, ...result }));
    } else {
      const rebuilt = result.layers.filter((l) => l.from === "bundle").length;
      console.log(
        `wrote ${result.image} (${result.digest}): ${rebuilt} layer(s) rebuilt and verified, ${result.layers.length - rebuilt} from the device, ${formatBytes(result.bytesWritten)} in ${(result.durationMs / 1000).toFixed(1)} s`,
      );
    }
    return EXIT_OK;
  } catch (err) {
    bar.finish();
    return reportError("apply", err, json);
  } finally {
    await provider?.close();
    await Promise.all(images.map((i) => i.close()));
  }
}
