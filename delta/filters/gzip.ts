/**
 * Gzip files sent as their text in plain payloads (`zstd-gz`, `brotli-gz`). A layer's `.gz`
 * files (Debian's changelogs and man pages) are deflate streams that zstd and Brotli cannot
 * compress further; their texts compress to much less. Where GNU gzip rebuilds a file exactly
 * from its text (refzstd/regzip.ts), the payload carries the file's header, text and trailer
 * instead of the file, and the device runs the same gzip to rebuild it:
 *
 *   table := varint pieceCount, piece × pieceCount
 *   piece := varint (offset − end of the previous piece), varint output length,
 *            varint header length, varint text length, varint gzip level
 *
 * Offsets and output lengths are in the layer tar (a file's content); a piece's place in the
 * decompressed stream takes header length + text length + 8 bytes instead of its output length.
 * Pieces are in order and do not overlap.
 */
import { open } from "node:fs/promises";
import {
  findGzipRecipesInHalves,
  GZIP_FIXED_HEADER,
  GZIP_TRAILER,
  GzipMismatchError,
  gunzipText,
  MAX_GZIP_HEADER,
  MAX_GZIP_TEXT,
  rebuildGzipFiles,
} from "../refzstd/regzip.js";
import { MAX_VARINT_BYTES, VarintReader, VarintWriter } from "../varint.js";
import { type FilterRange, readTable } from "./payload.js";

/** Gzip files smaller than this stay as they are: their text saves less than a piece costs. */
export const MIN_GZIP_FILE = 64;
/** Pieces a payload may name: the table is held in memory. */
export const MAX_GZIP_PIECES = 1 << 18;
/** The table's largest encoded size. */
export const MAX_GZIP_TABLE_SIZE = MAX_VARINT_BYTES * (1 + 5 * MAX_GZIP_PIECES);

export interface GzipPiece {
  /** Where the gzip file starts in the layer tar, and its length there. */
  readonly offset: number;
  readonly length: number;
  readonly headerLength: number;
  readonly textLength: number;
  readonly level: number;
}

export class GzipTableError extends Error {
  override readonly name = "GzipTableError";
  readonly offset: number;
  constructor(message: string, offset: number) {
    super(`gzip table at byte ${offset}: ${message}`);
    this.offset = offset;
  }
}

/** A gzip piece's bytes in the decompressed stream: header, text and trailer. */
export function sentLength(piece: GzipPiece): number {
  return piece.headerLength + piece.textLength + GZIP_TRAILER;
}

/**
 * The largest output a piece may declare: gzip's stored blocks grow incompressible text by 5 bytes
 * per 16 KiB at worst, plus the header and trailer.
 */
function maxOutputLength(headerLength: number, textLength: number): number {
  return headerLength + GZIP_TRAILER + textLength + Math.ceil(textLength / 16384) * 5 + 1024;
}

export function encodeGzipTable(pieces: readonly GzipPiece[]): Uint8Array {
  if (pieces.length > MAX_GZIP_PIECES) {
    throw new RangeError(`${pieces.length} gzip pieces, at most ${MAX_GZIP_PIECES}`);
  }
  const out = new VarintWriter();
  out.write(pieces.length);
  let end = 0;
  for (const p of pieces) {
    if (p.offset < end || p.length <= 0)
      throw new RangeError("gzip pieces must be in order, apart and not empty");
    out.write(p.offset - end);
    out.write(p.length);
    out.write(p.headerLength);
    out.write(p.textLength);
    out.write(p.level);
    end = p.offset + p.length;
  }
  return out.result.slice();
}

