/**
 * A small deterministic tar writer (POSIX ustar, PAX `x` headers for long or non-ASCII names and
 * huge sizes) for tests, the benchmark corpus and the archive writers. Same entries in, same
 * bytes out: fixed mtime, uid, gid and empty user names unless given.
 */
import {
  BLOCK_SIZE,
  concatBytes,
  encodePaxRecords,
  encodeUtf8,
  Field,
  headerChecksum,
  paddedSize,
  TypeFlag,
} from "./format.js";

export type WritableEntryType = "file" | "directory" | "symlink" | "hardlink";

export interface TarWriterEntry {
  readonly path: string;
  readonly type: WritableEntryType;
  /** Content of a regular file held in memory. */
  readonly content?: Uint8Array;
  /** Content of a regular file as a stream, with its exact size (for large files). */
  readonly stream?: { readonly size: number; open(): AsyncIterable<Uint8Array> };
  /** Target of a symlink or hard link. */
  readonly linkName?: string;
  /** Permission bits; defaults 0o644 for files, 0o755 for directories, 0o777 for symlinks. */
  readonly mode?: number;
  readonly uid?: number;
  readonly gid?: number;
  /** Seconds since the epoch; default DEFAULT_MTIME. */
  readonly mtime?: number;
}

/** 2020-01-01T00:00:00Z: a fixed time, so written tars are identical on every run. */
export const DEFAULT_MTIME = 1577836800;

/** Largest value an 11-digit octal size field holds (8 GiB - 1); larger sizes go in a PAX record. */
const MAX_OCTAL_SIZE = 0o77777777777;

const typeFlags: Record<WritableEntryType, number> = {
  file: TypeFlag.file,
  directory: TypeFlag.directory,
  symlink: TypeFlag.symlink,
  hardlink: TypeFlag.hardlink,
};

function writeOctal(block: Uint8Array, [start, length]: readonly [number, number], value: number): void {
  const digits = value.toString(8).padStart(length - 1, "0");
  if (digits.length > length - 1)
    throw new RangeError(`value ${value} does not fit a ${length}-byte tar field`);
  for (let i = 0; i < digits.length; i++) block[start + i] = digits.charCodeAt(i);
  block[start + length - 1] = 0;
}

function writeBytes(block: Uint8Array, [start, length]: readonly [number, number], bytes: Uint8Array): void {
  block.set(bytes.subarray(0, length), start);
}

function isPlainAscii(text: string): boolean {
  for (let i = 0; i < text.length; i++) {
    const c = text.charCodeAt(i);
    if (c < 0x20 || c > 0x7e) return false;
  }
  return true;
}

function ustarBlock(
  name: string,
  flag: number,
  size: number,
  linkName: string,
  mode: number,
  uid: number,
  gid: number,
  mtime: number,
): Uint8Array {
  const block = new Uint8Array(BLOCK_SIZE);
  writeBytes(block, Field.name, encodeUtf8(name));
  writeOctal(block, Field.mode, mode);
  writeOctal(block, Field.uid, uid);
  writeOctal(block, Field.gid, gid);
  writeOctal(block, Field.size, size);
  writeOctal(block, Field.mtime, mtime);
  block[Field.typeFlag[0]] = flag;
  writeBytes(block, Field.linkName, encodeUtf8(linkName));
  writeBytes(block, Field.magic, encodeUtf8("ustar\0"));
  writeBytes(block, Field.version, encodeUtf8("00"));
  const checksum = headerChecksum(block).toString(8).padStart(6, "0");
  writeBytes(block, Field.checksum, encodeUtf8(`${checksum}\0 `));
  return block;
}

function sizeOf(entry: TarWriterEntry): number {
  if (entry.type !== "file") return 0;
  return entry.content?.length ?? entry.stream?.size ?? 0;
}

