/**
 * `deltaship keygen --out PREFIX`: writes an Ed25519 key pair, PREFIX.key (PKCS#8 PEM, mode
 * 0600) and PREFIX.pub (SPKI PEM), and prints the key id.
 */
import { writeFile } from "node:fs/promises";
import { generateSigningKey, privateKeyPem, publicKeyPem } from "../delta/bundle/sign.js";
import { EXIT_FAILURE, EXIT_OK, EXIT_USAGE, parseArgs, UsageError, usageError } from "./bundle-args.js";

const USAGE = `usage: deltaship keygen --out PREFIX [--force] [--json]

Writes PREFIX.key (private, mode 0600) and PREFIX.pub (public). Refuses to overwrite unless --force.`;

export async function run(args: string[]): Promise<number> {
  let opts: ReturnType<typeof parseArgs>;
  try {
    opts = parseArgs(args, { values: ["out"], flags: ["force", "json", "help"] });
    if (opts.flags.has("help")) {
      console.log(USAGE);
      return EXIT_OK;
    }
    if (opts.positional.length > 0) throw new UsageError(`unexpected argument '${opts.positional[0]}'`);
  } catch (err) {
    return usageError("keygen", USAGE, err);
  }
  const prefix = opts.one("out");
  if (prefix === undefined) {
    console.error(`deltaship keygen: --out PREFIX is required\n\n${USAGE}`);
    return EXIT_USAGE;
  }
  const key = generateSigningKey();
  const flag = opts.flags.has("force") ? "w" : "wx";
  try {
    await writeFile(`${prefix}.key`, privateKeyPem(key), { mode: 0o600, flag });
    await writeFile(`${prefix}.pub`, publicKeyPem(key), { mode: 0o644, flag });
  } catch (err) {
    console.error(
      `deltaship keygen: cannot write the key pair: ${(err as Error).message}${(err as { code?: string }).code === "EEXIST" ? " (use --force to overwrite)" : ""}`,
    );
    return EXIT_FAILURE;
  }
  if (opts.flags.has("json")) {
    console.log(
      JSON.stringify({ keyId: key.keyId, privateKey: `${prefix}.key`, publicKey: `${prefix}.pub` }),
    );
  } else {
    console.log(`wrote ${prefix}.key and ${prefix}.pub (key id ${key.keyId})`);
  }
  return EXIT_OK;
}