/** Parses the table at the start of `bytes`; every piece must lie inside the tar of `outputSize` bytes and be one a device can rebuild. */
export function parseGzipTable(
  bytes: Uint8Array,
  outputSize: number,
): { pieces: GzipPiece[]; tableLength: number } {
  const reader = new VarintReader(
    bytes,
    0,
    "gzip table",
    (_, message, offset) => new GzipTableError(message, offset),
  );
  const count = reader.read("the piece count");
  if (count > MAX_GZIP_PIECES) {
    throw new GzipTableError(`${count} pieces, at most ${MAX_GZIP_PIECES} are accepted`, 0);
  }
  const pieces: GzipPiece[] = [];
  let end = 0;
  for (let i = 0; i < count; i++) {
    const at = reader.position;
    const offset = end + reader.read(`piece ${i}'s offset`);
    const length = reader.read(`piece ${i}'s output length`);
    const headerLength = reader.read(`piece ${i}'s header length`);
    const textLength = reader.read(`piece ${i}'s text length`);
    const level = reader.read(`piece ${i}'s gzip level`);
    if (
      headerLength < GZIP_FIXED_HEADER ||
      headerLength > MAX_GZIP_HEADER ||
      textLength > MAX_GZIP_TEXT ||
      level < 1 ||
      level > 9 ||
      length < headerLength + GZIP_TRAILER ||
      length > maxOutputLength(headerLength, textLength) ||
      offset + length > outputSize
    ) {
      throw new GzipTableError(
        `piece ${i} (${length} bytes at ${offset} from a ${headerLength}-byte header and ${textLength} bytes of text at level ${level}) is out of bounds for a ${outputSize}-byte layer`,
        at,
      );
    }
    pieces.push({ offset, length, headerLength, textLength, level });
    end = offset + length;
  }
  return { pieces, tableLength: reader.position };
}

/** Bytes of gzip files held at once while their recipes are looked for. */
const RECIPE_GROUP = 64 * 1024 * 1024;

/**
 * The pieces of a layer tar at `path`: of the candidate ranges (files that start with the gzip
 * magic), those GNU gzip rebuilds exactly from their text. Without a working gzip, none.
 */
export async function findGzipPieces(
  path: string,
  candidates: readonly FilterRange[],
  scratchDir?: string,
): Promise<GzipPiece[]> {
  const pieces: GzipPiece[] = [];
  const handle = await open(path, "r");
  try {
    let group: { range: FilterRange; file: Uint8Array }[] = [];
    let held = 0;
    const settle = async () => {
      const recipes = await findGzipRecipesInHalves(
        group.map((g) => g.file),
        scratchDir,
      );
      group.forEach((g, i) => {
        const recipe = recipes[i];
        if (recipe !== undefined) pieces.push({ offset: g.range.offset, length: g.range.length, ...recipe });
      });
      group = [];
      held = 0;
    };
    for (const range of candidates) {
      if (range.length < GZIP_FIXED_HEADER + GZIP_TRAILER || range.length > MAX_GZIP_TEXT) continue;
      const file = new Uint8Array(range.length);
      const { bytesRead } = await handle.read(file, 0, range.length, range.offset);
      if (bytesRead !== range.length) throw new Error(`${path} ends inside the gzip file at ${range.offset}`);
      group.push({ range, file });
      held += range.length;
      if (held >= RECIPE_GROUP) await settle();
    }
    if (group.length > 0) await settle();
  } finally {
    await handle.close();
  }
  return pieces;
}

/**
 * The encoder's side: the layer tar's stream with each piece's file replaced by its header, text
 * and trailer. Output chunks may split differently from input chunks.
 */
export async function* expandGzipPieces(
  chunks: AsyncIterable<Uint8Array>,
  pieces: readonly GzipPiece[],
): AsyncGenerator<Uint8Array> {
  let position = 0;
  let next = 0;
  let file: Uint8Array | undefined;
  let filled = 0;
  for await (const whole of chunks) {
    let chunk = whole;
    while (chunk.length > 0) {
      if (file === undefined) {
        const start = next < pieces.length ? pieces[next]!.offset : Number.POSITIVE_INFINITY;
        const plain = Math.min(chunk.length, start - position);
        if (plain > 0) {
          yield chunk.subarray(0, plain);
          chunk = chunk.subarray(plain);
          position += plain;
          continue;
        }
        file = new Uint8Array(pieces[next]!.length);
        filled = 0;
      }
      const take = Math.min(chunk.length, file.length - filled);
      file.set(chunk.subarray(0, take), filled);
      filled += take;
      chunk = chunk.subarray(take);
      position += take;
      if (filled === file.length) {
        const piece = pieces[next++]!;
        const text = gunzipText(file);
        if (text === undefined || text.length !== piece.textLength)
          throw new Error(`the gzip file at ${piece.offset} of the layer changed while it was encoded`);
        yield file.slice(0, piece.headerLength);
        yield text;
        yield file.slice(file.length - GZIP_TRAILER);
        file = undefined;
      }
    }
  }
  if (file !== undefined || next < pieces.length)
    throw new Error(`the layer ended before its gzip file at ${pieces[next]?.offset ?? "?"}`);
}

