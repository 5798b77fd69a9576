import assert from "node:assert/strict";
import { mkdtemp, open, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, test } from "node:test";
import { fileURLToPath } from "node:url";
import { deflateSync } from "node:zlib";
import { adler32, adler32Backend, adler32Portable } from "../../delta/vcdiff/adler32.js";
import {
  type DecodeOptions,
  decode,
  decodeBuffer,
  OUTPUT_PIECE,
  type VcdiffHeader,
} from "../../delta/vcdiff/decoder.js";
import { encode } from "../../delta/vcdiff/encoder.js";
import {
  VCD_CODETABLE,
  VCD_DECOMPRESS,
  VCD_SOURCE,
  VCD_TARGET,
  VcdiffError,
} from "../../delta/vcdiff/format.js";
import {
  BufferSource,
  ConcatSource,
  FileSource,
  fileChunks,
  type SourceReader,
} from "../../delta/vcdiff/source.js";
import { mutate, randomBytes } from "./corpus.js";
import { buildDelta, bytes, code, text, varint } from "./delta-builder.js";

/** Bytes with every value, runs of 0xff included (the largest sums Adler-32 must carry). */
function randomish(length: number): Uint8Array {
  const out = new Uint8Array(length);
  for (let i = 0; i < length; i++) out[i] = (Math.imul(i, 2654435761) >>> 13) & 0xff;
  return out.fill(0xff, 1000, 20_000);
}

const ALPHABET = bytes("0123456789abcdefghijklmnopqrstuvwxyz");

async function rejectsWith(
  promise: Promise<unknown>,
  errorCode: VcdiffError["code"],
  offset: number,
  message?: RegExp,
): Promise<void> {
  await assert.rejects(promise, (err: unknown) => {
    assert.ok(err instanceof VcdiffError, `expected a VcdiffError, got ${String(err)}`);
    assert.equal(err.code, errorCode, err.message);
    assert.equal(err.offset, offset, err.message);
    if (message) assert.match(err.message, message);
    return true;
  });
}

const MiB = 1 << 20;

/** A window of `length` random bytes, all one ADD. */
function addedWindow(seed: number, length: number) {
  const data = randomBytes(seed, length);
  return { indicator: 0, targetLength: data.length, data, inst: [code.add(0), ...varint(data.length)] };
}

/** A VCD_TARGET window: `fresh` random bytes ADDed, then a COPY of the `length` bytes of output at `at`. */
function copyingPrevious(at: number, length: number, seed: number, fresh: number) {
  const data = randomBytes(seed, fresh);
  return {
    indicator: VCD_TARGET,
    segmentLength: length,
    segmentPosition: at,
    targetLength: data.length + length,
    data,
    inst: [code.add(0), ...varint(data.length), code.copy(0, 0), ...varint(length)],
    addr: [0],
  };
}

/**
 * Decodes windows made by addedWindow and copyingPrevious (each copying the whole window before
 * it) with reuseBuffers and checks the output. Each chunk is copied as it comes: with
 * reuseBuffers it is valid only until the next window.
 */
async function decodesChain(
  windows: (ReturnType<typeof addedWindow> | ReturnType<typeof copyingPrevious>)[],
  chunkSize: number,
): Promise<void> {
  const expected: Uint8Array[] = [];
  for (const w of windows) {
    expected.push(w.data);
    if (w.indicator === VCD_TARGET) expected.push(expected.at(-2)!);
  }
  const parts: Uint8Array[] = [];
  for await (const part of decode(chunks(buildDelta({ windows }), chunkSize), { reuseBuffers: true }))
    parts.push(new Uint8Array(part));
  assert.ok(Buffer.concat(parts).equals(Buffer.concat(expected)));
}

async function* chunks(data: Uint8Array, size: number): AsyncGenerator<Uint8Array> {
  for (let i = 0; i < data.length; i += size) yield data.slice(i, i + size);
}

async function collect(iter: AsyncIterable<Uint8Array>): Promise<Uint8Array> {
  const parts: Uint8Array[] = [];
  for await (const part of iter) parts.push(part);
  return Uint8Array.from(parts.flatMap((p) => [...p]));
}

