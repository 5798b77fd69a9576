/**
 * Whole-layer payloads: a layer tar through VCDIFF (`vcdiff-zstd`) or as it is (`zstd`, or
 * `zstd-x86` with the x86 filter on its executables), then zstd (or Brotli: `brotli`, `brotli-x86`),
 * streamed from file to file.
 * Plain payloads read nothing but their own tar, so a worker (compress-worker.ts) can build one.
 */
import { createHash } from "node:crypto";
import { createWriteStream, statSync } from "node:fs";
import { availableParallelism } from "node:os";
import { Readable } from "node:stream";
import { pipeline } from "node:stream/promises";
import { createBrotliCompress, constants as zlib } from "node:zlib";
import { CompressStream } from "zstd-napi";
import {
  clearOfCopies,
  dropCopies,
  type FarCopy,
  findFarCopies,
  packFarTables,
  withoutCopies,
} from "../filters/far.js";
import { encodeGzipTable, expandGzipPieces, findGzipPieces } from "../filters/gzip.js";
import { encodeFilterTable, type FilterRange, filterRanges } from "../filters/payload.js";
import type { ReferenceHint } from "../refzstd/encoder.js";
import { type CopyHint, encode, type SearchHint } from "../vcdiff/encoder.js";
import { XDELTA3_WINDOW_SIZE } from "../vcdiff/format.js";
import type { ConcatSource } from "../vcdiff/source.js";
import type { PlainCompressor } from "./format.js";
import { readFileStream } from "./scratch.js";

export interface PayloadSettings {
  readonly level: number;
  readonly windowLog: number;
  readonly windowSize?: number;
  readonly searchWholeSource: boolean;
  /** Executables' ranges to run through the x86 filter (plain payloads only): makes a `zstd-x86` or `brotli-x86` payload. */
  readonly x86?: readonly FilterRange[];
  /** What compresses a plain payload (no hints); default zstd. VCDIFF payloads are always zstd. */
  readonly compressor?: PlainCompressor;
  /**
   * Files that start with the gzip magic (content ranges; plain payloads only): those GNU gzip
   * rebuilds exactly are sent as their text, which makes a `zstd-gz` or `brotli-gz` payload.
   */
  readonly gzip?: readonly FilterRange[];
  /** Where gzip's input files go while recipes are checked; default the system's temporary folder. */
  readonly scratchDir?: string;
  /**
   * Send the layer's repeats that lie beyond the compressor's window as copies of earlier output
   * (plain payloads only): makes a `zstd-far` or `brotli-far` payload when there are any.
   */
  readonly farCopies?: boolean;
}

/**
 * Brotli window of `brotli` payloads: 2^24 bytes (16 MiB), the largest of standard Brotli, so a
 * device decodes with about that much memory; large-window Brotli is not used.
 */
export const BROTLI_WINDOW_LOG = 24;

/** A Brotli compressor at its best quality (11), told the input's size. */
function brotliCompressor(size: number) {
  return createBrotliCompress({
    params: {
      [zlib.BROTLI_PARAM_QUALITY]: zlib.BROTLI_MAX_QUALITY,
      [zlib.BROTLI_PARAM_LGWIN]: BROTLI_WINDOW_LOG,
      [zlib.BROTLI_PARAM_SIZE_HINT]: Math.min(size, 2 ** 30),
    },
  });
}

/**
 * VCDIFF window of `vcdiff-zstd` payloads unless set: 8 MiB, not the codec's 2 MiB default. A
 * payload's bytes cross the link, and a wider window keeps more of the target's own repeats in
 * reach (the codec's tests: a tar of /usr/share 189,361 bytes at 8 MiB, 191,488 at 2 MiB); the
 * device decodes 8 MiB windows within its memory bound.
 */
export const PAYLOAD_VCDIFF_WINDOW = XDELTA3_WINDOW_SIZE;

/**
 * zstd worker threads for payloads (the cloud side). Output is the same for any count from 1 up
 * (zstd's multithreaded format depends on job size, not workers); against single-threaded level 22
 * it measured 3,036,649 bytes instead of 3,036,668 on the 33 MB app layer, at the same CPU time.
 * Each worker holds its own match tables (see DEFAULT_ZSTD_WINDOW_LOG), hence the cap.
 */
export const ZSTD_WORKERS = Math.min(2, Math.max(1, availableParallelism()));