/** A piece's sent bytes or the plain bytes after it, waiting for their batch's gzip runs. */
type Held = { piece: GzipPiece; index: number; sent: Uint8Array } | { plain: Uint8Array };

/** Text bytes rebuilt per batch: the device holds them, their files and the plain bytes between. */
const BATCH_TEXT = 8 * 1024 * 1024;
/** Plain bytes held behind a batch's pieces before the batch is rebuilt. */
const BATCH_PLAIN = 8 * 1024 * 1024;

/**
 * The device's side: rebuilds the layer tar from the decompressed stream. Pieces are rebuilt in
 * batches (one or two gzip runs each), and the bytes after a batch's first piece wait for it, so
 * memory stays within a few batches' bytes. Chunks passed in may be reused by their producer
 * after the next is pulled; held bytes are copied. Throws GzipMismatchError when a file does not
 * rebuild or the stream ends inside a piece, GzipToolError when gzip cannot run.
 */
export async function* rebuildGzipPieces(
  chunks: AsyncIterable<Uint8Array>,
  pieces: readonly GzipPiece[],
  scratchDir?: string,
): AsyncGenerator<Uint8Array> {
  /** Position in the output (the tar). */
  let position = 0;
  let next = 0;
  let sent: Uint8Array | undefined;
  let filled = 0;
  let held: Held[] = [];
  let heldText = 0;
  let heldPlain = 0;
  async function* release(): AsyncGenerator<Uint8Array> {
    const batch = held.filter((h) => "piece" in h);
    const files = await rebuildGzipFiles(
      batch.map((h) => ({ sent: h.sent, ...h.piece })),
      scratchDir,
    ).catch((err: unknown) => {
      if (!(err instanceof GzipMismatchError)) throw err;
      const at = batch[err.index];
      const which =
        at !== undefined ? `gzip piece ${at.index} (at byte ${at.piece.offset} of the layer)` : "gzip pieces";
      throw new GzipMismatchError(err.index, `${which}: ${err.message}`);
    });
    let k = 0;
    const out = held;
    held = [];
    heldText = 0;
    heldPlain = 0;
    for (const h of out) yield "plain" in h ? h.plain : files[k++]!;
  }
  for await (const whole of chunks) {
    let chunk = whole;
    while (chunk.length > 0) {
      if (sent === undefined) {
        const start = next < pieces.length ? pieces[next]!.offset : Number.POSITIVE_INFINITY;
        const plain = Math.min(chunk.length, start - position);
        if (plain > 0) {
          if (held.length === 0) yield chunk.subarray(0, plain);
          else {
            held.push({ plain: chunk.slice(0, plain) });
            heldPlain += plain;
          }
          chunk = chunk.subarray(plain);
          position += plain;
          if (heldPlain >= BATCH_PLAIN) yield* release();
          continue;
        }
        sent = new Uint8Array(sentLength(pieces[next]!));
        filled = 0;
      }
      const take = Math.min(chunk.length, sent.length - filled);
      sent.set(chunk.subarray(0, take), filled);
      filled += take;
      chunk = chunk.subarray(take);
      if (filled === sent.length) {
        const piece = pieces[next]!;
        held.push({ piece, index: next, sent });
        heldText += piece.textLength;
        next++;
        position += piece.length;
        sent = undefined;
        if (heldText >= BATCH_TEXT) yield* release();
      }
    }
  }
  if (sent !== undefined || next < pieces.length) {
    throw new GzipMismatchError(
      next,
      `the payload ends before gzip piece ${next} (at byte ${pieces[next]!.offset} of the layer) is complete`,
    );
  }
  if (held.length > 0) yield* release();
}

/** Reads and parses the gzip table at `start` of what is left of a payload (`length` bytes) in `path`. */
export function readGzipTable(
  path: string,
  start: number,
  length: number,
  outputSize: number,
): Promise<{ pieces: GzipPiece[]; tableLength: number }> {
  return readTable(
    path,
    start,
    length,
    MAX_GZIP_TABLE_SIZE,
    (bytes) => parseGzipTable(bytes, outputSize),
    GzipTableError,
  );
}