describe("VCDIFF decoder: instructions", () => {
  test("ADD writes data section bytes, with the size in the opcode or as a varint", async () => {
    const delta = buildDelta({
      windows: [
        {
          targetLength: 25,
          data: bytes("hello, decoder of VCDIFF!"),
          inst: [code.add(5), code.add(0), ...varint(20)],
        },
      ],
    });
    assert.equal(text(await decodeBuffer(delta)), "hello, decoder of VCDIFF!");
  });

  test("RUN repeats one data byte", async () => {
    const delta = buildDelta({
      windows: [
        { targetLength: 1007, data: [0x41, 0x42], inst: [code.run, ...varint(7), code.run, ...varint(1000)] },
      ],
    });
    const out = await decodeBuffer(delta);
    assert.equal(text(out), "A".repeat(7) + "B".repeat(1000));
  });

  test("COPY decodes every address mode: self, here, near and same caches", async () => {
    const delta = buildDelta({
      windows: [
        {
          indicator: VCD_SOURCE,
          segmentLength: 36,
          segmentPosition: 0,
          targetLength: 20,
          inst: [code.copy(0, 4), code.copy(2, 4), code.copy(6, 4), code.copy(1, 4), code.copy(3, 4)],
          // self 10; near[0]=10 +6 = 16; same[10] = 10; here 48-48 = 0; near[1]=16 +4 = 20
          addr: [10, 6, 10, 48, 4],
        },
      ],
    });
    assert.equal(text(await decodeBuffer(delta, ALPHABET)), "abcdghijabcd0123klmn");
  });

  test("COPY reads the source segment at its position in the source", async () => {
    const delta = buildDelta({
      windows: [
        {
          indicator: VCD_SOURCE,
          segmentLength: 10,
          segmentPosition: 26,
          targetLength: 8,
          inst: [code.copy(0, 4), code.copy(0, 4)],
          addr: [6, 0],
        },
      ],
    });
    assert.equal(text(await decodeBuffer(delta, ALPHABET)), "wxyzqrst");
  });

  test("a COPY that overlaps its own output repeats the bytes before it", async () => {
    const short = buildDelta({
      windows: [{ targetLength: 12, data: bytes("ab"), inst: [code.add(2), code.copy(0, 10)], addr: [0] }],
    });
    assert.equal(text(await decodeBuffer(short)), "abababababab");
    const pattern = "0123456789ABCDEFGHIJ";
    const long = buildDelta({
      windows: [
        {
          targetLength: 1020,
          data: bytes(pattern),
          inst: [code.add(0), ...varint(20), code.copy(1, 0), ...varint(1000)],
          addr: [20],
        },
      ],
    });
    assert.equal(text(await decodeBuffer(long)), pattern.repeat(51));
  });

  test("a COPY that starts in the source segment continues into the target window", async () => {
    const delta = buildDelta({
      windows: [
        {
          indicator: VCD_SOURCE,
          segmentLength: 3,
          segmentPosition: 0,
          targetLength: 8,
          data: bytes("ab"),
          inst: [code.add(2), code.copy(0, 6)],
          addr: [1],
        },
      ],
    });
    assert.equal(text(await decodeBuffer(delta, bytes("XYZ"))), "abYZabYZ");
  });

  test("the address caches are reset at every window", async () => {
    const delta = buildDelta({
      windows: [
        { indicator: VCD_SOURCE, segmentLength: 36, targetLength: 4, inst: [code.copy(0, 4)], addr: [20] },
        // With fresh caches near[0] = 0 and same[20] = 0: addresses 5 and 0, not 25 and 20.
        {
          indicator: VCD_SOURCE,
          segmentLength: 36,
          targetLength: 8,
          inst: [code.copy(2, 4), code.copy(6, 4)],
          addr: [5, 20],
        },
      ],
    });
    assert.equal(text(await decodeBuffer(delta, ALPHABET)), "klmn56780123");
  });

  test("a VCD_TARGET window copies from earlier output", async () => {
    const delta = buildDelta({
      windows: [
        { targetLength: 11, data: bytes("hello world"), inst: [code.add(11)] },
        {
          indicator: VCD_TARGET,
          segmentLength: 5,
          segmentPosition: 6,
          targetLength: 6,
          data: bytes("!"),
          inst: [code.copy(0, 5), code.add(1)],
          addr: [0],
        },
      ],
    });
    assert.equal(text(await decodeBuffer(delta)), "hello worldworld!");
  });

  test("windows are yielded one by one, whatever the chunking of the delta", async () => {
    const delta = buildDelta({
      windows: [
        { targetLength: 5, data: bytes("hello"), inst: [code.add(5)] },
        { indicator: VCD_SOURCE, segmentLength: 36, targetLength: 4, inst: [code.copy(0, 4)], addr: [10] },
      ],
    });
    for (const size of [1, 2, 3, 7, delta.length]) {
      const parts: string[] = [];
      for await (const part of decode(chunks(delta, size), { source: new BufferSource(ALPHABET) })) {
        parts.push(text(part));
      }
      assert.deepEqual(parts, ["hello", "abcd"], `chunks of ${size}`);
    }
  });

  test("a window larger than a part, with more instructions than a part holds, decodes part by part", async () => {
    // 40,000 short source COPYs (more than MAX_PART_INSTRUCTIONS), a long COPY read straight into
    // the target that runs past the segment into the window, a RUN across the 1 MiB part
    // boundary, an ADD, an overlapping COPY within the target and a short source COPY after it.
    const source = randomish(300_000);
    const target: number[] = [];
    const inst: number[] = [];
    const addr: number[] = [];
    for (let i = 0; i < 40_000; i++) {
      const a = (i * 7919) % (source.length - 4);
      inst.push(code.copy(0, 4));
      addr.push(...varint(a));
      for (let k = 0; k < 4; k++) target.push(source[a + k]);
    }
    inst.push(code.copy(0, 0), ...varint(200_000));
    addr.push(...varint(200_000));
    for (let k = 0; k < 100_000; k++) target.push(source[200_000 + k]);
    for (let k = 0; k < 100_000; k++) target.push(target[k]);
    inst.push(code.run, ...varint(1_500_000));
    for (let k = 0; k < 1_500_000; k++) target.push(0x5a);
    const added = bytes("twenty bytes of data");
    inst.push(code.add(0), ...varint(added.length));
    target.push(...added);
    inst.push(code.copy(0, 0), ...varint(50_000));
    addr.push(...varint(source.length + target.length - 10));
    for (let k = 0; k < 50_000; k++) target.push(target[target.length - 10]);
    inst.push(code.copy(0, 0), ...varint(100));
    addr.push(...varint(5));
    for (let k = 0; k < 100; k++) target.push(source[5 + k]);
    const expected = Uint8Array.from(target);
    const delta = buildDelta({
      windows: [
        {
          indicator: VCD_SOURCE,
          segmentLength: source.length,
          targetLength: expected.length,
          data: [0x5a, ...added],
          inst,
          addr,
          checksumOf: expected,
        },
      ],
    });
    const withSync = new BufferSource(source);
    const asyncOnly: SourceReader = { size: source.length, read: (p, i, o, l) => withSync.read(p, i, o, l) };
    for (const reader of [withSync, asyncOnly]) {
      for (const reuseBuffers of [false, true]) {
        const parts: Uint8Array[] = [];
        for await (const part of decode(chunks(delta, 1 << 16), { source: reader, reuseBuffers })) {
          parts.push(part.slice());
        }
        // The window comes in pieces of OUTPUT_PIECE bytes, the last one shorter.
        assert.deepEqual(
          parts.map((p) => p.length),
          [OUTPUT_PIECE, expected.length - OUTPUT_PIECE],
        );
        assert.ok(Buffer.concat(parts).equals(expected), `reuseBuffers ${reuseBuffers}`);
      }
    }
  });

  test("an empty window produces nothing and a delta without windows decodes to empty", async () => {
    assert.equal((await decodeBuffer(buildDelta({ windows: [] }))).length, 0);
    assert.equal((await decodeBuffer(buildDelta({ windows: [{ targetLength: 0 }] }))).length, 0);
  });
});

