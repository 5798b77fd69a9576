/**
 * Recompressing gzip files exactly. A changed `.gz` file (a Debian changelog or man page after a
 * security update) differs from its old version from the first changed byte on, so as stored it
 * is sent almost whole. Its decompressed text differs by a few lines. When GNU gzip at some level
 * reproduces the file byte for byte from its text, `ref-zstd` sends the text (compressed against
 * the old version's text) and the device runs the same gzip to rebuild the file.
 *
 * GNU gzip's output for a level has been the same for decades, and Debian builds its packages'
 * `.gz` files with `gzip -9n`. The encoder checks the reproduction on the cloud side before it
 * relies on it, and the device's result is checked too: by the gzip trailer (CRC-32 and length of
 * the text) and by the layer's diff_id before anything is written.
 */
import { spawn } from "node:child_process";
import { existsSync, mkdtempSync, writeFileSync } from "node:fs";
import { rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { gunzipSync } from "node:zlib";

/** GNU gzip could not be run, or failed: a problem of this machine, not of the payload. */
export class GzipToolError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "GzipToolError";
  }
}

/** The gzip magic and the deflate method byte: where a gzip member starts. */
export const GZIP_MAGIC = Uint8Array.of(0x1f, 0x8b, 0x08);
/** The fixed part of a gzip header; `gzip -n` writes exactly this much (no name, no time). */
export const GZIP_FIXED_HEADER = 10;
/** CRC-32 and length of the text, after the deflate data. */
export const GZIP_TRAILER = 8;
/** gzip levels tried when encoding, most likely first (Debian's dh_compress uses -9, plain gzip -6). */
export const GZIP_LEVELS: readonly number[] = [9, 6];
/** Text bytes of one recompressed file, at most: the device holds the text and the rebuilt file. */
export const MAX_GZIP_TEXT = 8 * 1024 * 1024;
/** A gzip header with an extra field, name and comment, at most (longer ones stay plain bytes). */
export const MAX_GZIP_HEADER = 4096;

/** Whether `bytes` starts with the gzip magic and the deflate method byte. */
export function startsWithGzipMagic(bytes: Uint8Array): boolean {
  for (let i = 0; i < GZIP_MAGIC.length; i++) if (bytes[i] !== GZIP_MAGIC[i]) return false;
  return true;
}

const FHCRC = 0x02;
const FEXTRA = 0x04;
const FNAME = 0x08;
const FCOMMENT = 0x10;

/** Length of the gzip header at the start of `bytes`, or -1 if it is not a complete gzip header within MAX_GZIP_HEADER. */
export function gzipHeaderLength(bytes: Uint8Array): number {
  if (bytes.length < GZIP_FIXED_HEADER + GZIP_TRAILER) return -1;
  if (!startsWithGzipMagic(bytes)) return -1;
  const flags = bytes[3]!;
  if (flags & 0xe0) return -1;
  const limit = Math.min(bytes.length, MAX_GZIP_HEADER);
  let p = GZIP_FIXED_HEADER;
  if (flags & FEXTRA) {
    if (p + 2 > limit) return -1;
    p += 2 + (bytes[p]! | (bytes[p + 1]! << 8));
  }
  for (const flag of [FNAME, FCOMMENT]) {
    if (flags & flag) {
      while (p < limit && bytes[p] !== 0) p++;
      if (p >= limit) return -1;
      p++;
    }
  }
  if (flags & FHCRC) p += 2;
  return p <= limit ? p : -1;
}

/** The decompressed text of a gzip file, or undefined if it is not one or its text exceeds `limit`. */
export function gunzipText(bytes: Uint8Array, limit = MAX_GZIP_TEXT): Uint8Array | undefined {
  if (gzipHeaderLength(bytes) < 0) return undefined;
  try {
    const text = gunzipSync(bytes, { maxOutputLength: limit });
    return new Uint8Array(text.buffer, text.byteOffset, text.byteLength);
  } catch {
    return undefined;
  }
}

/** Bytes gzip may write for `n` bytes of text, at most: its stored blocks grow data by 5 bytes per 32 KiB. */
function gzipBound(n: number): number {
  return n + Math.ceil(n / 16384) * 5 + GZIP_FIXED_HEADER + GZIP_TRAILER + 64;
}

/** Files per gzip run, at most: their names (up to 5 characters) go on its command line. */
export const MAX_FILES_PER_RUN = 8192;

/** Memory-backed files (tmpfs): where gzip's input files go when it can be written. */
export const SHARED_MEMORY = "/dev/shm";

