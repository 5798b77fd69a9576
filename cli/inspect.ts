/**
 * `deltaship inspect BUNDLE`: what a bundle needs (layers the device must hold), what it makes
 * (the target image and its layers), and its sizes; with --trust, whether its signature verifies.
 */
import { readFile } from "node:fs/promises";
import { isPresent, readBundleHead, requiredLayers } from "../delta/bundle/format.js";
import { loadTrustedKey, verifyManifest } from "../delta/bundle/sign.js";
import { EXIT_OK, formatBytes, parseArgs, reportError, UsageError, usageError } from "./bundle-args.js";

const USAGE = `usage: deltaship inspect BUNDLE [--trust PUBKEY]... [--json]

Shows what the bundle needs and makes. With --trust, also checks the signature (exit 4 if it fails).`;

export async function run(args: string[]): Promise<number> {
  let opts: ReturnType<typeof parseArgs>;
  try {
    opts = parseArgs(args, { values: ["trust"], flags: ["json", "help"] });
    if (opts.flags.has("help")) {
      console.log(USAGE);
      return EXIT_OK;
    }
    if (opts.positional.length !== 1) throw new UsageError("expected exactly one BUNDLE");
  } catch (err) {
    return usageError("inspect", USAGE, err);
  }
  const json = opts.flags.has("json");
  try {
    const head = await readBundleHead(opts.positional[0]!);
    const { manifest } = head;
    let verified: boolean | undefined;
    const trustFiles = opts.values.get("trust") ?? [];
    if (trustFiles.length > 0) {
      const trusted = await Promise.all(
        trustFiles.map(async (f) => loadTrustedKey(await readFile(f, "utf8"))),
      );
      verifyManifest(head.manifestBytes, head.signature, trusted);
      verified = true;
    }
    const makes = manifest.target.layers.map((layer, i) => {
      const entry = manifest.layers[i]!;
      return isPresent(entry)
        ? { diffId: layer.diffId, size: layer.size, present: true }
        : {
            diffId: layer.diffId,
            size: layer.size,
            present: false,
            payload: entry.length,
            codec: entry.codec,
          };
    });
    const targetBytes = manifest.target.layers.reduce((n, l) => n + l.size, 0);
    const summary = {
      ok: true,
      bundleBytes: head.header.totalLength,
      keyId: head.signature.keyId,
      ...(verified !== undefined ? { verified } : {}),
      target: {
        repository: manifest.target.repository,
        tag: manifest.target.tag,
        configDigest: manifest.target.configDigest,
        manifestDigest: manifest.target.manifestDigest,
        bytes: targetBytes,
      },
      needs: requiredLayers(manifest),
      sources: manifest.sources,
      makes,
    };
    if (json) {
      console.log(JSON.stringify(summary));
      return EXIT_OK;
    }
    const t = manifest.target;
    const lines = [
      `bundle     ${formatBytes(head.header.totalLength)} (${((100 * head.header.totalLength) / Math.max(1, targetBytes)).toFixed(2)}% of the target's ${formatBytes(targetBytes)}), signed by key ${head.signature.keyId}${verified ? " (verified)" : ""}`,
      `makes      ${t.repository || "(unnamed)"}:${t.tag || "(untagged)"} config ${t.configDigest}`,
      ...makes.map((m, i) =>
        m.present
          ? `  layer ${i}  ${m.diffId}  ${formatBytes(m.size)}  already on the device`
          : `  layer ${i}  ${m.diffId}  ${formatBytes(m.size)}  from a ${formatBytes(m.payload!)} ${m.codec} payload`,
      ),
      `needs      ${summary.needs.length} layer(s) on the device`,
      ...summary.needs.map((d) => `  ${d}`),
      `source     ${manifest.sources.length} layer(s), ${formatBytes(manifest.sources.reduce((n, s) => n + s.size, 0))} virtual source`,
    ];
    console.log(lines.join("\n"));
    return EXIT_OK;
  } catch (err) {
    return reportError("inspect", err, json);
  }
}
