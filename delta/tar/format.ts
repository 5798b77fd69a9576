/**
 * The tar wire format as layers use it (POSIX ustar, PAX extended headers, GNU long names and
 * old GNU sparse headers): field positions, numeric fields, checksums, PAX records, limits and
 * the error type. Reading lives in reader.ts, writing in writer.ts.
 */

export const BLOCK_SIZE = 512;

/** PAX records and GNU long names carry paths and attributes; real ones stay far below this. */
export const MAX_META_DATA_BYTES = 1024 * 1024;
/** All header blocks of one entry (PAX, GNU long names, sparse maps) together; bounds memory per entry. */
export const MAX_HEADER_GROUP_BYTES = 4 * 1024 * 1024;
/** An old GNU sparse map longer than this many extension blocks is a corrupt or hostile header. */
export const MAX_SPARSE_EXTENSION_BLOCKS = 4096;
/** No file in a layer is larger (1 TiB); bigger values are corrupt headers that would break offset arithmetic. */
export const MAX_ENTRY_SIZE = 2 ** 40;
/** The bytes after the end-of-archive marker are record padding (10 KiB for GNU tar); more is not a layer. */
export const MAX_TAIL_BYTES = 16 * 1024 * 1024;

export type TarErrorCode = "CHECKSUM" | "TRUNCATED" | "FIELD" | "LIMIT" | "PAX" | "MISUSE";

/** Every malformed, truncated or oversized tar is reported as this, with the byte offset where it was found. */
export class TarError extends Error {
  override readonly name = "TarError";
  constructor(
    readonly code: TarErrorCode,
    message: string,
    /** Absolute offset in the tar of the block or byte that is wrong. */
    readonly offset: number,
  ) {
    super(`tar: ${message} (at byte ${offset})`);
  }
}

export type TarEntryType =
  | "file"
  | "directory"
  | "symlink"
  | "hardlink"
  | "char"
  | "block"
  | "fifo"
  | "other";

/** Header field positions and lengths (POSIX ustar; GNU uses the same up to the magic). */
export const Field = {
  name: [0, 100],
  mode: [100, 8],
  uid: [108, 8],
  gid: [116, 8],
  size: [124, 12],
  mtime: [136, 12],
  checksum: [148, 8],
  typeFlag: [156, 1],
  linkName: [157, 100],
  magic: [257, 6],
  version: [263, 2],
  uname: [265, 32],
  gname: [297, 32],
  devMajor: [329, 8],
  devMinor: [337, 8],
  prefix: [345, 155],
} as const satisfies Record<string, readonly [number, number]>;

/** Old GNU sparse header: the "is extended" flag in the main header and in each extension block. */
export const GNU_SPARSE_IS_EXTENDED = 482;
export const GNU_SPARSE_EXTENSION_IS_EXTENDED = 504;

export const TypeFlag = {
  file: 0x30, // '0'
  fileOld: 0x00, // NUL, pre-POSIX regular file
  hardlink: 0x31, // '1'
  symlink: 0x32, // '2'
  char: 0x33, // '3'
  block: 0x34, // '4'
  directory: 0x35, // '5'
  fifo: 0x36, // '6'
  contiguous: 0x37, // '7', read as a regular file
  paxLocal: 0x78, // 'x'
  paxGlobal: 0x67, // 'g'
  gnuLongName: 0x4c, // 'L'
  gnuLongLink: 0x4b, // 'K'
  gnuSparse: 0x53, // 'S'
} as const;

export function entryTypeOf(flag: number): TarEntryType {
  switch (flag) {
    case TypeFlag.file:
    case TypeFlag.fileOld:
    case TypeFlag.contiguous:
    case TypeFlag.gnuSparse:
      return "file";
    case TypeFlag.hardlink:
      return "hardlink";
    case TypeFlag.symlink:
      return "symlink";
    case TypeFlag.char:
      return "char";
    case TypeFlag.block:
      return "block";
    case TypeFlag.directory:
      return "directory";
    case TypeFlag.fifo:
      return "fifo";
    default:
      return "other";
  }
}

const utf8 = new TextDecoder("utf-8");
const utf8Encoder = new TextEncoder();

export function encodeUtf8(text: string): Uint8Array {
  return utf8Encoder.encode(text);
}

export function decodeUtf8(bytes: Uint8Array): string {
  return utf8.decode(bytes);
}

/** A NUL-terminated (or field-filling) string field. */
export function readString(block: Uint8Array, start: number, length: number): string {
  let end = start;
  const limit = start + length;
  while (end < limit && block[end] !== 0) end++;
  return utf8.decode(block.subarray(start, end));
}

/**
 * A numeric field: octal digits padded with spaces or NULs, or GNU base-256 (high bit of the
 * first byte set) for values that do not fit. `offset` is the block's offset, for errors.
 */