/** Errors of a folder that cannot take the files (full, read-only, missing): the scratch folder takes them instead. */
const UNUSABLE_FOLDER = new Set(["ENOSPC", "EDQUOT", "EROFS", "EACCES", "EPERM", "ENOENT", "ENOTDIR"]);

/**
 * Runs GNU gzip over texts: `gzip -c -n -LEVEL` of each, in one gzip process (a process per file
 * cost ~15 ms each on the build machine: 5 s for a Debian update's 349 changelogs), one member per
 * text, in order, concatenated. gzip reads files, so the texts go through files in private
 * folders: in shared memory (/dev/shm) where it exists, else under `scratchDir`. On the benchmark
 * machine's ext4 a new file took about 0.8 ms and overwriting one was slower still once written
 * back, so a first image's 1,504 `.gz` files spent 1.2 s of the apply creating files; in /dev/shm
 * their rebuild took 0.97 s instead of 1.97. The files stay until the folder's next run (which
 * overwrites them) or `close()`, so shared memory holds at most the largest run's texts per
 * concurrent run. A folder in shared memory that cannot take the files (full, read-only) is given
 * up for the scratch folder. Concurrent runs use separate folders.
 */
export class GzipRunner {
  /** Folders no run is using; their files are overwritten by the next. */
  private readonly free: string[] = [];
  private closed = false;
  /** Where new folders go. */
  private base: string;

  /** `sharedMemory`: the memory-backed folder to prefer (default SHARED_MEMORY), or false for none. */
  constructor(
    private readonly scratchDir = tmpdir(),
    sharedMemory: string | false = SHARED_MEMORY,
  ) {
    this.base = sharedMemory !== false && existsSync(sharedMemory) ? sharedMemory : scratchDir;
  }

  async members(texts: readonly Uint8Array[], level: number): Promise<Uint8Array> {
    if (!Number.isInteger(level) || level < 1 || level > 9)
      throw new Error(`gzip level ${level} is not 1 to 9`);
    if (this.closed) throw new Error("this gzip runner is closed");
    if (texts.length === 0) return new Uint8Array(0);
    // A gzip run takes its files' names as arguments, which the system bounds (ARG_MAX).
    const runs: Uint8Array[] = [];
    for (let i = 0; i < texts.length; i += MAX_FILES_PER_RUN)
      runs.push(await this.runOrFallBack(texts.slice(i, i + MAX_FILES_PER_RUN), level));
    return runs.length === 1 ? runs[0]! : Buffer.concat(runs);
  }

  private async runOrFallBack(texts: readonly Uint8Array[], level: number): Promise<Uint8Array> {
    try {
      return await this.run(texts, level);
    } catch (err) {
      const code = (err as NodeJS.ErrnoException).code;
      if (this.base === this.scratchDir || code === undefined || !UNUSABLE_FOLDER.has(code)) throw err;
      this.base = this.scratchDir;
      await this.removeFree();
      return await this.run(texts, level);
    }
  }

  /** Removes the runner's folders; runs still going remove theirs when they end. */
  async close(): Promise<void> {
    this.closed = true;
    await this.removeFree();
  }

  private async run(texts: readonly Uint8Array[], level: number): Promise<Uint8Array> {
    const dir = this.free.pop() ?? mkdtempSync(join(this.base, "deltaship-gzip-"));
    // Written synchronously: the texts are at hand, and while a diff spools the next layer on
    // this thread each awaited write waited its turn behind the spool's chunks (175 files took
    // 1.3-1.7 s on scenario 4 of the benchmark; written at once, 0.03-0.1 s). Files beyond
    // `texts` from an earlier run stay, unnamed in this one.
    const names = texts.map((_, i) => String(i));
    try {
      for (let i = 0; i < texts.length; i++) writeFileSync(join(dir, names[i]!), texts[i]!);
    } catch (err) {
      // A folder that could not take the files is not used again.
      await rm(dir, { recursive: true, force: true });
      throw err;
    }
    let limit = 0;
    for (const text of texts) limit += gzipBound(text.length);
    try {
      return await runGzip(["-c", "-n", `-${level}`, "--", ...names], dir, limit);
    } finally {
      if (this.closed || !dir.startsWith(this.base)) await rm(dir, { recursive: true, force: true });
      else this.free.push(dir);
    }
  }

  private async removeFree(): Promise<void> {
    await Promise.all(this.free.splice(0).map((dir) => rm(dir, { recursive: true, force: true })));
  }
}