describe("VCDIFF decoder: header and checksum", () => {
  test("adler32 agrees with zlib's on every length around its block sizes, in WebAssembly and in TypeScript", () => {
    // Node.js 20 and 22 have WebAssembly SIMD: a module that fails to load would fall back silently.
    assert.equal(adler32Backend(), "webassembly");
    const data = randomish(200_000);
    // Lengths around the 16-byte step, the 5,552-byte run, the 1 KiB WebAssembly threshold and its
    // 64 KiB page; all 0xff bytes are the largest sums a run can reach.
    const lengths = [
      0, 1, 15, 16, 17, 1023, 1024, 1025, 5551, 5552, 5553, 5568, 65_535, 65_536, 65_537, 70_000, 200_000,
    ];
    for (const bytes of [data, new Uint8Array(200_000).fill(0xff)]) {
      for (const length of lengths) {
        const slice = bytes.subarray(0, length);
        const zlib = deflateSync(slice, { level: 0 });
        const expected = zlib.readUInt32BE(zlib.length - 4);
        assert.equal(adler32(slice), expected, `length ${length}`);
        assert.equal(adler32Portable(slice), expected, `length ${length}, TypeScript`);
      }
    }
  });

  test("adler32 continues from a previous value, as when a window is summed in parts", () => {
    const data = randomish(150_000);
    const whole = adler32Portable(data);
    for (const cut of [1, 16, 1000, 5552, 65_536, 100_001]) {
      assert.equal(adler32(data.subarray(cut), adler32(data.subarray(0, cut))), whole, `cut at ${cut}`);
    }
  });

  test("the committed WebAssembly modules are what their .wat sources assemble to", async () => {
    const build = (await import(fileURLToPath(new URL("../../scripts/build-wasm.mjs", import.meta.url)))) as {
      MODULES: string[];
      assemble: (path: string) => Promise<string>;
      outputOf: (path: string) => string;
    };
    assert.deepEqual(build.MODULES, ["delta/vcdiff/adler32.wat", "delta/vcdiff/window.wat"]);
    for (const path of build.MODULES) {
      const committed = await readFile(new URL(`../../${build.outputOf(path)}`, import.meta.url), "utf8");
      assert.equal(committed, await build.assemble(path), path);
    }
  });

  test("the application header is read and handed to onHeader", async () => {
    let seen: VcdiffHeader | undefined;
    const delta = buildDelta({
      appHeader: bytes("a.tar//b.tar/"),
      windows: [{ targetLength: 2, data: bytes("hi"), inst: [code.add(2)] }],
    });
    const out = await decodeBuffer(delta, undefined, { onHeader: (h) => (seen = h) });
    assert.equal(text(out), "hi");
    assert.equal(text(seen!.appHeader!), "a.tar//b.tar/");
    await decodeBuffer(buildDelta({ windows: [] }), undefined, { onHeader: (h) => (seen = h) });
    assert.deepEqual(seen, {});
  });

  test("a window's Adler-32 is verified, and ignored when verifyChecksum is false", async () => {
    const window = { targetLength: 5, data: bytes("hello"), inst: [code.add(5)] };
    const good = buildDelta({ windows: [{ ...window, checksumOf: bytes("hello") }] });
    assert.equal(text(await decodeBuffer(good)), "hello");
    const bad = buildDelta({ windows: [{ ...window, checksumOf: 0x12345678 }] });
    await rejectsWith(decodeBuffer(bad), "CHECKSUM", 5, /Adler-32 062c0215, the delta says 12345678/);
    assert.equal(text(await decodeBuffer(bad, undefined, { verifyChecksum: false })), "hello");
  });
});

