/**
 * Reads one entry's header group: any PAX (`x`, `g`) and GNU long-name (`L`, `K`) headers with
 * their data, the main header, and old GNU sparse extension blocks, keeping every byte. Shared by
 * the streaming reader and by positional indexers that jump over file data.
 */
import {
  BLOCK_SIZE,
  concatBytes,
  entryTypeOf,
  Field,
  GNU_SPARSE_EXTENSION_IS_EXTENDED,
  GNU_SPARSE_IS_EXTENDED,
  headerChecksum,
  isZeroBlock,
  MAX_ENTRY_SIZE,
  MAX_HEADER_GROUP_BYTES,
  MAX_META_DATA_BYTES,
  MAX_SPARSE_EXTENSION_BLOCKS,
  paddedSize,
  parsePaxRecords,
  readNumber,
  readString,
  type TarEntryType,
  TarError,
  TypeFlag,
} from "./format.js";

/** One tar entry as found, with its absolute offsets in the tar. */
export interface TarEntry {
  /** Offset of the entry's first header block (a PAX or GNU long-name header when there is one). */
  readonly headerOffset: number;
  /** Every byte from headerOffset to dataOffset, exactly as stored. */
  readonly header: Uint8Array;
  /** Offset of the first byte of the entry's data. */
  readonly dataOffset: number;
  /** Stored data size in bytes (for sparse entries, the stored fragments, not the expanded file). */
  readonly size: number;
  /** dataOffset + size rounded up to a whole block: where the next entry starts. */
  readonly endOffset: number;
  /** Path from PAX `GNU.sparse.name` or `path`, else a GNU long name, else ustar prefix + name. */
  readonly path: string;
  /** Link target from PAX `linkpath`, else a GNU long link, else the header's link name. */
  readonly linkName: string;
  readonly type: TarEntryType;
  /** The raw type flag byte of the main header. */
  readonly typeFlag: number;
  readonly mode: number;
  readonly uid: number;
  readonly gid: number;
  /** Seconds since the epoch, from the header (PAX fractional mtimes are in `pax`). */
  readonly mtime: number;
  readonly uname: string;
  readonly gname: string;
  readonly devMajor: number;
  readonly devMinor: number;
  /** A GNU sparse entry (`S`, or PAX `GNU.sparse.*`): its data is the stored fragments, passed through. */
  readonly sparse: boolean;
  /** The entry's own PAX records (from an `x` header), if any. */
  readonly pax: ReadonlyMap<string, string> | undefined;
}

/** Reads whole blocks at the current offset; returns null only at a clean end of input (zero bytes left). */
export interface BlockSource {
  readonly offset: number;
  readExact(length: number): Promise<Uint8Array | null>;
}

export type HeaderGroup =
  | { readonly kind: "entry"; readonly entry: TarEntry }
  /**
   * The end-of-archive marker (the first all-zero block), or global PAX headers with no entry
   * after them followed by the marker or the end of input: `block` holds those bytes.
   */
  | { readonly kind: "end"; readonly offset: number; readonly block: Uint8Array }
  /** Input ended exactly at a block boundary without an end-of-archive marker. */
  | { readonly kind: "eof"; readonly offset: number };

function checkChecksum(block: Uint8Array, offset: number): void {
  const stored = readNumber(block, Field.checksum[0], Field.checksum[1], "checksum", offset);
  if (stored === headerChecksum(block) || stored === headerChecksum(block, true)) return;
  throw new TarError(
    "CHECKSUM",
    `header checksum ${stored} does not match the computed ${headerChecksum(block)}; the tar is corrupt`,
    offset,
  );
}

async function mustRead(source: BlockSource, length: number, what: string): Promise<Uint8Array> {
  const at = source.offset;
  const bytes = await source.readExact(length);
  if (bytes === null) {
    throw new TarError("TRUNCATED", `input ended where ${what} of ${length} bytes was expected`, at);
  }
  return bytes;
}

function nulTerminated(data: Uint8Array): string {
  let end = data.indexOf(0);
  if (end < 0) end = data.length;
  return new TextDecoder().decode(data.subarray(0, end));
}