export interface LayerHints {
  copies: CopyHint[];
  /** Changed entries against their old versions: VCDIFF searches them, `ref-zstd` compresses them against them. */
  searches: (SearchHint & Pick<ReferenceHint, "targetHeaderLength" | "sourceHeaderLength">)[];
  /** Source layers (catalog numbers) the hints read from. */
  uses: Set<number>;
}

/**
 * Streams `path` through VCDIFF (or not) and zstd into `out`; returns length, sha256 and how many
 * gzip files went as text (then the payload has both tables: `zstd-gz` or `brotli-gz`).
 */
export async function encodePayload(
  targetPath: string,
  source: ConcatSource | undefined,
  hints: LayerHints | undefined,
  options: PayloadSettings,
  out: string,
  onBytes: (n: number) => void,
): Promise<{ length: number; sha256: string; gzipPieces: number; farCopies: number }> {
  const size = statSync(targetPath).size;
  const brotli = hints === undefined && options.compressor === "brotli";
  const compressor = brotli
    ? brotliCompressor(size)
    : new CompressStream({
        compressionLevel: options.level,
        windowLog: options.windowLog,
        // Ultra levels' own match tables (hashLog 25, chainLog 27) take over 1 GiB for no gain at this window.
        ...(options.level >= 20 ? { hashLog: options.windowLog, chainLog: options.windowLog + 1 } : {}),
        checksumFlag: false,
        nbWorkers: ZSTD_WORKERS,
      });
  const hash = createHash("sha256");
  let length = 0;
  let read = 0;
  async function* counted(stream: AsyncIterable<Uint8Array>): AsyncGenerator<Uint8Array> {
    for await (const chunk of stream) {
      read += chunk.length;
      onBytes(read);
      yield chunk;
    }
  }
  const target = counted(readFileStream(targetPath));
  // Far copies first: the x86 ranges and gzip pieces are then ranges of the layer without them.
  const far: FarCopy[] =
    hints === undefined && options.farCopies === true
      ? findFarCopies(targetPath, size, {
          minDistance: 2 ** (brotli ? BROTLI_WINDOW_LOG : options.windowLog),
          whole: options.gzip ?? [],
        })
      : [];
  // Gzip files are found in the layer, then named in the stream without the copies.
  const piecesInLayer =
    hints === undefined && options.gzip !== undefined && options.gzip.length > 0
      ? await findGzipPieces(targetPath, clearOfCopies(options.gzip, far), options.scratchDir)
      : [];
  const pieces = withoutCopies(piecesInLayer, far, true);
  const x86 =
    hints === undefined && options.x86 !== undefined ? withoutCopies(options.x86, far, false) : undefined;
  // zstd-x86/brotli-x86: the filter table; -gz: the filter table (maybe empty), then the gzip table;
  // -far: the far copy, filter and gzip tables (each maybe empty), packed in one Brotli stream.
  const table =
    far.length > 0
      ? packFarTables(far, x86 ?? [], pieces)
      : pieces.length > 0
        ? Buffer.concat([encodeFilterTable(x86 ?? []), encodeGzipTable(pieces)])
        : x86 !== undefined
          ? encodeFilterTable(x86)
          : undefined;
  const reduced = far.length > 0 ? dropCopies(target, far) : target;
  const filtered = x86 !== undefined ? filterRanges(reduced, x86, "encode") : reduced;
  const input =
    hints === undefined
      ? pieces.length > 0
        ? expandGzipPieces(filtered, pieces)
        : filtered
      : encode(target, source, {
          copies: hints.copies,
          searches: hints.searches,
          searchWholeSource: options.searchWholeSource,
          windowSize: options.windowSize ?? PAYLOAD_VCDIFF_WINDOW,
        });
  await pipeline(
    Readable.from(input, { objectMode: false }),
    compressor,
    async function* (compressed: AsyncIterable<Buffer>) {
      if (table !== undefined) {
        hash.update(table);
        length += table.length;
        yield Buffer.from(table);
      }
      for await (const chunk of compressed) {
        hash.update(chunk);
        length += chunk.length;
        yield chunk;
      }
    },
    createWriteStream(out, { mode: 0o600 }),
  );
  return { length, sha256: `sha256:${hash.digest("hex")}`, gzipPieces: pieces.length, farCopies: far.length };
}