/** The header blocks of one entry: a PAX header when the path, link or size needs one, then the ustar header. */
export function encodeHeader(entry: TarWriterEntry): Uint8Array {
  const size = sizeOf(entry);
  const linkName = entry.linkName ?? "";
  const defaultMode = entry.type === "directory" ? 0o755 : entry.type === "symlink" ? 0o777 : 0o644;
  const mode = entry.mode ?? defaultMode;
  const uid = entry.uid ?? 0;
  const gid = entry.gid ?? 0;
  const mtime = entry.mtime ?? DEFAULT_MTIME;
  const flag = typeFlags[entry.type];
  const name = entry.type === "directory" && !entry.path.endsWith("/") ? `${entry.path}/` : entry.path;

  const records: [string, string][] = [];
  const nameFits = isPlainAscii(name) && name.length <= Field.name[1];
  if (!nameFits) records.push(["path", name]);
  if (!(isPlainAscii(linkName) && linkName.length <= Field.linkName[1])) records.push(["linkpath", linkName]);
  if (size > MAX_OCTAL_SIZE) records.push(["size", String(size)]);
  const main = ustarBlock(
    nameFits ? name : asciiStub(name),
    flag,
    size > MAX_OCTAL_SIZE ? 0 : size,
    records.some(([k]) => k === "linkpath") ? asciiStub(linkName) : linkName,
    mode,
    uid,
    gid,
    mtime,
  );
  if (records.length === 0) return main;

  const pax = encodePaxRecords(records);
  const paxName = asciiStub(`PaxHeaders/${name.replace(/\/$/, "").split("/").pop() ?? ""}`);
  const paxHeader = ustarBlock(paxName, TypeFlag.paxLocal, pax.length, "", 0o644, 0, 0, mtime);
  const paxData = new Uint8Array(paddedSize(pax.length));
  paxData.set(pax);
  return concatBytes([paxHeader, paxData, main]);
}

/** A printable stand-in for the ustar field when the real name lives in a PAX record. */
function asciiStub(text: string): string {
  let out = "";
  for (const ch of text) out += isPlainAscii(ch) ? ch : "_";
  return out.slice(-Field.name[1]);
}

/** Two zero blocks end an archive. */
export const END_OF_ARCHIVE = new Uint8Array(2 * BLOCK_SIZE);

/** Streams a whole tar: headers, data with padding, the end-of-archive marker. */
export async function* writeTar(
  entries: Iterable<TarWriterEntry> | AsyncIterable<TarWriterEntry>,
): AsyncGenerator<Uint8Array> {
  for await (const entry of entries) {
    yield encodeHeader(entry);
    const size = sizeOf(entry);
    if (size === 0) continue;
    if (entry.content !== undefined) {
      yield entry.content;
    } else if (entry.stream !== undefined) {
      let written = 0;
      for await (const chunk of entry.stream.open()) {
        written += chunk.length;
        if (written > size) break;
        yield chunk;
      }
      if (written !== size) {
        throw new Error(`tar writer: "${entry.path}" streamed ${written} bytes but declared ${size}`);
      }
    }
    const padding = paddedSize(size) - size;
    if (padding > 0) yield new Uint8Array(padding);
  }
  yield END_OF_ARCHIVE;
}

/** A whole tar in memory (tests and small archives). */
export async function buildTar(entries: Iterable<TarWriterEntry>): Promise<Uint8Array> {
  const parts: Uint8Array[] = [];
  for await (const chunk of writeTar(entries)) parts.push(chunk);
  return concatBytes(parts);
}

/** The whiteout entry that deletes `path` from lower layers (`dir/.wh.name`). */
export function whiteout(path: string): TarWriterEntry {
  const slash = path.lastIndexOf("/");
  const dir = slash >= 0 ? path.slice(0, slash + 1) : "";
  return { path: `${dir}.wh.${path.slice(slash + 1)}`, type: "file", content: new Uint8Array(0) };
}

/** The opaque whiteout that hides everything lower layers have under `dir`. */
export function opaqueWhiteout(dir: string): TarWriterEntry {
  const base = dir.replace(/\/+$/, "");
  return {
    path: base.length > 0 ? `${base}/.wh..wh..opq` : ".wh..wh..opq",
    type: "file",
    content: new Uint8Array(0),
  };
}