export async function readHeaderGroup(source: BlockSource): Promise<HeaderGroup> {
  const groupOffset = source.offset;
  const parts: Uint8Array[] = [];
  let groupBytes = 0;
  let pax: Map<string, string> | undefined;
  let longName: string | undefined;
  let longLink: string | undefined;
  // Whether the group has a header that only makes sense with an entry after it (x, L, K).
  let entrySpecific = false;

  for (;;) {
    const blockOffset = source.offset;
    const block = await source.readExact(BLOCK_SIZE);
    // Global headers with no entry after them (a git archive of an empty tree) belong to the tail.
    const onlyGlobal = parts.length > 0 && !entrySpecific;
    if (block === null) {
      if (onlyGlobal) return { kind: "end", offset: groupOffset, block: concatBytes(parts) };
      if (parts.length > 0) {
        throw new TarError(
          "TRUNCATED",
          "input ended after an extended header, before its entry",
          blockOffset,
        );
      }
      return { kind: "eof", offset: blockOffset };
    }
    if (isZeroBlock(block)) {
      if (onlyGlobal) return { kind: "end", offset: groupOffset, block: concatBytes([...parts, block]) };
      if (parts.length > 0) {
        throw new TarError("TRUNCATED", "end-of-archive marker right after an extended header", blockOffset);
      }
      return { kind: "end", offset: blockOffset, block };
    }
    checkChecksum(block, blockOffset);
    parts.push(block);
    groupBytes += BLOCK_SIZE;
    const flag = block[Field.typeFlag[0]]!;
    const size = readNumber(block, Field.size[0], Field.size[1], "size", blockOffset);

    const isMeta =
      flag === TypeFlag.paxLocal ||
      flag === TypeFlag.paxGlobal ||
      flag === TypeFlag.gnuLongName ||
      flag === TypeFlag.gnuLongLink;
    if (isMeta) {
      if (size > MAX_META_DATA_BYTES) {
        throw new TarError(
          "LIMIT",
          `extended header of ${size} bytes exceeds the ${MAX_META_DATA_BYTES}-byte limit`,
          blockOffset,
        );
      }
      groupBytes += paddedSize(size);
      if (groupBytes > MAX_HEADER_GROUP_BYTES) {
        throw new TarError(
          "LIMIT",
          `header blocks of one entry exceed ${MAX_HEADER_GROUP_BYTES} bytes`,
          groupOffset,
        );
      }
      const dataOffset = source.offset;
      const padded = await mustRead(source, paddedSize(size), "extended header data");
      parts.push(padded);
      const data = padded.subarray(0, size);
      if (flag !== TypeFlag.paxGlobal) entrySpecific = true;
      if (flag === TypeFlag.paxLocal) {
        pax ??= new Map();
        for (const [k, v] of parsePaxRecords(data, dataOffset)) pax.set(k, v);
      } else if (flag === TypeFlag.paxGlobal) {
        // Validated for well-formedness; global records describe the archive, not one entry.
        parsePaxRecords(data, dataOffset);
      } else if (flag === TypeFlag.gnuLongName) {
        longName = nulTerminated(data);
      } else {
        longLink = nulTerminated(data);
      }
      continue;
    }

    let sparse = flag === TypeFlag.gnuSparse;
    if (sparse && block[GNU_SPARSE_IS_EXTENDED] !== 0) {
      for (let n = 0; ; n++) {
        if (n >= MAX_SPARSE_EXTENSION_BLOCKS) {
          throw new TarError(
            "LIMIT",
            `GNU sparse map longer than ${MAX_SPARSE_EXTENSION_BLOCKS} extension blocks`,
            blockOffset,
          );
        }
        const extension = await mustRead(source, BLOCK_SIZE, "a GNU sparse extension block");
        parts.push(extension);
        groupBytes += BLOCK_SIZE;
        if (extension[GNU_SPARSE_EXTENSION_IS_EXTENDED] === 0) break;
      }
    }
    if (pax?.has("GNU.sparse.major") || pax?.has("GNU.sparse.map") || pax?.has("GNU.sparse.size")) {
      sparse = true;
    }

    let dataSize = size;
    const paxSize = pax?.get("size");
    if (paxSize !== undefined) {
      if (!/^[0-9]{1,16}$/.test(paxSize)) {
        throw new TarError("PAX", `PAX size "${paxSize}" is not a decimal number`, groupOffset);
      }
      dataSize = Number(paxSize);
    }
    // Links, directories and devices carry no data, whatever their size field says (POSIX).
    const type = entryTypeOf(flag);
    if (type === "hardlink" || type === "symlink" || type === "directory") dataSize = 0;
    if (type === "char" || type === "block" || type === "fifo") dataSize = 0;
    if (dataSize > MAX_ENTRY_SIZE) {
      throw new TarError(
        "LIMIT",
        `entry size ${dataSize} exceeds the ${MAX_ENTRY_SIZE}-byte limit; the header is corrupt`,
        blockOffset,
      );
    }

    const magic = readString(block, Field.magic[0], Field.magic[1]);
    const isPosix = magic === "ustar" && block[Field.version[0]] === 0x30;
    // GNU sparse PAX formats store a placeholder path and the real name in GNU.sparse.name.
    let path = pax?.get("GNU.sparse.name") ?? pax?.get("path") ?? longName;
    if (path === undefined) {
      const name = readString(block, Field.name[0], Field.name[1]);
      const prefix = isPosix ? readString(block, Field.prefix[0], Field.prefix[1]) : "";
      path = prefix.length > 0 ? `${prefix}/${name}` : name;
    }
    const linkName =
      pax?.get("linkpath") ?? longLink ?? readString(block, Field.linkName[0], Field.linkName[1]);
    const isDevice = type === "char" || type === "block";

    const header = parts.length === 1 ? parts[0]! : concatBytes(parts);
    const dataOffset = groupOffset + header.length;
    const entry: TarEntry = {
      headerOffset: groupOffset,
      header,
      dataOffset,
      size: dataSize,
      endOffset: dataOffset + paddedSize(dataSize),
      path,
      linkName,
      type,
      typeFlag: flag,
      mode: readNumber(block, Field.mode[0], Field.mode[1], "mode", blockOffset),
      uid: readNumber(block, Field.uid[0], Field.uid[1], "uid", blockOffset),
      gid: readNumber(block, Field.gid[0], Field.gid[1], "gid", blockOffset),
      mtime: readNumber(block, Field.mtime[0], Field.mtime[1], "mtime", blockOffset),
      uname: readString(block, Field.uname[0], Field.uname[1]),
      gname: readString(block, Field.gname[0], Field.gname[1]),
      devMajor: isDevice
        ? readNumber(block, Field.devMajor[0], Field.devMajor[1], "devmajor", blockOffset)
        : 0,
      devMinor: isDevice
        ? readNumber(block, Field.devMinor[0], Field.devMinor[1], "devminor", blockOffset)
        : 0,
      sparse,
      pax,
    };
    return { kind: "entry", entry };
  }
}
