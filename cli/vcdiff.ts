/**
 * `deltaship vcdiff encode|decode`: the VCDIFF codec on files, like `xdelta3 -e` / `xdelta3 -d`,
 * so anyone can compare the two on their own files. Streams: the target (encode) or the delta
 * (decode) is read in chunks, the source by position, and the output is written as it is made.
 */
import { type FileHandle, open, rename, rm } from "node:fs/promises";
import { parseArgs } from "node:util";
import { decode } from "../delta/vcdiff/decoder.js";
import { DEFAULT_WINDOW_SIZE, MAX_WINDOW_SIZE, VcdiffError } from "../delta/vcdiff/format.js";
import { FileSource, fileChunks } from "../delta/vcdiff/source.js";

const EXIT_OK = 0;
const EXIT_FAILURE = 1;
const EXIT_USAGE = 2;

const USAGE = `usage:
  deltaship vcdiff encode [--source S] --target T --out D [--window N] [--no-checksum]
  deltaship vcdiff decode [--source S] --delta D --out T [--no-checksum]

encode  writes D, a standard VCDIFF (RFC 3284) delta that rebuilds T from S
        (xdelta3 -d -s S D T decodes it too).
decode  rebuilds T from S and D (D may come from xdelta3 -e -S none -s S T D).

options:
  --source S       the source file; omit it for a delta of T on its own
  --window N       target window size in bytes, K or M suffix allowed (default ${DEFAULT_WINDOW_SIZE / 1024 / 1024}M, at most ${MAX_WINDOW_SIZE / 1024 / 1024}M)
  --no-checksum    encode: write no Adler-32 per window; decode: do not verify it
  --help           show this text

The output is written to a temporary file next to it and renamed when complete.`;

class UsageError extends Error {}

export async function run(args: string[]): Promise<number> {
  const [command, ...rest] = args;
  if (command === undefined || command === "--help" || command === "-h" || command === "help") {
    console.log(USAGE);
    return command === undefined ? EXIT_USAGE : EXIT_OK;
  }
  try {
    if (command === "encode") return await encodeCommand(rest);
    if (command === "decode") return await decodeCommand(rest);
    throw new UsageError(`unknown subcommand '${command}': expected encode or decode`);
  } catch (err) {
    if (err instanceof UsageError) {
      console.error(`deltaship vcdiff: ${err.message}\n\n${USAGE}`);
      return EXIT_USAGE;
    }
    console.error(`deltaship vcdiff ${command}: ${describe(err)}`);
    return EXIT_FAILURE;
  }
}

function describe(err: unknown): string {
  if (err instanceof VcdiffError) return err.message;
  const e = err as NodeJS.ErrnoException;
  if (e?.code === "ENOENT" && e.path) return `${e.path}: no such file`;
  if (e?.code === "EISDIR" && e.path) return `${e.path}: is a directory, expected a file`;
  if (e?.code === "EACCES" && e.path) return `${e.path}: permission denied`;
  return err instanceof Error ? err.message : String(err);
}

function parse(args: string[], names: string[]) {
  let values: ReturnType<typeof parseOptions>;
  try {
    values = parseOptions(args);
  } catch (err) {
    throw new UsageError((err as Error).message);
  }
  for (const [name, value] of Object.entries(values)) {
    if (value !== undefined && name !== "help" && !names.includes(name)) {
      throw new UsageError(`--${name} does not apply here`);
    }
  }
  return values;
}

const OPTIONS = {
  source: { type: "string" },
  target: { type: "string" },
  delta: { type: "string" },
  out: { type: "string" },
  window: { type: "string" },
  "no-checksum": { type: "boolean" },
  help: { type: "boolean" },
} as const;

function parseOptions(args: string[]) {
  return parseArgs({ args, options: OPTIONS, strict: true, allowPositionals: false }).values;
}

function required(value: string | undefined, name: string): string {
  if (value === undefined || value === "") throw new UsageError(`--${name} is required`);
  return value;
}

/** Parses "8388608", "512K" or "8M" (powers of 1024). */
function parseWindow(text: string): number {
  const m = /^(\d+)([KkMm]?)$/.exec(text);
  const unit = m?.[2].toUpperCase() === "M" ? 1024 * 1024 : m?.[2].toUpperCase() === "K" ? 1024 : 1;
  const size = m ? Number(m[1]) * unit : Number.NaN;
  if (!Number.isSafeInteger(size) || size <= 0 || size > MAX_WINDOW_SIZE) {
    throw new UsageError(
      `--window expects a size in bytes up to ${MAX_WINDOW_SIZE} (e.g. 8M), found '${text}'`,
    );
  }
  return size;
}

/** Writes chunks to a temporary file beside `path` and renames it into place once all are written. */
async function writeAll(path: string, chunks: AsyncIterable<Uint8Array>): Promise<void> {
  const temporary = `${path}.partial-${process.pid}`;
  let handle: FileHandle | undefined = await open(temporary, "w");
  try {
    for await (const chunk of chunks) {
      let done = 0;
      while (done < chunk.length) {
        const { bytesWritten } = await handle.write(chunk, done, chunk.length - done);
        done += bytesWritten;
      }
    }
    await handle.close();
    handle = undefined;
    await rename(temporary, path);
  } catch (err) {
    await handle?.close();
    await rm(temporary, { force: true });
    throw err;
  }
}

async function openSource(path: string | undefined): Promise<FileSource | undefined> {
  return path === undefined ? undefined : FileSource.open(path);
}

async function decodeCommand(args: string[]): Promise<number> {
  const values = parse(args, ["source", "delta", "out", "no-checksum"]);
  if (values.help) {
    console.log(USAGE);
    return EXIT_OK;
  }
  const deltaPath = required(values.delta, "delta");
  const outPath = required(values.out, "out");
  const source = await openSource(values.source);
  try {
    // Opened before decoding starts, so a missing delta reports its own name, not a stream error.
    const delta = await open(deltaPath, "r");
    try {
      // One reused read buffer: a fresh 1 MiB chunk per read is garbage that raises peak RSS.
      await writeAll(
        outPath,
        decode(fileChunks(delta), { source, verifyChecksum: !values["no-checksum"], reuseBuffers: true }),
      );
    } finally {
      await delta.close();
    }
  } finally {
    await source?.close();
  }
  return EXIT_OK;
}

async function encodeCommand(args: string[]): Promise<number> {
  const values = parse(args, ["source", "target", "out", "window", "no-checksum"]);
  if (values.help) {
    console.log(USAGE);
    return EXIT_OK;
  }
  const targetPath = required(values.target, "target");
  const outPath = required(values.out, "out");
  const windowSize = values.window === undefined ? undefined : parseWindow(values.window);
  const { encode } = await import("../delta/vcdiff/encoder.js");
  const source = await openSource(values.source);
  try {
    const target = await open(targetPath, "r");
    const stream = target.createReadStream({ highWaterMark: 1024 * 1024 });
    await writeAll(outPath, encode(stream, source, { windowSize, checksum: !values["no-checksum"] }));
  } finally {
    await source?.close();
  }
  return EXIT_OK;
}
