/**
 * A push-based tar scanner for indexing and delta planning: it reports each entry's path,
 * type, header offset and data range, and hands over the data bytes of regular files as
 * they stream past. It never copies the archive; rebuilding bytes is the VCDIFF encoder's job.
 */
import { createHash, type Hash } from "node:crypto";
import {
  BLOCK_SIZE,
  decodeUtf8,
  entryTypeOf,
  Field,
  headerChecksum,
  isZeroBlock,
  MAX_META_DATA_BYTES,
  paddedSize,
  parsePaxRecords,
  readNumber,
  readString,
  type TarEntryType,
  TarError,
  TypeFlag,
} from "../tar/format.js";

export interface ScannedEntry {
  /** Offset of the entry's first header block (PAX and GNU long-name blocks included). */
  readonly headerOffset: number;
  /** Offset of the first data byte; the header blocks are [headerOffset, dataOffset). */
  readonly dataOffset: number;
  /** Data bytes in the archive (unpadded). */
  readonly size: number;
  readonly type: TarEntryType;
  readonly path: string;
  readonly linkPath: string;
  /** First 12 hex digits of sha256 over the header blocks [headerOffset, dataOffset). */
  readonly headerHash: string;
}

export interface TarScanHandler {
  /** An entry's headers were read; its data follows. */
  entry(entry: ScannedEntry): void;
  /** Data bytes of the current entry (regular files only), in order. */
  data?(chunk: Uint8Array): void;
  /** The current entry's data is complete. */
  entryEnd?(entry: ScannedEntry): void;
}

enum State {
  Header,
  Meta,
  Data,
  Skip,
  Tail,
}

function normalizePath(path: string): string {
  let p = path;
  while (p.startsWith("./")) p = p.slice(2);
  while (p.startsWith("/")) p = p.slice(1);
  if (p.endsWith("/")) p = p.slice(0, -1);
  return p;
}

export class TarScanner {
  private state = State.Header;
  private position = 0;
  private readonly block = new Uint8Array(BLOCK_SIZE);
  private blockFill = 0;
  private groupStart = -1;
  private metaKind = 0;
  private meta = new Uint8Array(0);
  private metaFill = 0;
  private remaining = 0;
  private skip = 0;
  private pendingPath: string | undefined;
  private pendingLink: string | undefined;
  private pendingSize: number | undefined;
  private current: ScannedEntry | undefined;
  private deliver = false;
  private headerHash: Hash | undefined;

  constructor(private readonly handler: TarScanHandler) {}

  /** Bytes consumed so far. */
  get offset(): number {
    return this.position;
  }

  push(chunk: Uint8Array): void {
    let i = 0;
    while (i < chunk.length) {
      switch (this.state) {
        case State.Tail:
          this.position += chunk.length - i;
          return;
        case State.Header: {
          const take = Math.min(BLOCK_SIZE - this.blockFill, chunk.length - i);
          this.block.set(chunk.subarray(i, i + take), this.blockFill);
          this.blockFill += take;
          i += take;
          this.position += take;
          if (this.blockFill === BLOCK_SIZE) {
            this.blockFill = 0;
            this.header(this.position - BLOCK_SIZE);
          }
          break;
        }
        case State.Meta: {
          const take = Math.min(this.meta.length - this.metaFill, chunk.length - i);
          this.meta.set(chunk.subarray(i, i + take), this.metaFill);
          this.metaFill += take;
          i += take;
          this.position += take;
          if (this.metaFill === this.meta.length) this.metaDone();
          break;
        }
        case State.Data: {
          const take = Math.min(this.remaining, chunk.length - i);
          if (this.deliver && take > 0) this.handler.data?.(chunk.subarray(i, i + take));
          this.remaining -= take;
          i += take;
          this.position += take;
          if (this.remaining === 0) {
            this.handler.entryEnd?.(this.current!);
            this.state = this.skip > 0 ? State.Skip : State.Header;
          }
          break;
        }
        case State.Skip: {
          const take = Math.min(this.skip, chunk.length - i);
          this.skip -= take;
          i += take;
          this.position += take;
          if (this.skip === 0) this.state = State.Header;
          break;
        }
      }
    }
  }

  /** Checks the archive ended at a block boundary (an archive without end marker is accepted, as tar does). */
  finish(): number {
    if (this.state !== State.Tail && (this.state !== State.Header || this.blockFill !== 0)) {
      throw new TarError("TRUNCATED", "the tar ends inside an entry", this.position);
    }
    return this.position;
  }

