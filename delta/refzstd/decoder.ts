/**
 * Decoding a `ref-zstd` payload: per segment, read the tables, read the reference extents from
 * the source by random access, decompress the literal frame single-shot into a buffer of the
 * declared size, then play the pieces (literal bytes from that buffer, copies streamed from the
 * source). Memory: one reference (≤ 32 MiB) + one segment's literal bytes (≤ 16 MiB) + its frame;
 * with gzip pieces (version 2) also their rebuilt files and gzip's output, each smaller than the
 * texts they come from, so at most the segment's literal bytes again, twice.
 */
import zstd from "zstd-napi/binding.js";
import { readFrom, type SourceReader } from "../vcdiff/source.js";
import { addDifferences } from "./approx.js";
import {
  compressBound,
  DIFF_PIECE,
  GZIP_PIECE,
  MAX_EXTENTS,
  MAX_OUTPUT_SIZE,
  MAX_PIECES,
  MAX_REFERENCE,
  MAX_SEGMENT_HEADER,
  MAX_SEGMENT_LITERAL,
  MAX_SEGMENT_LITERAL_X86,
  MAX_X86_WORDS,
  maxTablesSize,
  PREAMBLE_SIZE,
  REFZSTD_MAGIC,
  REFZSTD_VERSION,
  REFZSTD_VERSION_SPLIT,
  REFZSTD_VERSION_X86,
  RefZstdError,
  type SegmentHeader,
  unzigzag,
  VarintReader,
} from "./format.js";
import {
  GZIP_FIXED_HEADER,
  GZIP_TRAILER,
  GzipMismatchError,
  GzipRunner,
  gunzipText,
  MAX_GZIP_HEADER,
  MAX_GZIP_TEXT,
  rebuildGzipFiles,
} from "./regzip.js";
import { TarWalk } from "./tarsplit.js";
import { applyX86Diff, X86_ABSOLUTE, X86_KINDS, X86DiffState } from "./x86diff.js";

/** pieceDiffs value of a diff piece; an x86 diff piece (version 3) has DIFF + its x86 mode. */
const DIFF = 1;

/** Output is handed on in pieces of this size: large enough for few writes, small enough to bound memory. */
const OUTPUT_CHUNK = 1024 * 1024;
/** The payload header (magic, version, two varints) fits in this many bytes. */
const MAX_PAYLOAD_HEADER = PREAMBLE_SIZE + 2 * 8;

export interface DecodeOptions {
  /** The virtual source the payload copies from; absent when the payload needs none. */
  readonly source?: SourceReader;
  /** The size the caller expects (the manifest's); a payload declaring another is refused. */
  readonly expectedSize?: number;
  /** Where gzip's input files go when gzip pieces are rebuilt; default the system's temporary folder. */
  readonly scratchDir?: string;
}

async function readExact(reader: SourceReader, position: number, length: number): Promise<Uint8Array> {
  const bytes = new Uint8Array(length);
  await readFrom(reader, position, bytes, 0, length);
  return bytes;
}

/** The payload bytes at `position`, refused as truncated if fewer than `length` remain. */
async function readPayload(
  payload: SourceReader,
  position: number,
  length: number,
  what: string,
): Promise<Uint8Array> {
  if (position + length > payload.size) {
    throw new RefZstdError(
      "TRUNCATED",
      `${what} needs ${length} bytes, only ${payload.size - position} remain in the ${payload.size}-byte payload`,
      position,
    );
  }
  return readExact(payload, position, length);
}

/** Checks that `frame` is exactly one zstd frame declaring `size` content bytes. */
function checkFrame(frame: Uint8Array, size: number, what: string, offset: number): void {
  let declared: number | null;
  let compressed: number;
  try {
    declared = zstd.getFrameContentSize(frame);
    compressed = zstd.findFrameCompressedSize(frame);
  } catch (err) {
    throw new RefZstdError("CORRUPT", `the ${what} is not a zstd frame (${(err as Error).message})`, offset);
  }
  if (compressed !== frame.length) {
    throw new RefZstdError(
      "CORRUPT",
      `the ${what} should be one ${frame.length}-byte zstd frame, its first frame has ${compressed} bytes`,
      offset,
    );
  }
  if (declared !== size) {
    throw new RefZstdError(
      "CORRUPT",
      `the ${what} declares ${declared === null ? "no" : declared} content bytes, the segment header says ${size}`,
      offset,
    );
  }
}

