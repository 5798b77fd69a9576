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
  GZIP_FIXED_HEADER,
  GZIP_TRAILER,
  GzipMismatchError,
  GzipRunner,
  gunzipText,
  MAX_GZIP_HEADER,
  MAX_GZIP_TEXT,
  RecipeGroups,
  rebuildGzipFiles,
} from "../refzstd/regzip.js";
import { MAX_VARINT_BYTES } from "../varint.js";
import { encodeRangeTable, type FilterRange, parseRangeTable, readTable, splitAtRanges } from "./payload.js";

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
  return encodeRangeTable(pieces, "gzip pieces", MAX_GZIP_PIECES, (p) => [
    p.headerLength,
    p.textLength,
    p.level,
  ]);
}

/** Parses the table at the start of `bytes`; every piece must lie inside the tar of `outputSize` bytes and be one a device can rebuild. */
export function parseGzipTable(
  bytes: Uint8Array,
  outputSize: number,
): { pieces: GzipPiece[]; tableLength: number } {
  const { entries, tableLength } = parseRangeTable<GzipPiece>(bytes, {
    table: "gzip table",
    entry: "piece",
    entries: "pieces",
    max: MAX_GZIP_PIECES,
    fields: ["header length", "text length", "gzip level"],
    error: (message, offset) => new GzipTableError(message, offset),
    make: (i, offset, length, [headerLength, textLength, level], at) => {
      if (
        headerLength! < GZIP_FIXED_HEADER ||
        headerLength! > MAX_GZIP_HEADER ||
        textLength! > MAX_GZIP_TEXT ||
        level! < 1 ||
        level! > 9 ||
        length < headerLength! + GZIP_TRAILER ||
        length > maxOutputLength(headerLength!, textLength!) ||
        offset + length > outputSize
      ) {
        throw new GzipTableError(
          `piece ${i} (${length} bytes at ${offset} from a ${headerLength}-byte header and ${textLength} bytes of text at level ${level}) is out of bounds for a ${outputSize}-byte layer`,
          at,
        );
      }
      return { offset, length, headerLength: headerLength!, textLength: textLength!, level: level! };
    },
  });
  return { pieces: entries, tableLength };
}

/**
 * Texts larger than this stay gzip files: the device pays for every text byte with GNU gzip's
 * time (about 37 ms per MB at -9), and large texts gain least. On the first image's Debian layer
 * (zstd -19 of the layer, the gzip CPU seconds of the texts on the benchmark machine):
 *
 *   texts up to   gain     gzip -9 CPU
 *   32 KiB        2.04 MB  0.20 s
 *   128 KiB       2.54 MB  0.41 s
 *   512 KiB       3.00 MB  0.73 s
 *   any (2 MiB)   3.80 MB  1.33 s
 *
 * With every text the first image's apply into a registry took 3.2-3.4 s against 2.9-3.1 (and 2.0
 * without gzip pieces): 106-113 MB/s of output, too close to the 100 MB/s a device must keep, so
 * the last 0.8 MB stay gzip files.
 */
export const MAX_PLAIN_GZIP_TEXT = 512 * 1024;

/**
 * The pieces of a layer tar at `path`: of the candidate ranges (files that start with the gzip
 * magic), those GNU gzip rebuilds exactly from a text of at most `maxText` bytes. Without a
 * working gzip, none.
 */