function runGzip(args: readonly string[], cwd: string, limit: number): Promise<Uint8Array> {
  return new Promise<Uint8Array>((resolve, reject) => {
    const child = spawn("gzip", args, { cwd, stdio: ["ignore", "pipe", "pipe"] });
    const chunks: Buffer[] = [];
    let size = 0;
    let stderr = "";
    let failed = false;
    const fail = (err: Error) => {
      if (failed) return;
      failed = true;
      child.kill();
      reject(err);
    };
    child.on("error", (err: NodeJS.ErrnoException) =>
      fail(
        err.code === "ENOENT"
          ? new GzipToolError(
              "rebuilding .gz files needs GNU gzip, and `gzip` is not on the PATH; install it",
            )
          : new GzipToolError(`running gzip failed: ${err.message}`),
      ),
    );
    child.stdout.on("data", (chunk: Buffer) => {
      size += chunk.length;
      if (size > limit) fail(new GzipToolError(`gzip wrote more than the ${limit} bytes its input can make`));
      else chunks.push(chunk);
    });
    child.stderr.on("data", (chunk: Buffer) => {
      if (stderr.length < 1000) stderr += chunk.toString();
    });
    child.on("close", (code, signal) => {
      if (failed) return;
      if (code !== 0)
        fail(new GzipToolError(`gzip ${args[2]} failed (${signal ?? `exit ${code}`}): ${stderr.trim()}`));
      else resolve(Buffer.concat(chunks, size));
    });
  });
}

/**
 * Whether `member` (a `gzip -n` member) carries the same deflate data and trailer as `file`,
 * whose own header is `headerLength` bytes: then the file is its header plus the member's rest.
 */
export function sameDeflate(member: Uint8Array, file: Uint8Array, headerLength: number): boolean {
  if (member.length - GZIP_FIXED_HEADER !== file.length - headerLength) return false;
  // `gzip -n` sets no flags.
  if (!startsWithGzipMagic(member) || member[3] !== 0) return false;
  return Buffer.compare(member.subarray(GZIP_FIXED_HEADER), file.subarray(headerLength)) === 0;
}

/** Bytes of a file's deflate data searched for to find its member after a member of unknown length. */
const MEMBER_PROBE = 64;

/**
 * Where in `out`, from `from` up to `limit`, the member that rebuilds `file` (header `headerLength`)
 * starts, or -1: its deflate data's first bytes are searched for, and each hit checked whole.
 */
function findMember(
  out: Uint8Array,
  from: number,
  limit: number,
  file: Uint8Array,
  headerLength: number,
): number {
  const haystack = Buffer.from(out.buffer, out.byteOffset, out.byteLength);
  const probe = file.subarray(headerLength, Math.min(file.length, headerLength + MEMBER_PROBE));
  const length = file.length - headerLength + GZIP_FIXED_HEADER;
  for (
    let p = haystack.indexOf(probe, from + GZIP_FIXED_HEADER);
    p >= 0 && p - GZIP_FIXED_HEADER <= limit;
  ) {
    const start = p - GZIP_FIXED_HEADER;
    if (sameDeflate(out.subarray(start, start + length), file, headerLength)) return start;
    p = haystack.indexOf(probe, p + 1);
  }
  return -1;
}

/** How a gzip file is rebuilt from its text: its own header, then `gzip -LEVEL` of the text. */
export interface GzipRecipe {
  readonly level: number;
  readonly headerLength: number;
  readonly textLength: number;
}

/** Text bytes per gzip run when looking for recipes: bounds the memory of one batch. */
const RECIPE_BATCH = 32 * 1024 * 1024;
/** gzip runs per level, at most: a mismatch whose followers' members are not found costs a run of the rest of its batch. */
const MAX_RECIPE_RUNS = 16;
/**
 * Files after a mismatch whose members are looked for. On the benchmark's base-image update two
 * neighbours were gzip -6 files among 349 gzip -9 ones: looking only at the next file cost two
 * extra runs of about 170 files (0.7-1.3 s of gzip); now one run of the file passed over.
 */
const MEMBER_LOOKAHEAD = 8;

/**
 * For each gzip file, how GNU gzip rebuilds it exactly (its header kept as is), or undefined when
 * no level of GZIP_LEVELS does (another compressor, several members, trailing bytes, a text over
 * MAX_GZIP_TEXT). One gzip run per batch and level: members are checked in order; after a
 * mismatch (whose member length is then unknown) the member of one of the next MEMBER_LOOKAHEAD
 * files is searched for, the files passed over run again, and if none is found the rest of the
 * batch runs again, up to MAX_RECIPE_RUNS runs a level; files still unchecked then stay plain
 * bytes.
 */