function parseSegmentHeader(
  bytes: Uint8Array,
  offset: number,
  remainingOutput: number,
  version: number,
): {
  header: SegmentHeader;
  length: number;
} {
  const r = new VarintReader(bytes, offset, "segment header");
  const header: SegmentHeader = {
    outputLength: r.read("the segment's output length"),
    literalLength: r.read("the literal length"),
    extentCount: r.read("the extent count"),
    pieceCount: r.read("the piece count"),
    tablesLength: r.read("the tables length"),
    frameLength: r.read("the frame length"),
    headerLength: version >= REFZSTD_VERSION_SPLIT ? r.read("the header literal length") : 0,
  };
  const limit = (ok: boolean, message: string) => {
    if (!ok) throw new RefZstdError("LIMIT", message, offset);
  };
  limit(
    header.outputLength >= 1 && header.outputLength <= remainingOutput,
    `segment output of ${header.outputLength} bytes, expected 1 to the ${remainingOutput} bytes still to produce`,
  );
  // A gzip piece's text (version 2) is longer than the file it rebuilds: only the limit holds then.
  // Version 3: x86 diff words follow the literal bytes in the frame.
  const maxLiteral = literalLimit(version);
  limit(
    header.literalLength <= maxLiteral &&
      (version !== REFZSTD_VERSION || header.literalLength <= header.outputLength),
    `${header.literalLength} literal bytes exceed the segment output or the ${maxLiteral}-byte limit`,
  );
  limit(
    header.headerLength <= header.literalLength,
    `${header.headerLength} header literal bytes exceed the ${header.literalLength} literal bytes`,
  );
  limit(header.extentCount <= MAX_EXTENTS, `${header.extentCount} extents exceed ${MAX_EXTENTS}`);
  limit(
    header.pieceCount >= 1 && header.pieceCount <= MAX_PIECES,
    `${header.pieceCount} pieces, expected 1 to ${MAX_PIECES}`,
  );
  limit(
    header.tablesLength >= 1 &&
      header.tablesLength <= compressBound(maxTablesSize(header.extentCount, header.pieceCount, version)),
    `a ${header.tablesLength}-byte tables frame cannot hold ${header.extentCount} extents and ${header.pieceCount} pieces`,
  );
  limit(
    header.literalLength === 0
      ? header.frameLength === 0
      : header.frameLength >= 1 && header.frameLength <= compressBound(header.literalLength),
    `a ${header.frameLength}-byte frame cannot hold ${header.literalLength} literal bytes`,
  );
  return { header, length: r.position };
}

/** The most literal frame bytes a segment may declare in a payload of this version. */
function literalLimit(version: number): number {
  return version >= REFZSTD_VERSION_X86 ? MAX_SEGMENT_LITERAL_X86 : MAX_SEGMENT_LITERAL;
}

/** A gzip piece's recipe (version 2): the file's header, text and trailer come from the literal bytes. */
interface GzipPiece {
  readonly headerLength: number;
  readonly textLength: number;
  readonly level: number;
  /** Where the piece's literal bytes start in the segment's literal frame. */
  readonly literalAt: number;
}

interface Tables {
  readonly extentOffsets: Float64Array;
  readonly extentLengths: Float64Array;
  /** Text bytes an inflated extent puts in the dictionary; -1 for a plain extent. */
  readonly extentInflated: Float64Array;
  readonly referenceSize: number;
  /** Source offset per piece, -1 for literal pieces. */
  readonly pieceOffsets: Float64Array;
  readonly pieceLengths: Float64Array;
  /** DIFF for a diff piece (source bytes plus as many literal bytes, mod 256), DIFF + its x86 mode for an x86 one, else 0. */
  readonly pieceDiffs: Uint8Array;
  /** x86 diff words by kind (version 3): they are the last 4 × (their sum) bytes of the literal frame, kind by kind. */
  readonly wordCounts: readonly number[];
  /** Where each kind's words start in the literal frame, then where the last kind's end (the frame's end). */
  readonly wordStarts: readonly number[];
  /** The gzip pieces, by piece index. */
  readonly gzips: Map<number, GzipPiece>;
}

