/**
 * `deltaship index IMAGE [--out FILE]`: writes the image index (per layer diff_id and sizes, per
 * file path, size, sha256 and chunk hashes) that planning reads.
 */
import { writeFile } from "node:fs/promises";
import { openImage } from "../delta/image/open.js";
import { indexImage } from "../delta/index/index.js";
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

const USAGE = `usage: deltaship index IMAGE [--out FILE] [--insecure] [--json]

IMAGE is a docker-archive file, an OCI layout folder or a registry reference.
Writes the index JSON to FILE (or stdout). --json prints a summary object when --out is given.`;

export async function run(args: string[]): Promise<number> {
  let opts: ReturnType<typeof parseArgs>;
  let out: string | undefined;
  try {
    opts = parseArgs(args, { values: ["out"], flags: ["json", "insecure", "help"] });
    if (opts.flags.has("help")) {
      console.log(USAGE);
      return EXIT_OK;
    }
    if (opts.positional.length !== 1) throw new UsageError("expected exactly one IMAGE");
    out = opts.one("out");
  } catch (err) {
    return usageError("index", USAGE, err);
  }
  const json = opts.flags.has("json");
  const bar = new ProgressBar();
  try {
    const image = await openImage(opts.positional[0]!, {
      registry: registryOptions(opts.flags.has("insecure")),
    });
    try {
      const index = await indexImage(image, (layer, bytes) =>
        bar.update(
          `layer ${layer + 1}/${image.info.layers.length}`,
          bytes,
          Math.max(bytes, image.info.layers[layer]!.size),
        ),
      );
      bar.finish();
      const text = JSON.stringify(index);
      if (out === undefined) {
        process.stdout.write(`${text}\n`);
      } else {
        await writeFile(out, text);
        const files = index.layers.reduce((n, l) => n + l.files.length, 0);
        if (json)
          console.log(
            JSON.stringify({ ok: true, out, bytes: text.length, layers: index.layers.length, files }),
          );
        else
          console.log(
            `wrote ${out} (${formatBytes(text.length)}): ${index.layers.length} layers, ${files} files`,
          );
      }
      return EXIT_OK;
    } finally {
      await image.close();
    }
  } catch (err) {
    bar.finish();
    return reportError("index", err, json);
  }
}