export async function findGzipRecipes(
  files: readonly Uint8Array[],
  scratchDir?: string,
): Promise<(GzipRecipe | undefined)[]> {
  const runner = new GzipRunner(scratchDir);
  try {
    return await recipesWith(runner, files);
  } finally {
    await runner.close();
  }
}

async function recipesWith(
  runner: GzipRunner,
  files: readonly Uint8Array[],
): Promise<(GzipRecipe | undefined)[]> {
  const recipes: (GzipRecipe | undefined)[] = files.map(() => undefined);
  const headers = files.map(gzipHeaderLength);
  let pending = files.map((_, i) => i).filter((i) => headers[i]! >= 0);
  for (const level of GZIP_LEVELS) {
    const missed: number[] = [];
    for (let run = 0; pending.length > 0; run++) {
      if (run === MAX_RECIPE_RUNS) {
        missed.push(...pending);
        break;
      }
      const batch: number[] = [];
      const texts: Uint8Array[] = [];
      /** Files met while filling the batch that do not inflate: nothing to check. */
      const unreadable: number[] = [];
      let bytes = 0;
      for (const i of pending) {
        if (batch.length > 0 && bytes >= RECIPE_BATCH) break;
        const text = gunzipText(files[i]!);
        if (text === undefined) {
          unreadable.push(i);
          continue;
        }
        batch.push(i);
        texts.push(text);
        bytes += text.length;
      }
      if (batch.length === 0) break;
      const out = await runner.members(texts, level);
      /** Files passed over after a mismatch: unchecked, so they run again. */
      const again = new Set<number>();
      let at = 0;
      let k = 0;
      for (; k < batch.length; k++) {
        const i = batch[k]!;
        const length = files[i]!.length - headers[i]! + GZIP_FIXED_HEADER;
        if (sameDeflate(out.subarray(at, at + length), files[i]!, headers[i]!)) {
          recipes[i] = { level, headerLength: headers[i]!, textLength: texts[k]!.length };
          at += length;
          continue;
        }
        missed.push(i);
        // This member has another length: the checks go on from the first of the next few files
        // whose member is found (a neighbour that misses too has another length as well); the
        // files passed over run again.
        let limit = at + gzipBound(texts[k]!.length);
        let found = -1;
        let j = k + 1;
        for (; j < batch.length && j <= k + MEMBER_LOOKAHEAD; j++) {
          const next = batch[j]!;
          found = findMember(out, at + GZIP_FIXED_HEADER, limit, files[next]!, headers[next]!);
          if (found >= 0) break;
          limit += gzipBound(texts[j]!.length);
        }
        if (found < 0) break;
        for (let skipped = k + 1; skipped < j; skipped++) again.add(batch[skipped]!);
        at = found;
        k = j - 1;
      }
      // batch[k] did not match and no following member was found: what follows it runs again.
      const done = new Set([...batch.slice(0, k + 1), ...unreadable]);
      pending = pending.filter((i) => !done.has(i) || again.has(i));
    }
    pending = missed;
  }
  return recipes;
}

/**
 * findGzipRecipes with two gzip processes at once, each on half of the files (gzip -9 is the slow
 * part). Without a working gzip on this machine no file gets a recipe: the files then go as they
 * are, a larger bundle rather than a failed one.
 */
export async function findGzipRecipesInHalves(
  files: readonly Uint8Array[],
  scratchDir?: string,
): Promise<(GzipRecipe | undefined)[]> {
  const half = Math.ceil(files.length / 2);
  try {
    return (
      await Promise.all([
        findGzipRecipes(files.slice(0, half), scratchDir),
        findGzipRecipes(files.slice(half), scratchDir),
      ])
    ).flat();
  } catch (err) {
    if (!(err instanceof GzipToolError)) throw err;
    return files.map(() => undefined);
  }
}

/** Bytes of gzip files held at once while their recipes are looked for. */
const RECIPE_GROUP = 64 * 1024 * 1024;

/**
 * Gzip files collected with their owners, whose recipes are found (findGzipRecipesInHalves) a
 * group of at most RECIPE_GROUP bytes at a time, so the files held stay bounded; `found` sees
 * each file that has a recipe. Call `settle()` after the last `add`.
 */
export class RecipeGroups<T> {
  private group: { owner: T; file: Uint8Array }[] = [];
  private held = 0;