function parseTables(
  bytes: Uint8Array,
  offset: number,
  header: SegmentHeader,
  sourceSize: number,
  version: number,
): Tables {
  const r = new VarintReader(bytes, offset, "tables");
  const corrupt = (message: string) => new RefZstdError("CORRUPT", `tables: ${message}`, offset);
  const extentOffsets = new Float64Array(header.extentCount);
  const extentLengths = new Float64Array(header.extentCount);
  const extentInflated = new Float64Array(header.extentCount).fill(-1);
  const gzips = new Map<number, GzipPiece>();
  let end = 0;
  let referenceSize = 0;
  for (let i = 0; i < header.extentCount; i++) {
    const start = end + unzigzag(r.read(`extent ${i}'s offset`));
    const word = r.read(`extent ${i}'s length`);
    const inflate = version !== REFZSTD_VERSION && word % 2 === 1;
    const length = version !== REFZSTD_VERSION ? Math.floor(word / 2) : word;
    if (length < 1 || start < 0 || start + length > sourceSize) {
      throw corrupt(
        `extent ${i} (${length} bytes at ${start}) is empty or outside the ${sourceSize}-byte source`,
      );
    }
    if (inflate) {
      const text = r.read(`extent ${i}'s inflated length`);
      if (text > MAX_GZIP_TEXT || length > MAX_REFERENCE) {
        throw new RefZstdError(
          "LIMIT",
          `inflated extent ${i} (${length} bytes of gzip, ${text} of text) exceeds ${MAX_REFERENCE} bytes of gzip or ${MAX_GZIP_TEXT} of text`,
          offset,
        );
      }
      extentInflated[i] = text;
      referenceSize += text;
    } else {
      referenceSize += length;
    }
    if (referenceSize > MAX_REFERENCE) {
      throw new RefZstdError("LIMIT", `the reference exceeds ${MAX_REFERENCE} bytes at extent ${i}`, offset);
    }
    extentOffsets[i] = start;
    extentLengths[i] = length;
    end = start + length;
  }
  const pieceOffsets = new Float64Array(header.pieceCount);
  const pieceLengths = new Float64Array(header.pieceCount);
  const pieceDiffs = new Uint8Array(header.pieceCount);
  /** Where the next copy is expected to start: every piece, literal or copy, moves it on. */
  let expected = 0;
  let literal = 0;
  let output = 0;
  for (let i = 0; i < header.pieceCount; i++) {
    const word = r.read(`piece ${i}`);
    const isDiff = word === DIFF_PIECE;
    let gzip: GzipPiece | undefined;
    let length: number;
    if (word === GZIP_PIECE) {
      if (version === REFZSTD_VERSION) throw corrupt(`piece ${i} is an empty copy`);
      length = r.read(`gzip piece ${i}'s output length`);
      gzip = {
        headerLength: r.read(`gzip piece ${i}'s header length`),
        textLength: r.read(`gzip piece ${i}'s text length`),
        level: r.read(`gzip piece ${i}'s level`),
        literalAt: literal,
      };
      if (
        gzip.headerLength < GZIP_FIXED_HEADER ||
        gzip.headerLength > MAX_GZIP_HEADER ||
        gzip.textLength > MAX_GZIP_TEXT ||
        gzip.level < 1 ||
        gzip.level > 9 ||
        length < gzip.headerLength + GZIP_TRAILER ||
        length > gzip.headerLength + GZIP_TRAILER + compressBound(gzip.textLength) + 1024
      ) {
        throw corrupt(
          `gzip piece ${i} (${length} bytes from a ${gzip.headerLength}-byte header and ${gzip.textLength} bytes of text at level ${gzip.level}) is out of bounds`,
        );
      }
    } else if (isDiff) {
      const lengthWord = r.read(`diff piece ${i}'s length`);
      // Version 3: length × 4 + x86 mode (0 plain, X86_RELATIVE, X86_ABSOLUTE).
      const mode = version >= REFZSTD_VERSION_X86 ? lengthWord % 4 : 0;
      if (mode > X86_ABSOLUTE) throw corrupt(`diff piece ${i} has x86 mode ${mode}`);
      length = version >= REFZSTD_VERSION_X86 ? Math.floor(lengthWord / 4) : lengthWord;
      pieceDiffs[i] = DIFF + mode;
    } else {
      length = Math.floor(word / 2);
    }
    if (length < 1) throw corrupt(`piece ${i} is empty`);
    output += length;
    if (output > header.outputLength) {
      throw corrupt(`piece ${i} goes past the segment's ${header.outputLength} output bytes`);
    }
    pieceLengths[i] = length;
    if (gzip !== undefined) {
      gzips.set(i, gzip);
      literal += gzip.headerLength + gzip.textLength + GZIP_TRAILER;
      pieceOffsets[i] = -1;
    } else if (isDiff) {
      const start = expected + unzigzag(r.read(`diff piece ${i}'s source offset`));
      if (start < 0 || start + length > sourceSize) {
        throw corrupt(
          `diff piece ${i} reads ${length} bytes at ${start}, outside the ${sourceSize}-byte source`,
        );
      }
      pieceOffsets[i] = start;
      literal += length;
      expected = start;
    } else if (word % 2 === 1) {
      const start = expected + unzigzag(r.read(`piece ${i}'s source offset`));
      if (start < 0 || start + length > sourceSize) {
        throw corrupt(`piece ${i} copies ${length} bytes at ${start}, outside the ${sourceSize}-byte source`);
      }
      pieceOffsets[i] = start;
      expected = start;
    } else {
      literal += length;
      pieceOffsets[i] = -1;
    }
    expected += length;
  }
  const wordCounts: number[] = [];
  let wordCount = 0;
  for (let k = 0; k < (version >= REFZSTD_VERSION_X86 ? X86_KINDS : 0); k++) {
    wordCounts.push(r.read(`the count of x86 words of kind ${k}`));
    wordCount += wordCounts[k]!;
  }
  if (wordCount > MAX_X86_WORDS) {
    throw new RefZstdError("LIMIT", `${wordCount} x86 diff words exceed ${MAX_X86_WORDS}`, offset);
  }
  const wordStarts = [literal];
  for (const n of wordCounts) wordStarts.push(wordStarts[wordStarts.length - 1]! + 4 * n);
  literal += 4 * wordCount;
  if (r.remaining !== 0) throw corrupt(`${r.remaining} bytes follow the last piece`);
  if (output !== header.outputLength || literal !== header.literalLength) {
    throw corrupt(
      `pieces produce ${output} bytes with ${literal} literal, the header says ${header.outputLength} with ${header.literalLength}`,
    );
  }
  return {
    extentOffsets,
    extentLengths,
    extentInflated,
    referenceSize,
    pieceOffsets,
    pieceLengths,
    pieceDiffs,
    wordCounts,
    wordStarts,
    gzips,
  };
}