export function readNumber(
  block: Uint8Array,
  start: number,
  length: number,
  name: string,
  offset: number,
): number {
  const first = block[start]!;
  if (first & 0x80) {
    if (first === 0xff) throw new TarError("FIELD", `negative base-256 ${name} field`, offset + start);
    let value = first & 0x7f;
    for (let i = start + 1; i < start + length; i++) {
      value = value * 256 + block[i]!;
      if (value > Number.MAX_SAFE_INTEGER) {
        throw new TarError("FIELD", `base-256 ${name} field exceeds 2^53`, offset + start);
      }
    }
    return value;
  }
  let i = start;
  const end = start + length;
  while (i < end && (block[i] === 0x20 || block[i] === 0)) i++;
  let value = 0;
  let digits = 0;
  for (; i < end; i++) {
    const c = block[i]!;
    if (c === 0x20 || c === 0) break;
    if (c < 0x30 || c > 0x37) {
      throw new TarError(
        "FIELD",
        `${name} field is not octal: expected digits 0-7, found byte 0x${c.toString(16)}`,
        offset + i,
      );
    }
    value = value * 8 + (c - 0x30);
    digits++;
  }
  // Whatever follows the digits must be padding, or the field was not written by a tar tool.
  for (; i < end; i++) {
    const c = block[i]!;
    if (c !== 0x20 && c !== 0) {
      throw new TarError(
        "FIELD",
        `${name} field has a byte 0x${c.toString(16)} after its digits`,
        offset + i,
      );
    }
  }
  return digits === 0 ? 0 : value;
}

/** Unsigned sum of the block with the checksum field read as spaces; `signed` for tars from old Sun tools. */
export function headerChecksum(block: Uint8Array, signed = false): number {
  let sum = 0;
  for (let i = 0; i < BLOCK_SIZE; i++) {
    const inField = i >= 148 && i < 156;
    const b = inField ? 0x20 : block[i]!;
    sum += signed && b > 127 ? b - 256 : b;
  }
  return sum;
}

/** A header block of the ustar family: "ustar" at the magic field (POSIX "ustar\0", GNU "ustar "). */
export function hasUstarMagic(block: Uint8Array): boolean {
  const at = Field.magic[0];
  return (
    block[at] === 0x75 &&
    block[at + 1] === 0x73 &&
    block[at + 2] === 0x74 &&
    block[at + 3] === 0x61 &&
    block[at + 4] === 0x72
  );
}

export function isZeroBlock(block: Uint8Array): boolean {
  for (let i = 0; i < BLOCK_SIZE; i++) if (block[i] !== 0) return false;
  return true;
}

export function paddedSize(size: number): number {
  const rem = size % BLOCK_SIZE;
  return rem === 0 ? size : size + BLOCK_SIZE - rem;
}

/**
 * PAX records: `<length> <key>=<value>\n`, length counting the whole record in bytes.
 * `offset` is where the record data starts in the tar, for errors.
 */
export function parsePaxRecords(data: Uint8Array, offset: number): Map<string, string> {
  const records = new Map<string, string>();
  let pos = 0;
  while (pos < data.length) {
    // Trailing NUL padding after the last record appears in tars from some writers.
    if (data[pos] === 0) break;
    let length = 0;
    let i = pos;
    while (i < data.length && data[i]! >= 0x30 && data[i]! <= 0x39 && i - pos < 10) {
      length = length * 10 + (data[i]! - 0x30);
      i++;
    }
    if (i === pos || data[i] !== 0x20 || length <= i - pos + 1 || pos + length > data.length) {
      throw new TarError("PAX", "malformed PAX record: expected '<length> <key>=<value>\\n'", offset + pos);
    }
    const end = pos + length;
    if (data[end - 1] !== 0x0a)
      throw new TarError("PAX", "PAX record does not end with a newline", offset + pos);
    const body = data.subarray(i + 1, end - 1);
    const eq = body.indexOf(0x3d);
    if (eq <= 0) throw new TarError("PAX", "PAX record has no key", offset + pos);
    records.set(decodeUtf8(body.subarray(0, eq)), decodeUtf8(body.subarray(eq + 1)));
    pos = end;
  }
  return records;
}

/** Encodes PAX records, solving the self-referential length prefix. */
export function encodePaxRecords(records: Iterable<readonly [string, string]>): Uint8Array {
  const parts: Uint8Array[] = [];
  for (const [key, value] of records) {
    const body = encodeUtf8(` ${key}=${value}\n`);
    let length = body.length + 1;
    while (String(length).length + body.length !== length) length = String(length).length + body.length;
    parts.push(encodeUtf8(String(length)), body);
  }
  return concatBytes(parts);
}

export function concatBytes(parts: readonly Uint8Array[]): Uint8Array {
  let total = 0;
  for (const p of parts) total += p.length;
  const pooled = Buffer.allocUnsafe(total);
  // A plain Uint8Array view over pooled memory: fast to allocate, and .slice() still copies.
  const out = new Uint8Array(pooled.buffer, pooled.byteOffset, total);
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}
