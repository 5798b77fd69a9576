/**
 * The `ref-zstd` payload, byte by byte: a file-aligned delta of one layer tar against a virtual
 * source. Target bytes whose content the source already holds are COPYs; everything else (tar
 * headers, changed and new files) forms a literal stream, cut into segments, and each segment's
 * literal bytes are one zstd frame compressed against a reference: the old versions of the same
 * entries, in the same order, loaded as a raw-content dictionary. Aligned that way, most of a
 * changed file or header is a repeat-offset match into its old version.
 *
 *   payload  := magic "DSRZ" (44 53 52 5A), version (1 byte, 1),
 *               varint outputSize, varint segmentCount, segment × segmentCount
 *   segment  := varint outputLength, varint literalLength, varint extentCount,
 *               varint pieceCount, varint tablesLength, varint frameLength,
 *               tables (zstd frame, tablesLength bytes), literal frame (frameLength bytes)
 *   tables   := extent × extentCount, piece × pieceCount (after zstd decompression)
 *   extent   := varint zigzag(sourceOffset − end of the previous extent), varint length
 *   piece    := varint (length × 2 + isCopy) [, varint zigzag(sourceOffset − expected) if isCopy]
 *             | varint 0, varint length, varint zigzag(sourceOffset − expected)       (a diff piece)
 *
 * A diff piece (approximate matching, for changed executables: see approx.ts) makes output byte i
 * = source[sourceOffset + i] + the next literal byte (mod 256); its bytes count as literal bytes
 * and it moves `expected` like a copy. The 0 word is free because a literal piece is never empty.
 * Varints are unsigned LEB128 (7 bits per byte, least significant first). The dictionary of a
 * segment's literal frame is one zero byte followed by its extents read from the source (the
 * zero byte keeps zstd from taking a reference that starts with its dictionary magic as a
 * formatted dictionary). A segment with no literal bytes has no frame (frameLength 0).
 * `expected` starts at 0 in every segment; after a copy it is the copy's end, after literal
 * bytes it moves on by their length (a literal header between two copied files stands for the
 * old header between them, so in-order files cost one byte). The previous extent's end starts
 * at 0 in every segment too.
 *
 * Version 2 adds recompressed gzip files (see regzip.ts); a payload without them stays version 1.
 * Its extents and pieces are:
 *
 *   extent   := varint zigzag(sourceOffset − end of the previous extent), varint (length × 2 + inflate)
 *               [, varint inflatedLength if inflate]
 *   piece    := … as in version 1
 *             | varint 1, varint outputLength, varint headerLength, varint textLength, varint level
 *                                                                                     (a gzip piece)
 *
 * An inflated extent puts the decompressed text of the gzip file source[sourceOffset, +length)
 * in the dictionary (exactly inflatedLength bytes), so a changed `.gz` file's new text is
 * compressed against its old text. A gzip piece takes headerLength + textLength + 8 literal
 * bytes: the file's own gzip header, its text, and its 8-byte trailer; the output is that header,
 * the deflate data of `gzip -c -n -LEVEL` of the text, and the trailer, outputLength bytes in
 * all (the trailer must equal gzip's own). It moves `expected` on by outputLength. The word 1 is
 * free in version 1 too: it would be an empty copy.
 *
 * Version 3 adds x86 diff pieces (see x86diff.ts) to everything of version 2; a payload without
 * them stays version 1 or 2. Its diff pieces and tables are:
 *
 *   piece    := … as in version 2, except
 *             | varint 0, varint (length × 4 + mode), varint zigzag(sourceOffset − expected)
 *   tables   := extent × extentCount, piece × pieceCount, varint wordCount × 5
 *
 * where mode is 0 for a plain diff piece, 1 for an x86 one, 2 for an x86 one of a
 * position-dependent executable (MOV r32, imm32 operands too), and its literal frame holds the
 * segment's literal bytes, then the words of the five kinds of operand (CALL, JMP, Jcc,
 * RIP-relative, MOV imm32), kind after kind, wordCount[k] 32-bit little-endian
 * words each (literalLength counts them all). In an x86 diff piece, the source bytes decide
 * where an operand starts (x86diff.ts has the rule); its four output bytes are the source's four
 * bytes plus the next word of its kind, as one 32-bit little-endian sum, and their difference
 * bytes must be 0. Every other byte is source plus difference byte, as in a diff piece.
 *
 * Version 4 keeps everything of version 3 and moves tar headers apart from file contents
 * (tarsplit.ts). A segment header has a seventh varint:
 *
 *   segment  := varint outputLength, varint literalLength, varint extentCount,
 *               varint pieceCount, varint tablesLength, varint frameLength, varint headerLength,
 *               tables, literal frame
 *
 * Decoder and encoder walk the payload's whole output as a tar (TarWalk; its state runs on from
 * segment to segment). When headerLength is not 0, each byte of a plain literal piece that the
 * walk places in a header block or in metadata is the next of the frame's first headerLength
 * bytes; every other literal byte (plain literal bytes elsewhere, diff pieces' difference bytes)
 * comes after those, in piece order, then the x86 diff words as in version 3. The header part
 * must be used up exactly. A segment with gzip pieces has headerLength 0. When headerLength is 0
 * the segment's literal bytes are in piece order, as in version 3.
 */

import { VarintReader as BaseVarintReader, MAX_VARINT_BYTES, VarintWriter } from "../varint.js";