/**
 * `buffer` if it holds `size` bytes, else a new one of the limit's size, so it is allocated once
 * (pages never written are never resident).
 */
function room(buffer: Uint8Array, size: number, limit: number): Uint8Array {
  return buffer.length >= size ? buffer : new Uint8Array(limit);
}

/** Decompresses `frame` into all of `out`, which must be exactly the declared size. */
function decompressInto(
  dctx: InstanceType<typeof zstd.DCtx>,
  frame: Uint8Array,
  out: Uint8Array,
  dictionary: Uint8Array | undefined,
  what: string,
  offset: number,
): Uint8Array {
  const size = out.length;
  let produced: number;
  try {
    produced =
      dictionary === undefined
        ? dctx.decompress(out, frame)
        : dctx.decompressUsingDict(out, frame, dictionary);
  } catch (err) {
    throw new RefZstdError("CORRUPT", `the ${what} does not decompress (${(err as Error).message})`, offset);
  }
  if (produced !== size) {
    throw new RefZstdError(
      "CORRUPT",
      `the ${what} decompressed to ${produced} bytes, expected ${size}`,
      offset,
    );
  }
  return out;
}

/**
 * The outputs of a segment's gzip pieces, by piece index: each file rebuilt from the header, text
 * and trailer in the literal bytes (regzip.ts, rebuildGzipFiles).
 */