  constructor(
    private readonly found: (owner: T, recipe: GzipRecipe) => void,
    private readonly scratchDir?: string,
  ) {}

  async add(owner: T, file: Uint8Array): Promise<void> {
    this.group.push({ owner, file });
    this.held += file.length;
    if (this.held >= RECIPE_GROUP) await this.settle();
  }

  /** Finds the recipes of the files added since the last group. */
  async settle(): Promise<void> {
    const group = this.group;
    this.group = [];
    this.held = 0;
    if (group.length === 0) return;
    const recipes = await findGzipRecipesInHalves(
      group.map((g) => g.file),
      this.scratchDir,
    );
    group.forEach((g, i) => {
      const recipe = recipes[i];
      if (recipe !== undefined) this.found(g.owner, recipe);
    });
  }
}

/** A gzip file to rebuild: its header, text and trailer as sent, its length and gzip level. */
export interface GzipToRebuild {
  /** The file's own header, then the text, then the 8-byte trailer. */
  readonly sent: Uint8Array;
  readonly headerLength: number;
  readonly textLength: number;
  /** The rebuilt file's length. */
  readonly length: number;
  readonly level: number;
}

/** A gzip file does not rebuild as described: a damaged payload, or a gzip that is not GNU gzip. */
export class GzipMismatchError extends Error {
  override readonly name = "GzipMismatchError";
  constructor(
    /** The item (index into the list given) that did not rebuild, or -1 when gzip's output did not add up. */
    readonly index: number,
    message: string,
  ) {
    super(message);
  }
}

/** Text bytes below which one gzip process does the whole level (two cost more than they save). */
const SPLIT_TEXT = 1024 * 1024;

/**
 * Rebuilds gzip files from their texts, on the device: each file's header as sent, then the
 * deflate data GNU gzip makes of the text, then the trailer as sent, which must equal gzip's own
 * (else the text or this gzip is not what the encoder had). One gzip run per level, split over
 * two processes when there is enough text unless `processes` is 1. Throws GzipMismatchError, or
 * GzipToolError when gzip cannot run.
 */
export async function rebuildGzipFiles(
  items: readonly GzipToRebuild[],
  runner: GzipRunner,
  processes: 1 | 2 = 2,
): Promise<Uint8Array[]> {
  const files: Uint8Array[] = new Array(items.length);
  for (const level of new Set(items.map((g) => g.level))) {
    const indexes = items.flatMap((g, i) => (g.level === level ? [i] : []));
    let text = 0;
    for (const i of indexes) text += items[i]!.textLength;
    const halves =
      processes === 2 && text >= SPLIT_TEXT && indexes.length > 1
        ? [indexes.slice(0, Math.ceil(indexes.length / 2)), indexes.slice(Math.ceil(indexes.length / 2))]
        : [indexes];
    const runs = await Promise.all(
      halves.map((part) =>
        runner.members(
          part.map((i) => {
            const g = items[i]!;
            return g.sent.subarray(g.headerLength, g.headerLength + g.textLength);
          }),
          level,
        ),
      ),
    );
    halves.forEach((part, h) => {
      const members = runs[h]!;
      let memberAt = 0;
      for (const i of part) {
        const g = items[i]!;
        const file = new Uint8Array(g.length);
        file.set(g.sent.subarray(0, g.headerLength));
        const trailerAt = g.headerLength + g.textLength;
        file.set(g.sent.subarray(trailerAt, trailerAt + GZIP_TRAILER), g.length - GZIP_TRAILER);
        const memberLength = g.length - g.headerLength + GZIP_FIXED_HEADER;
        const member = members.subarray(memberAt, memberAt + memberLength);
        // The member's deflate data goes in; then the whole must match it from the header on.
        file.set(
          member.subarray(GZIP_FIXED_HEADER, Math.max(GZIP_FIXED_HEADER, member.length - GZIP_TRAILER)),
          g.headerLength,
        );
        if (!sameDeflate(member, file, g.headerLength)) {
          throw new GzipMismatchError(
            i,
            `gzip -${level} of its ${g.textLength} bytes of text does not rebuild the ${g.length}-byte file the payload describes (a damaged payload, or a gzip that is not GNU gzip)`,
          );
        }
        files[i] = file;
        memberAt += memberLength;
      }
      if (memberAt !== members.length) {
        throw new GzipMismatchError(
          -1,
          `gzip -${level} wrote ${members.length} bytes, the files account for ${memberAt}`,
        );
      }
    });
  }
  return files;
}