describe("VCDIFF decoder: refusals and malformed input", () => {
  const hello = { targetLength: 5, data: bytes("hello"), inst: [code.add(5)] };

  test("input that is not VCDIFF, or empty, is refused", async () => {
    await rejectsWith(decodeBuffer(Uint8Array.of(0xd6, 0xc3, 0xc5, 0, 0)), "BAD_MAGIC", 2, /not a VCDIFF/);
    await rejectsWith(decodeBuffer(new Uint8Array(0)), "TRUNCATED", 0);
    await rejectsWith(decodeBuffer(Uint8Array.of(0xd6, 0xc3, 0xc4, 0, 0x80)), "CORRUPT", 4, /undefined bits/);
  });

  test("secondary compression is refused naming the compressor", async () => {
    const lzma = buildDelta({ headerIndicator: VCD_DECOMPRESS, headerExtra: [2], windows: [] });
    await rejectsWith(decodeBuffer(lzma), "UNSUPPORTED", 4, /compressor id 2 \(LZMA\).*-S none/);
    const djw = buildDelta({ headerIndicator: VCD_DECOMPRESS, headerExtra: [1], windows: [] });
    await rejectsWith(decodeBuffer(djw), "UNSUPPORTED", 4, /id 1 \(DJW\)/);
    const sections = buildDelta({ windows: [{ ...hello, deltaIndicator: 1 }] });
    await rejectsWith(decodeBuffer(sections), "UNSUPPORTED", 8, /secondary-compressed/);
  });

  test("a custom code table is refused", async () => {
    const delta = buildDelta({ headerIndicator: VCD_CODETABLE, headerExtra: [0], windows: [] });
    await rejectsWith(decodeBuffer(delta), "UNSUPPORTED", 4, /VCD_CODETABLE/);
  });

  test("a VCD_SOURCE window without a source, or with a short one, is refused", async () => {
    const delta = buildDelta({
      windows: [
        { indicator: VCD_SOURCE, segmentLength: 20, targetLength: 4, inst: [code.copy(0, 4)], addr: [0] },
      ],
    });
    await rejectsWith(decodeBuffer(delta), "SOURCE", 5, /no source was given/);
    await rejectsWith(decodeBuffer(delta, bytes("short")), "SOURCE", 5, /the source has 5 bytes/);
  });

  test("a target window above maxWindowSize is refused before allocation", async () => {
    await rejectsWith(
      decodeBuffer(buildDelta({ windows: [hello] }), undefined, { maxWindowSize: 4 }),
      "LIMIT",
      7,
    );
    const huge = Uint8Array.of(0xd6, 0xc3, 0xc4, 0, 0, 0, 10, ...varint(2 ** 40), 0, 0, 0, 0);
    await rejectsWith(decodeBuffer(huge), "LIMIT", 7, /larger than the limit/);
  });

  test("each malformed instruction ends in CORRUPT at the byte that is wrong", async () => {
    // One window without a source: its indicator at offset 5, its sections from offset 12.
    const window = (w: { targetLength: number; data?: number[]; inst: number[]; addr?: number[] }) =>
      decodeBuffer(buildDelta({ windows: [w] }));
    const tooBig = [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01];
    await rejectsWith(
      window({ targetLength: 4, inst: [code.add(0), 0x80] }),
      "CORRUPT",
      13,
      /instruction section ends inside an instruction size/,
    );
    await rejectsWith(
      window({ targetLength: 4, inst: [code.add(0), ...tooBig] }),
      "CORRUPT",
      13,
      /instruction size does not fit in 53 bits/,
    );
    await rejectsWith(
      window({ targetLength: 4, data: [1, 2], inst: [code.add(3)] }),
      "CORRUPT",
      14,
      /ADD of 3 bytes needs more than the 2 left in the data section/,
    );
    await rejectsWith(
      window({ targetLength: 3, inst: [code.run, 3] }),
      "CORRUPT",
      12,
      /RUN needs a byte but the data section is used up/,
    );
    await rejectsWith(
      window({ targetLength: 5, data: [7], inst: [code.add(1), code.copy(0, 4)], addr: [0x80] }),
      "CORRUPT",
      15,
      /address section ends inside a COPY address/,
    );
    await rejectsWith(
      window({ targetLength: 5, data: [7], inst: [code.add(1), code.copy(6, 4)] }),
      "CORRUPT",
      15,
      /address section ends inside a COPY address/,
    );
    await rejectsWith(
      window({ targetLength: 5, data: [7], inst: [code.add(1), code.copy(0, 4)], addr: tooBig }),
      "CORRUPT",
      15,
      /COPY address does not fit in 53 bits/,
    );
    await rejectsWith(
      window({ targetLength: 5, data: [7], inst: [code.add(1), code.copy(1, 4)], addr: [2] }),
      "CORRUPT",
      15,
      /COPY address -1 is outside the 1 bytes available \(mode 1\)/,
    );
    await rejectsWith(
      window({ targetLength: 3, data: [7, 8, 9], inst: [code.add(1), code.run, 2] }),
      "CORRUPT",
      14,
      /1 bytes of the data section are left unused/,
    );
    // The same bytes decode when they are right: a COPY overlapping its own output repeats the byte.
    const right = await window({
      targetLength: 5,
      data: [7],
      inst: [code.add(1), code.copy(1, 4)],
      addr: [1],
    });
    assert.deepEqual([...right], [7, 7, 7, 7, 7]);
  });

  test("malformed windows end in CORRUPT with the offset of the fault", async () => {
    const beyond = buildDelta({ windows: [{ targetLength: 4, inst: [code.copy(0, 4)], addr: [0] }] });
    await rejectsWith(decodeBuffer(beyond), "CORRUPT", 13, /COPY address 0 is outside the 0 bytes/);
    const tooMuchData = buildDelta({ windows: [{ ...hello, data: bytes("hello!") }] });
    await rejectsWith(decodeBuffer(tooMuchData), "CORRUPT", 9, /data section of 6 bytes is larger/);
    const unused = buildDelta({ windows: [{ ...hello, addr: [1] }] });
    await rejectsWith(decodeBuffer(unused), "CORRUPT", 18, /1 bytes of the address section are left unused/);
    const short = buildDelta({ windows: [{ ...hello, targetLength: 6 }] });
    await rejectsWith(decodeBuffer(short), "CORRUPT", 18, /produce 5 bytes but the window header says 6/);
    const overflow = buildDelta({
      windows: [{ ...hello, data: bytes("hell"), targetLength: 4, inst: [code.add(5)] }],
    });
    await rejectsWith(decodeBuffer(overflow), "CORRUPT", 16, /overflows the 4-byte target window/);
    const both = buildDelta({
      windows: [{ ...hello, indicator: VCD_SOURCE | VCD_TARGET, segmentLength: 0 }],
    });
    await rejectsWith(decodeBuffer(both), "CORRUPT", 5, /both VCD_SOURCE and VCD_TARGET/);
    const future = buildDelta({
      windows: [
        { indicator: VCD_TARGET, segmentLength: 4, targetLength: 4, inst: [code.copy(0, 4)], addr: [0] },
      ],
    });
    await rejectsWith(decodeBuffer(future), "CORRUPT", 5, /only 0 have been produced/);
    const lengths = buildDelta({ windows: [hello] });
    lengths[6] += 1; // the delta encoding length
    await rejectsWith(
      decodeBuffer(lengths),
      "CORRUPT",
      6,
      /delta encoding length is 12, but the window header and sections add up to 11/,
    );
  });

  test("every truncation ends in TRUNCATED, except at a window boundary where the format cannot tell", async () => {
    const delta = buildDelta({
      appHeader: bytes("app"),
      windows: [
        { ...hello, checksumOf: bytes("hello") },
        { indicator: VCD_SOURCE, segmentLength: 36, targetLength: 4, inst: [code.copy(0, 4)], addr: [10] },
      ],
    });
    const boundaries = new Map<number, string>([
      [9, ""],
      [9 + 17, "hello"],
    ]);
    for (let cut = 0; cut < delta.length; cut++) {
      const run = decodeBuffer(delta.subarray(0, cut), ALPHABET);
      if (boundaries.has(cut)) {
        assert.equal(text(await run), boundaries.get(cut), `cut at ${cut}`);
      } else {
        await assert.rejects(
          run,
          (e: unknown) => e instanceof VcdiffError && e.code === "TRUNCATED",
          `cut ${cut}`,
        );
      }
    }
    assert.equal(text(await decodeBuffer(delta, ALPHABET)), "helloabcd");
  });

  test("VCD_TARGET windows can only reach the kept history", async () => {
    const delta = buildDelta({
      windows: [
        { targetLength: 5, data: bytes("hello"), inst: [code.add(5)] },
        { targetLength: 5, data: bytes("world"), inst: [code.add(5)] },
        { indicator: VCD_TARGET, segmentLength: 5, targetLength: 5, inst: [code.copy(0, 5)], addr: [0] },
      ],
    });
    assert.equal(text(await decodeBuffer(delta)), "helloworldhello");
    await rejectsWith(
      decodeBuffer(delta, undefined, { targetHistory: 5 }),
      "LIMIT",
      31,
      /raise targetHistory/,
    );
  });

  test("with reuseBuffers each chunk is right when consumed in turn, and VCD_TARGET reaches the previous window", async () => {
    const windows = ["first", "second", "third"].map((word) => ({
      targetLength: word.length,
      data: bytes(word),
      inst: [code.add(word.length)],
    }));
    const fromPrevious = {
      indicator: VCD_TARGET,
      segmentLength: 5,
      segmentPosition: 11,
      targetLength: 5,
      inst: [code.copy(0, 5)],
      addr: [0],
    };
    const delta = buildDelta({ windows: [...windows, fromPrevious] });
    const seen: string[] = [];
    for await (const part of decode(chunks(delta, 4), { reuseBuffers: true })) seen.push(text(part));
    assert.deepEqual(seen, ["first", "second", "third", "third"]);
    const fromOlder = { ...fromPrevious, segmentPosition: 5, segmentLength: 6 };
    await rejectsWith(
      collect(decode(chunks(buildDelta({ windows: [...windows, fromOlder] }), 4), { reuseBuffers: true })),
      "LIMIT",
      45,
      /only the last 5 bytes of output/,
    );
  });

  test("with reuseBuffers, chains of VCD_TARGET windows between others each read the window before", async () => {
    // Plain windows share one target slot; a VCD_TARGET window goes to the other slot, so the
    // window it copies from stays intact. Windows span several parts (STAGE_PART is 1 MiB): each
    // VCD_TARGET window first ADDs 1.5 MiB, then copies the whole previous window, which would
    // read overwritten bytes if the two shared a slot.
    await decodesChain(
      [
        addedWindow(61, 2 * MiB),
        copyingPrevious(0, 2 * MiB, 62, 1.5 * MiB),
        addedWindow(63, 2 * MiB),
        addedWindow(64, 2 * MiB),
        copyingPrevious(7.5 * MiB, 2 * MiB, 65, 1.5 * MiB),
      ],
      1 << 16,
    );
  });

  test("with reuseBuffers, a VCD_TARGET window that needs a larger memory still reads the previous window", async () => {
    // The decoder's WebAssembly memory is replaced, never grown, when a window's target or sections
    // do not fit: the window before, which a VCD_TARGET window copies from, stays in the old memory.
    // 2 MiB; then a 9 MiB target (past the first 8 MiB slot); then 20 MiB of sections (past the
    // room for them); each followed by a window copying the whole window before it.
    await decodesChain(
      [
        addedWindow(71, 2 * MiB),
        copyingPrevious(0, 2 * MiB, 72, 7 * MiB),
        addedWindow(73, 20 * MiB),
        copyingPrevious(11 * MiB, 20 * MiB, 74, 1 * MiB),
      ],
      1 << 20,
    );
  });

  test("with reuseBuffers, decodes one after another and at the same time each come out right", async () => {
    // A finished decode hands its buffers to the next one; two running at once must not share them.
    const source = randomBytes(51, 300_000);
    const targets = [mutate(source, 52, 40), mutate(source, 53, 40), mutate(source, 54, 40)];
    const reader = new BufferSource(source);
    const deltas = await Promise.all(targets.map((t) => collect(encode(chunks(t, 1 << 16), reader))));
    for (const [i, delta] of deltas.entries()) {
      // One window: its chunks stay valid until the next decode takes the buffers over.
      const out = await collect(decode(chunks(delta, 1 << 12), { source: reader, reuseBuffers: true }));
      assert.ok(Buffer.from(out).equals(targets[i]!), `decode ${i} in turn`);
    }
    const running = deltas.map((d) => decode(chunks(d, 1 << 12), { source: reader, reuseBuffers: true }));
    const outputs: Uint8Array[][] = running.map(() => []);
    const done = running.map(() => false);
    while (done.includes(false)) {
      for (const [i, stream] of running.entries()) {
        if (done[i]) continue;
        const r = await stream.next();
        if (r.done) done[i] = true;
        else outputs[i]!.push(new Uint8Array(r.value));
      }
    }
    for (const [i, parts] of outputs.entries())
      assert.ok(Buffer.concat(parts).equals(targets[i]!), `decode ${i} interleaved`);
  });

  test("a failing source read ends in SOURCE at the window, naming the range", async () => {
    const failing: SourceReader = {
      size: 100,
      read: async () => {
        throw new Error("disk on fire");
      },
    };
    const delta = buildDelta({
      windows: [
        {
          indicator: VCD_SOURCE,
          segmentLength: 50,
          segmentPosition: 40,
          targetLength: 4,
          inst: [code.copy(0, 4)],
          addr: [8],
        },
      ],
    });
    await rejectsWith(
      collect(decode(chunks(delta, 64), { source: failing })),
      "SOURCE",
      5,
      /reading 4 bytes at offset 48 of the source failed: disk on fire/,
    );
  });

  test("stopping early closes the delta stream", async () => {
    let closed = false;
    async function* stream(): AsyncGenerator<Uint8Array> {
      try {
        yield buildDelta({ windows: [hello, hello] });
        yield new Uint8Array(0);
      } finally {
        closed = true;
      }
    }
    for await (const part of decode(stream())) {
      assert.equal(text(part), "hello");
      break;
    }
    assert.equal(closed, true);
  });
});

