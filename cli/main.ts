/**
 * The `deltaship` command line: dispatches to one module per command group.
 * Each module exports `run(args: string[]): Promise<number>` and returns the exit code.
 */

interface CommandModule {
  run(args: string[]): Promise<number>;
}

/** Command name → module path and a one-line summary. Modules load lazily so one command's deps never slow another. */
const COMMANDS: Record<string, { module: string; summary: string }> = {
  demo: { module: "./demo.js", summary: "run a whole sample deployment on this machine (npm start)" },
  vcdiff: {
    module: "./vcdiff.js",
    summary: "encode or decode a VCDIFF (RFC 3284) delta, like xdelta3 -e/-d",
  },
  "codec-demo": {
    module: "./codec-demo.js",
    summary: "diff two tar layers of this machine's files with our codec and xdelta3, decode both ways",
  },
  index: { module: "./index-image.js", summary: "write the image index of an image" },
  diff: {
    module: "./diff.js",
    summary: "build a signed bundle that turns source images into a target image",
  },
  apply: { module: "./apply.js", summary: "rebuild an image from a bundle and the layers at hand" },
  inspect: { module: "./inspect.js", summary: "show what a bundle needs, what it makes, and its sizes" },
  keygen: { module: "./keygen.js", summary: "write an Ed25519 signing key pair (PREFIX.key, PREFIX.pub)" },
  deploy: { module: "./deploy.js", summary: "start a deployment through the HTTP API and wait for it" },
};

export const EXIT_OK = 0;
/** Bad arguments or an unknown command. */
export const EXIT_USAGE = 2;

function usage(): string {
  const width = Math.max(...Object.keys(COMMANDS).map((c) => c.length));
  const lines = Object.entries(COMMANDS).map(([name, c]) => `  ${name.padEnd(width)}  ${c.summary}`);
  return `usage: deltaship <command> [options]\n\ncommands:\n${lines.join("\n")}\n\nRun 'deltaship <command> --help' for a command's options.`;
}

export async function main(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  if (command === undefined || command === "--help" || command === "-h" || command === "help") {
    console.log(usage());
    return command === undefined ? EXIT_USAGE : EXIT_OK;
  }
  const entry = COMMANDS[command];
  if (entry === undefined) {
    console.error(`deltaship: unknown command '${command}'\n\n${usage()}`);
    return EXIT_USAGE;
  }
  let mod: CommandModule;
  try {
    mod = (await import(entry.module)) as CommandModule;
  } catch (err) {
    if (
      (err as { code?: string }).code === "ERR_MODULE_NOT_FOUND" &&
      String(err).includes(entry.module.slice(2, -3))
    ) {
      console.error(`deltaship: the '${command}' command is not built yet`);
      return EXIT_USAGE;
    }
    throw err;
  }
  return mod.run(rest);
}