async function rebuildGzips(
  tables: Tables,
  literal: Uint8Array,
  segment: number,
  offset: number,
  runner: GzipRunner,
): Promise<Map<number, Uint8Array>> {
  const pieces = [...tables.gzips];
  let files: Uint8Array[];
  try {
    files = await rebuildGzipFiles(
      pieces.map(([i, g]) => ({
        sent: literal.subarray(g.literalAt, g.literalAt + g.headerLength + g.textLength + GZIP_TRAILER),
        headerLength: g.headerLength,
        textLength: g.textLength,
        length: tables.pieceLengths[i]!,
        level: g.level,
      })),
      runner,
    );
  } catch (err) {
    if (!(err instanceof GzipMismatchError)) throw err;
    const which = err.index >= 0 ? `gzip piece ${pieces[err.index]![0]}` : "gzip pieces";
    throw new RefZstdError("CORRUPT", `segment ${segment}'s ${which}: ${err.message}`, offset);
  }
  return new Map(pieces.map(([i], k) => [i, files[k]!]));
}

/**
 * Decodes a `ref-zstd` payload read by random access from `payload`; yields the layer tar in
 * order. A yielded chunk is valid only until the next is requested (one output buffer is
 * reused): hash and write it, or copy it. Every malformed or truncated payload ends in a
 * RefZstdError; a source read that fails ends in the source's own error.
 */
export async function* decodeRefZstd(
  payload: SourceReader,
  options: DecodeOptions = {},
): AsyncGenerator<Uint8Array> {
  // One gzip runner for every segment's gzip pieces: its files are reused from segment to segment.
  const runner = new GzipRunner(options.scratchDir);
  try {
    yield* decodeSegments(payload, options, runner);
  } finally {
    await runner.close();
  }
}