export async function findGzipPieces(
  path: string,
  candidates: readonly FilterRange[],
  scratchDir?: string,
  maxText = MAX_PLAIN_GZIP_TEXT,
): Promise<GzipPiece[]> {
  const pieces: GzipPiece[] = [];
  const groups = new RecipeGroups<FilterRange>((range, recipe) => {
    if (recipe.textLength <= maxText) pieces.push({ offset: range.offset, length: range.length, ...recipe });
  }, scratchDir);
  const handle = await open(path, "r");
  try {
    for (const range of candidates) {
      if (range.length < GZIP_FIXED_HEADER + GZIP_TRAILER || range.length > maxText) continue;
      const file = new Uint8Array(range.length);
      const { bytesRead } = await handle.read(file, 0, range.length, range.offset);
      if (bytesRead !== range.length) throw new Error(`${path} ends inside the gzip file at ${range.offset}`);
      // The trailer's last word is the text's length (mod 2^32): larger texts are not inflated.
      if (new DataView(file.buffer).getUint32(file.length - 4, true) > maxText) continue;
      await groups.add(range, file);
    }
    await groups.settle();
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
  let file: Uint8Array | undefined;
  let filled = 0;
  let done = 0;
  for await (const part of splitAtRanges(chunks, pieces)) {
    if (part.range < 0) {
      yield part.bytes;
      continue;
    }
    const piece = pieces[part.range]!;
    file ??= new Uint8Array(piece.length);
    file.set(part.bytes, filled);
    filled += part.bytes.length;
    if (!part.last) continue;
    const text = gunzipText(file);
    if (text === undefined || text.length !== piece.textLength)
      throw new Error(`the gzip file at ${piece.offset} of the layer changed while it was encoded`);
    yield file.slice(0, piece.headerLength);
    yield text;
    yield file.slice(file.length - GZIP_TRAILER);
    file = undefined;
    filled = 0;
    done++;
  }
  if (done < pieces.length)
    throw new Error(`the layer ended before its gzip file at ${pieces[done]!.offset}`);
}

/** A piece's sent bytes, or plain bytes that wait behind a piece for their batch. */
type Held = { piece: GzipPiece; index: number; sent: Uint8Array } | { plain: Uint8Array };

/** Held bytes in output order whose pieces are rebuilt by one gzip run per level. */
interface Batch {
  readonly held: Held[];
  text: number;
  plain: number;
  /** The rebuilt files of the batch's pieces, in order, once its gzip runs are started. */
  files?: Promise<Uint8Array[]>;
  /** Set when `files` has settled, so finished batches are passed on without waiting. */
  settled: boolean;
}

/** Text bytes per batch: one gzip process rebuilds a batch. */
const BATCH_TEXT = 1 * 1024 * 1024;
/** Plain bytes a batch holds behind its pieces before it is closed. */
const BATCH_PLAIN = 1 * 1024 * 1024;
/**
 * Batches whose gzip runs while the stream goes on, so the device's second core rebuilds files
 * while the first decompresses. Two at once were no faster on the first image (2.5-2.7 s into an
 * archive either way, five runs each) and hold more, so one.
 */
const BATCHES_IN_FLIGHT = 1;

/**
 * The device's side: rebuilds the layer tar from the decompressed stream. Pieces are rebuilt in
 * batches, each by its own gzip process while the stream goes on; the bytes after a batch's first
 * piece wait (copied) until it is done, so memory stays within a few batches' bytes. Chunks passed
 * in may be reused by their producer after the next is pulled. Throws GzipMismatchError when a
 * file does not rebuild or the stream ends inside a piece, GzipToolError when gzip cannot run.
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
  /** The batch being filled, and the batches whose gzip runs, oldest first. */
  let open: Batch | undefined;
  const running: Batch[] = [];
  const runner = new GzipRunner(scratchDir);

  const close = () => {
    const batch = open!;
    open = undefined;
    const rebuilt = batch.held.flatMap((h) => ("piece" in h ? [h] : []));
    batch.files = rebuildGzipFiles(
      rebuilt.map((h) => ({ sent: h.sent, ...h.piece })),
      runner,
      1,
    ).catch((err: unknown) => {
      if (!(err instanceof GzipMismatchError)) throw err;
      const at = rebuilt[err.index];
      const which =
        at !== undefined ? `gzip piece ${at.index} (at byte ${at.piece.offset} of the layer)` : "gzip pieces";
      throw new GzipMismatchError(err.index, `${which}: ${err.message}`);
    });
    batch.files.then(
      () => {
        batch.settled = true;
      },
      () => {
        batch.settled = true;
      },
    );
    running.push(batch);
  };
  async function* passOn(batch: Batch): AsyncGenerator<Uint8Array> {
    const files = await batch.files!;
    let k = 0;
    for (const h of batch.held) yield "plain" in h ? h.plain : files[k++]!;
  }
  const hold = (h: Held) => {
    const b = (open ??= { held: [], text: 0, plain: 0, settled: false });
    b.held.push(h);
    if ("plain" in h) b.plain += h.plain.length;
    else b.text += h.piece.textLength;
    return b.text >= BATCH_TEXT || b.plain >= BATCH_PLAIN;
  };

  try {
    for await (const whole of chunks) {
      let chunk = whole;
      while (chunk.length > 0) {
        if (sent === undefined) {
          const start = next < pieces.length ? pieces[next]!.offset : Number.POSITIVE_INFINITY;
          const plain = Math.min(chunk.length, start - position);
          if (plain > 0) {
            let full: boolean | undefined;
            // A copy: the producer may reuse its chunk (Buffer's slice would be a view).
            if (open !== undefined || running.length > 0)
              full = hold({ plain: new Uint8Array(chunk.subarray(0, plain)) });
            if (full === undefined) yield chunk.subarray(0, plain);
            else if (full) close();
            chunk = chunk.subarray(plain);
            position += plain;
          } else {
            sent = new Uint8Array(sentLength(pieces[next]!));
            filled = 0;
          }
        } else {
          const take = Math.min(chunk.length, sent.length - filled);
          sent.set(chunk.subarray(0, take), filled);
          filled += take;
          chunk = chunk.subarray(take);
          if (filled === sent.length) {
            const piece = pieces[next]!;
            if (hold({ piece, index: next, sent })) close();
            next++;
            position += piece.length;
            sent = undefined;
          }
        }
        // Finished batches go on at once; with too many running, the oldest is waited for.
        while (running.length > 0 && (running[0]!.settled || running.length > BATCHES_IN_FLIGHT))
          yield* passOn(running.shift()!);
        // Plain bytes held behind batches that are now passed on need not wait for more.
        if (running.length === 0 && open !== undefined && open.held.every((h) => "plain" in h)) {
          const waiting = open;
          open = undefined;
          for (const h of waiting.held) if ("plain" in h) yield h.plain;
        }
      }
    }
    if (sent !== undefined || next < pieces.length) {
      throw new GzipMismatchError(
        next,
        `the payload ends before gzip piece ${next} (at byte ${pieces[next]!.offset} of the layer) is complete`,
      );
    }
    if (open !== undefined) close();
    while (running.length > 0) yield* passOn(running.shift()!);
  } finally {
    await runner.close();
  }
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