/** A synthetic source whose byte at p is p % 251, to test positions far beyond 4 GiB without the disk. */
class PatternSource implements SourceReader {
  constructor(readonly size: number) {}
  async read(position: number, into: Uint8Array, offset: number, length: number): Promise<void> {
    assert.ok(position + length <= this.size);
    for (let i = 0; i < length; i++) into[offset + i] = (position + i) % 251;
  }
}

describe("VCDIFF sources", () => {
  test("fileChunks reads a delta through one reused buffer, and the decoder copes at every chunk size", async () => {
    // Window headers and sections straddle chunk boundaries: the decoder must copy what it still
    // needs of a chunk before asking for the next, which overwrites it.
    const source = randomish(5000);
    const windows = [0, 1, 2, 3].map((i) => ({
      indicator: VCD_SOURCE,
      segmentLength: 1000,
      segmentPosition: 1000 * i,
      targetLength: 300 + i,
      data: bytes("x".repeat(i + 1)),
      inst: [code.copy(0, 0), ...varint(299), code.add(i + 1)],
      addr: [...varint(i * 100)],
    }));
    const delta = buildDelta({ windows });
    const expected = await decodeBuffer(delta, source);
    assert.equal(expected.length, 1206);
    const dir = await mkdtemp(join(tmpdir(), "vcdiff-chunks-"));
    try {
      const path = join(dir, "delta");
      await writeFile(path, delta);
      for (const size of [1, 2, 3, 5, 7, 16, 64, delta.length]) {
        const handle = await open(path, "r");
        try {
          const decoded = await collect(
            decode(fileChunks(handle, size), { source: new BufferSource(source) }),
          );
          assert.ok(Buffer.from(decoded).equals(expected), `chunks of ${size}`);
        } finally {
          await handle.close();
        }
      }
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  test("FileSource reads by position, beyond 4 GiB too, and refuses reads past the end", async () => {
    const dir = await mkdtemp(join(tmpdir(), "vcdiff-source-"));
    try {
      const path = join(dir, "sparse");
      const far = 4.5 * 2 ** 30;
      const fh = await open(path, "w");
      await fh.truncate(5 * 2 ** 30);
      await fh.write(bytes("far away"), 0, 8, far);
      await fh.close();
      const source = await FileSource.open(path);
      assert.equal(source.size, 5 * 2 ** 30);
      const into = new Uint8Array(10);
      await source.read(far - 1, into, 1, 9);
      assert.deepEqual([...into], [0, 0, ...bytes("far away")]);
      into.fill(9);
      source.readSync(far - 1, into, 1, 9);
      assert.deepEqual([...into], [9, 0, ...bytes("far away")]);
      await assert.rejects(source.read(source.size - 2, into, 0, 3), /past the end/);
      await source.close();
      await source.close();
      await writeFile(join(dir, "small"), "0123456789");
      const small = await FileSource.open(join(dir, "small"));
      const delta = buildDelta({
        windows: [
          {
            indicator: VCD_SOURCE,
            segmentLength: 6,
            segmentPosition: 4,
            targetLength: 4,
            inst: [code.copy(0, 4)],
            addr: [2],
          },
        ],
      });
      assert.equal(text(await collect(decode(chunks(delta, 3), { source: small }))), "6789");
      await small.close();
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  test("a window copying from many scattered source places decodes through readSync and async read alike", async () => {
    const source = randomish(200_000);
    const addresses = Array.from({ length: 120 }, (_, i) => ((i * 7919) % 199) * 1000);
    const expected = addresses.flatMap((a) => [...source.subarray(a, a + 4)]);
    const delta = buildDelta({
      windows: [
        {
          indicator: VCD_SOURCE,
          segmentLength: source.length,
          targetLength: expected.length,
          inst: addresses.map(() => code.copy(0, 4)),
          addr: addresses.flatMap((a) => varint(a)),
        },
      ],
    });
    const withSync = new BufferSource(source);
    const asyncOnly: SourceReader = { size: source.length, read: (p, i, o, l) => withSync.read(p, i, o, l) };
    for (const reader of [
      withSync,
      asyncOnly,
      new ConcatSource([withSync, new BufferSource(new Uint8Array(0))]),
    ]) {
      assert.deepEqual([...(await collect(decode(chunks(delta, 50), { source: reader })))], expected);
    }
  });

  test("ConcatSource serves reads that span its parts, beyond 4 GiB too", async () => {
    const concat = new ConcatSource([
      new BufferSource(bytes("abc")),
      new BufferSource(new Uint8Array(0)),
      new BufferSource(bytes("defg")),
      new BufferSource(bytes("h")),
    ]);
    assert.equal(concat.size, 8);
    const into = new Uint8Array(7);
    await concat.read(1, into, 0, 7);
    assert.equal(text(into), "bcdefgh");
    into.fill(0);
    concat.readSync!(1, into, 0, 7);
    assert.equal(text(into), "bcdefgh");
    await assert.rejects(concat.read(2, into, 0, 7), /past the end/);

    const big = new ConcatSource([new PatternSource(6 * 2 ** 30), new PatternSource(3 * 2 ** 30)]);
    const at = 6 * 2 ** 30 - 3;
    const out = new Uint8Array(6);
    await big.read(at, out, 0, 6);
    const expected = [0, 1, 2].map((i) => (at + i) % 251).concat([0, 1, 2]);
    assert.deepEqual([...out], expected);

    const delta = buildDelta({
      windows: [
        {
          indicator: VCD_SOURCE,
          segmentLength: 8,
          segmentPosition: at - 1,
          targetLength: 6,
          inst: [code.copy(0, 6)],
          addr: [1],
        },
      ],
    });
    const options: DecodeOptions = { source: big };
    assert.deepEqual([...(await collect(decode(chunks(delta, 100), options)))], expected);
  });
});