  private header(offset: number): void {
    const block = this.block;
    if (isZeroBlock(block)) {
      // The end marker: whatever follows is record padding.
      this.state = State.Tail;
      return;
    }
    const stored = readNumber(block, Field.checksum[0], Field.checksum[1], "checksum", offset);
    if (stored !== headerChecksum(block) && stored !== headerChecksum(block, true)) {
      throw new TarError("CHECKSUM", "header checksum does not match", offset);
    }
    if (this.groupStart < 0) {
      this.groupStart = offset;
      this.headerHash = createHash("sha256");
    }
    this.headerHash!.update(block);
    const flag = block[Field.typeFlag[0]]!;
    const size = readNumber(block, Field.size[0], Field.size[1], "size", offset);
    if (
      flag === TypeFlag.paxLocal ||
      flag === TypeFlag.paxGlobal ||
      flag === TypeFlag.gnuLongName ||
      flag === TypeFlag.gnuLongLink
    ) {
      if (size > MAX_META_DATA_BYTES) throw new TarError("LIMIT", `metadata entry of ${size} bytes`, offset);
      this.metaKind = flag;
      this.meta = new Uint8Array(paddedSize(size));
      this.metaFill = 0;
      this.remaining = size;
      if (this.meta.length === 0) this.metaDone();
      else this.state = State.Meta;
      return;
    }
    let path = readString(block, Field.name[0], Field.name[1]);
    const magic = readString(block, Field.magic[0], Field.magic[1]);
    if (magic === "ustar") {
      const prefix = readString(block, Field.prefix[0], Field.prefix[1]);
      if (prefix !== "") path = `${prefix}/${path}`;
    }
    const linkPath = this.pendingLink ?? readString(block, Field.linkName[0], Field.linkName[1]);
    path = this.pendingPath ?? path;
    const dataSize = this.pendingSize ?? size;
    const type = flag === TypeFlag.gnuSparse ? "other" : entryTypeOf(flag);
    // Hard links, symlinks and directories carry no data even when the size field says otherwise.
    const carriesData =
      flag !== TypeFlag.hardlink && flag !== TypeFlag.symlink && flag !== TypeFlag.directory;
    const dataLength = carriesData ? dataSize : 0;
    const entry: ScannedEntry = {
      headerOffset: this.groupStart,
      dataOffset: offset + BLOCK_SIZE,
      size: dataLength,
      type,
      path: normalizePath(path),
      linkPath: type === "hardlink" ? normalizePath(linkPath) : linkPath,
      headerHash: this.headerHash!.digest("hex").slice(0, 12),
    };
    this.groupStart = -1;
    this.pendingPath = this.pendingLink = this.pendingSize = undefined;
    this.current = entry;
    this.handler.entry(entry);
    this.deliver = type === "file";
    this.remaining = dataLength;
    this.skip = paddedSize(dataLength) - dataLength;
    if (dataLength === 0) {
      this.handler.entryEnd?.(entry);
      this.state = this.skip > 0 ? State.Skip : State.Header;
    } else {
      this.state = State.Data;
    }
  }

  private metaDone(): void {
    this.headerHash!.update(this.meta);
    const data = this.meta.subarray(0, this.remaining);
    const at = this.position - this.meta.length;
    if (this.metaKind === TypeFlag.paxLocal) {
      const records = parsePaxRecords(data, at);
      const path = records.get("path");
      const link = records.get("linkpath");
      const size = records.get("size");
      if (path !== undefined) this.pendingPath = path;
      if (link !== undefined) this.pendingLink = link;
      if (size !== undefined) {
        if (!/^\d+$/.test(size))
          throw new TarError("PAX", `PAX size ${JSON.stringify(size)} is not a number`, at);
        this.pendingSize = Number(size);
      }
    } else if (this.metaKind === TypeFlag.gnuLongName) {
      this.pendingPath = decodeUtf8(trimNul(data));
    } else if (this.metaKind === TypeFlag.gnuLongLink) {
      this.pendingLink = decodeUtf8(trimNul(data));
    } else {
      // A PAX global header applies to what follows but names no entry; it stays part of the next group.
    }
    this.remaining = 0;
    this.state = State.Header;
  }
}

function trimNul(bytes: Uint8Array): Uint8Array {
  const end = bytes.indexOf(0);
  return end < 0 ? bytes : bytes.subarray(0, end);
}