export { MAX_VARINT_BYTES, VarintWriter };

export const REFZSTD_MAGIC = Uint8Array.of(0x44, 0x53, 0x52, 0x5a);
export const REFZSTD_VERSION = 1;
/** The version of payloads with inflated extents or gzip pieces. */
export const REFZSTD_VERSION_GZIP = 2;
/** The version of payloads with x86 diff pieces (and everything of version 2). */
export const REFZSTD_VERSION_X86 = 3;
/** The version of payloads whose segments may send tar headers apart (and everything of version 3). */
export const REFZSTD_VERSION_SPLIT = 4;
/** The piece word that starts a diff piece. */
export const DIFF_PIECE = 0;
/** The piece word that starts a gzip piece (version 2). */
export const GZIP_PIECE = 1;
/** Magic plus the version byte. */
export const PREAMBLE_SIZE = REFZSTD_MAGIC.length + 1;

// Limits that guard the decoder against hostile input (and that the encoder stays within).
/** Literal bytes per segment: the decoder holds one segment's literal bytes in memory. */
export const MAX_SEGMENT_LITERAL = 16 * 1024 * 1024;
/** Reference bytes per segment: the decoder holds the reference in memory while it decodes the frame. */
export const MAX_REFERENCE = 32 * 1024 * 1024;
/** x86 diff words per segment: a field takes five bytes of a diff piece, whose bytes are literal bytes. */
export const MAX_X86_WORDS = Math.floor(MAX_SEGMENT_LITERAL / 5);
/** Literal frame bytes per segment of a version-3 payload: literal bytes and x86 diff words. */
export const MAX_SEGMENT_LITERAL_X86 = MAX_SEGMENT_LITERAL + 4 * MAX_X86_WORDS;
/** Extents per segment: their table is held in memory (16 bytes each). */
export const MAX_EXTENTS = 1 << 18;
/** Pieces per segment: their table is held in memory (16 bytes each). */
export const MAX_PIECES = 1 << 19;
/** Source offsets beyond this are refused, so zigzag-coded deltas stay exact integers. */
export const MAX_SOURCE_SIZE = 2 ** 50;
/** Output sizes stay exact JavaScript integers. */
export const MAX_OUTPUT_SIZE = Number.MAX_SAFE_INTEGER;
/** The varints of a segment header (seven in version 4), at most. */
export const MAX_SEGMENT_HEADER = 7 * MAX_VARINT_BYTES;
/** zstd window for literal frames: covers a full reference plus a full segment (a decoder decodes single-shot, so it never allocates the window). */
export const FRAME_WINDOW_LOG = 26;

/** Upper bound of the decompressed tables of a segment with these counts. */
export function maxTablesSize(extentCount: number, pieceCount: number, version = REFZSTD_VERSION): number {
  // Version 2: an inflated extent has three varints, a gzip piece five; version 3 ends with the word count.
  if (version === REFZSTD_VERSION) return (2 * extentCount + 2 * pieceCount) * MAX_VARINT_BYTES;
  return (3 * extentCount + 5 * pieceCount + (version >= REFZSTD_VERSION_X86 ? 1 : 0)) * MAX_VARINT_BYTES;
}

/** zstd's ZSTD_COMPRESSBOUND: the largest frame a compressor writes for `n` input bytes. */
export function compressBound(n: number): number {
  const small = 128 * 1024;
  return n + (n >>> 8) + (n < small ? (small - n) >>> 11 : 0);
}

export type RefZstdErrorCode = "BAD_MAGIC" | "VERSION" | "TRUNCATED" | "LIMIT" | "CORRUPT" | "SOURCE";

/** Every malformed or truncated payload ends in this error, with the byte offset in the payload. */
export class RefZstdError extends Error {
  readonly code: RefZstdErrorCode;
  readonly offset: number;
  constructor(code: RefZstdErrorCode, message: string, offset: number) {
    super(`ref-zstd ${code.toLowerCase().replace(/_/g, " ")} at byte ${offset}: ${message}`);
    this.name = "RefZstdError";
    this.code = code;
    this.offset = offset;
  }
}

/** One piece of a segment's output: literal bytes (next from the literal frame) or a copy from the source. */
export interface Piece {
  readonly length: number;
  /** Source offset for a copy; -1 for literal bytes. */
  readonly sourceOffset: number;
}

export interface Extent {
  readonly sourceOffset: number;
  readonly length: number;
  /** Set for an inflated extent (version 2): the source range is a gzip file, the dictionary holds its text of this length. */
  readonly inflatedLength?: number;
}

export interface SegmentHeader {
  readonly outputLength: number;
  readonly literalLength: number;
  readonly extentCount: number;
  readonly pieceCount: number;
  readonly tablesLength: number;
  readonly frameLength: number;
  /** Version 4: literal bytes of header blocks at the start of the frame; 0 before. */
  readonly headerLength: number;
}

export function zigzag(n: number): number {
  return n >= 0 ? n * 2 : -n * 2 - 1;
}

export function unzigzag(n: number): number {
  return n % 2 === 0 ? n / 2 : -(n + 1) / 2;
}

/** Reads varints from a buffer that starts at `base` in the payload; bad varints are RefZstdErrors. */
export class VarintReader extends BaseVarintReader {
  constructor(bytes: Uint8Array, base: number, what: string) {
    super(bytes, base, what, (code, message, offset) => new RefZstdError(code, message, offset));
  }
}