async function* decodeSegments(
  payload: SourceReader,
  options: DecodeOptions,
  runner: GzipRunner,
): AsyncGenerator<Uint8Array> {
  const source = options.source;
  const sourceSize = source?.size ?? 0;
  const head = await readExact(payload, 0, Math.min(MAX_PAYLOAD_HEADER, payload.size));
  if (head.length < PREAMBLE_SIZE) {
    throw new RefZstdError(
      "TRUNCATED",
      `a payload starts with ${PREAMBLE_SIZE} bytes of magic and version`,
      0,
    );
  }
  for (let i = 0; i < REFZSTD_MAGIC.length; i++) {
    if (head[i] !== REFZSTD_MAGIC[i]) {
      throw new RefZstdError("BAD_MAGIC", "this is not a ref-zstd payload (magic bytes differ)", i);
    }
  }
  const version = head[REFZSTD_MAGIC.length]!;
  if (version < REFZSTD_VERSION || version > REFZSTD_VERSION_SPLIT) {
    throw new RefZstdError(
      "VERSION",
      `payload version ${version}, this decoder reads versions ${REFZSTD_VERSION} to ${REFZSTD_VERSION_SPLIT}; update the device software`,
      REFZSTD_MAGIC.length,
    );
  }
  const top = new VarintReader(head.subarray(PREAMBLE_SIZE), PREAMBLE_SIZE, "payload header");
  const outputSize = top.read("the output size");
  const segmentCount = top.read("the segment count");
  if (outputSize > MAX_OUTPUT_SIZE) {
    throw new RefZstdError("LIMIT", `output size ${outputSize} exceeds ${MAX_OUTPUT_SIZE}`, PREAMBLE_SIZE);
  }
  if (options.expectedSize !== undefined && outputSize !== options.expectedSize) {
    throw new RefZstdError(
      "CORRUPT",
      `the payload makes ${outputSize} bytes, the caller expects ${options.expectedSize}`,
      PREAMBLE_SIZE,
    );
  }
  if (segmentCount > outputSize) {
    throw new RefZstdError(
      "LIMIT",
      `${segmentCount} segments cannot each produce a byte of a ${outputSize}-byte output`,
      PREAMBLE_SIZE,
    );
  }

  const dctx = new zstd.DCtx();
  let position = top.offset;
  let produced = 0;
  /** Output the segments read so far promise. */
  let planned = 0;
  // Reused across segments: a new reference and literal buffer per segment would leave the old
  // ones to the collector and double the peak (measured: 206 MiB against 100 MiB on a node binary).
  const out = new Uint8Array(Math.min(OUTPUT_CHUNK, Math.max(outputSize, 1)));
  let literalBuffer: Uint8Array = new Uint8Array(0);
  const x86 = new X86DiffState();
  let dictionaryBuffer: Uint8Array = new Uint8Array(0);
  let fill = 0;
  // Version 4: the walk over the output that tells header bytes from the rest (tarsplit.ts).
  const walk = version >= REFZSTD_VERSION_SPLIT ? new TarWalk() : undefined;
  for (let s = 0; s < segmentCount; s++) {
    const headerBytes = await readExact(
      payload,
      position,
      Math.min(MAX_SEGMENT_HEADER, payload.size - position),
    );
    const { header, length } = parseSegmentHeader(headerBytes, position, outputSize - planned, version);
    position += length;
    planned += header.outputLength;

    const tablesFrame = await readPayload(payload, position, header.tablesLength, `segment ${s}'s tables`);
    const tablesSize = maxTablesSize(header.extentCount, header.pieceCount, version);
    const declared = (() => {
      try {
        return zstd.getFrameContentSize(tablesFrame);
      } catch (err) {
        throw new RefZstdError(
          "CORRUPT",
          `segment ${s}'s tables are not a zstd frame (${(err as Error).message})`,
          position,
        );
      }
    })();
    if (declared === null || declared > tablesSize) {
      throw new RefZstdError(
        "LIMIT",
        `segment ${s}'s tables declare ${declared ?? "no"} bytes, at most ${tablesSize} fit its counts`,
        position,
      );
    }
    checkFrame(tablesFrame, declared, `segment ${s}'s tables frame`, position);
    const tables = parseTables(
      decompressInto(
        dctx,
        tablesFrame,
        new Uint8Array(declared),
        undefined,
        `segment ${s}'s tables`,
        position,
      ),
      position,
      header,
      sourceSize,
      version,
    );
    position += header.tablesLength;

    let literal = literalBuffer.subarray(0, 0);
    if (header.literalLength > 0) {
      const frame = await readPayload(payload, position, header.frameLength, `segment ${s}'s literal frame`);
      checkFrame(frame, header.literalLength, `segment ${s}'s literal frame`, position);
      dictionaryBuffer = room(dictionaryBuffer, 1 + tables.referenceSize, 1 + MAX_REFERENCE);
      const dictionary = dictionaryBuffer.subarray(0, 1 + tables.referenceSize);
      dictionary[0] = 0;
      let at = 1;
      for (let i = 0; i < tables.extentOffsets.length; i++) {
        const n = tables.extentLengths[i]!;
        const inflated = tables.extentInflated[i]!;
        if (inflated >= 0) {
          const text = gunzipText(await readExact(source!, tables.extentOffsets[i]!, n), inflated + 1);
          if (text === undefined || text.length !== inflated) {
            throw new RefZstdError(
              "CORRUPT",
              `segment ${s}'s extent ${i}: the source's ${n} bytes at ${tables.extentOffsets[i]} are not a gzip file of ${inflated} bytes of text`,
              position,
            );
          }
          dictionary.set(text, at);
          at += inflated;
          continue;
        }
        await readFrom(source!, tables.extentOffsets[i]!, dictionary, at, n);
        at += n;
      }
      literalBuffer = room(literalBuffer, header.literalLength, literalLimit(version));
      literal = decompressInto(
        dctx,
        frame,
        literalBuffer.subarray(0, header.literalLength),
        dictionary,
        `segment ${s}'s literal frame`,
        position,
      );
    }
    position += header.frameLength;
    const gzips =
      tables.gzips.size > 0
        ? await rebuildGzips(tables, literal, s, position - header.frameLength, runner)
        : new Map<number, Uint8Array>();

    const split = header.headerLength > 0;
    if (split && tables.gzips.size > 0) {
      throw new RefZstdError(
        "CORRUPT",
        `segment ${s} has gzip pieces and ${header.headerLength} header literal bytes`,
        position - header.frameLength,
      );
    }
    /** Version 4: the next header byte, and where the other literal bytes end (the x86 words follow). */
    let headerAt = 0;
    const literalEnd = tables.wordStarts[0]!;
    const overrun = () =>
      new RefZstdError(
        "CORRUPT",
        `segment ${s}'s pieces take more header or other literal bytes than its ${header.headerLength} and ${literalEnd - header.headerLength}`,
        position - header.frameLength,
      );
    let literalAt = header.headerLength;
    x86.startWords(tables.wordStarts);
    for (let i = 0; i < tables.pieceLengths.length; i++) {
      let remaining = tables.pieceLengths[i]!;
      const from = tables.pieceOffsets[i]!;
      const isDiff = tables.pieceDiffs[i] === DIFF;
      const x86Mode = tables.pieceDiffs[i]! - DIFF;
      const isX86 = x86Mode > 0;
      const gzip = tables.gzips.get(i);
      // A gzip piece's output was rebuilt whole; it is played like literal bytes.
      let bytes = literal;
      let bytesAt = literalAt;
      if (gzip !== undefined) {
        bytes = gzips.get(i)!;
        gzips.delete(i);
        bytesAt = 0;
        literalAt += gzip.headerLength + gzip.textLength + GZIP_TRAILER;
      }
      let copied = 0;
      while (remaining > 0) {
        let n = Math.min(remaining, out.length - fill);
        if (split && from < 0) {
          // A plain literal piece: header bytes from the frame's header part, the rest after it.
          n = Math.min(n, walk!.run);
          if (walk!.inHeader) {
            if (headerAt + n > header.headerLength) throw overrun();
            out.set(literal.subarray(headerAt, headerAt + n), fill);
            headerAt += n;
          } else {
            if (literalAt + n > literalEnd) throw overrun();
            out.set(literal.subarray(literalAt, literalAt + n), fill);
            literalAt += n;
          }
        } else if (from < 0) {
          out.set(bytes.subarray(bytesAt, bytesAt + n), fill);
          bytesAt += n;
          if (gzip === undefined) literalAt += n;
        } else {
          // Inline for the common case, a local source read synchronously: this runs per piece.
          const wait = source!.whenReadable?.(from + copied, n);
          if (wait !== undefined) await wait;
          if (source!.readSync !== undefined) source!.readSync(from + copied, out, fill, n);
          else await source!.read(from + copied, out, fill, n);
        }
        if (split && (isDiff || isX86) && literalAt + n > literalEnd) throw overrun();
        if (isDiff) {
          addDifferences(out, fill, out, fill, literal, literalAt, n);
          literalAt += n;
        } else if (isX86) {
          if (copied === 0) x86.startPiece(x86Mode);
          const fault = applyX86Diff(out, fill, n, literal, literalAt, remaining, literal, x86);
          if (fault !== undefined) {
            throw new RefZstdError(
              "CORRUPT",
              fault === "words"
                ? `segment ${s}'s x86 diff piece ${i} needs more words than its tables declare (${tables.wordCounts.join(", ")} by kind)`
                : `segment ${s}'s x86 diff piece ${i} has a difference byte inside an operand`,
              position - header.frameLength,
            );
          }
          literalAt += n;
        }
        walk?.advance(n, out, fill);
        copied += n;
        fill += n;
        remaining -= n;
        if (fill === out.length) {
          yield out;
          produced += fill;
          fill = 0;
        }
      }
    }
    if (split && (headerAt !== header.headerLength || literalAt !== literalEnd)) {
      throw new RefZstdError(
        "CORRUPT",
        `segment ${s}'s pieces take ${headerAt} header and ${literalAt - header.headerLength} other literal bytes, its header says ${header.headerLength} and ${literalEnd - header.headerLength}`,
        position - header.frameLength,
      );
    }
    for (let k = 0; k < tables.wordCounts.length; k++) {
      if (x86.wordAt[k] !== x86.wordEnd[k]) {
        throw new RefZstdError(
          "CORRUPT",
          `segment ${s}'s tables declare ${tables.wordCounts[k]} x86 diff words of kind ${k}, its pieces use ${(x86.wordAt[k]! - tables.wordStarts[k]!) / 4}`,
          position - header.frameLength,
        );
      }
    }
  }
  if (fill > 0) {
    yield out.subarray(0, fill);
    produced += fill;
  }
  if (produced !== outputSize) {
    throw new RefZstdError(
      "TRUNCATED",
      `the segments produce ${produced} bytes, the payload header says ${outputSize}`,
      position,
    );
  }
  if (position !== payload.size) {
    throw new RefZstdError("CORRUPT", `${payload.size - position} bytes follow the last segment`, position);
  }
}
