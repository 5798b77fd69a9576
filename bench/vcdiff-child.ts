/**
 * One codec run in its own process, so its peak RSS is its own: `encode SOURCE TARGET OUT` or
 * `decode SOURCE DELTA OUT`. Prints one JSON line: wall and CPU milliseconds of the codec work
 * (not process start-up) and the process's peak RSS in KiB.
 */

import { createReadStream } from "node:fs";
import { open } from "node:fs/promises";
import { decode } from "../delta/vcdiff/decoder.js";
import { encode } from "../delta/vcdiff/encoder.js";
import { FileSource, fileChunks } from "../delta/vcdiff/source.js";

const [mode, sourcePath, inputPath, outPath] = process.argv.slice(2);
if ((mode !== "encode" && mode !== "decode") || outPath === undefined) {
  console.error("usage: vcdiff-child.ts encode|decode SOURCE INPUT OUT");
  process.exit(2);
}

const source = await FileSource.open(sourcePath);
// Each write completes before the next chunk is asked for, as the CLI does: with reuseBuffers a
// chunk is overwritten two windows later, so a write stream's queue could see changed bytes.
const out = await open(outPath, "w");
const inputHandle = await open(inputPath, "r");
// The decoder reads the delta the way the CLI does (one reused buffer) and reuses its target
// buffers, as the CLI does; the encoder reads a plain stream.
const input =
  mode === "encode" ? createReadStream(inputPath, { highWaterMark: 1 << 20 }) : fileChunks(inputHandle);
const start = performance.now();
const cpuStart = process.cpuUsage();
const stream = mode === "encode" ? encode(input, source) : decode(input, { source, reuseBuffers: true });
for await (const part of stream) {
  for (let done = 0; done < part.length; )
    done += (await out.write(part, done, part.length - done)).bytesWritten;
}
await out.close();
const ms = performance.now() - start;
const cpu = process.cpuUsage(cpuStart);
const cpuMs = (cpu.user + cpu.system) / 1000;
await source.close();
await inputHandle.close();
console.log(JSON.stringify({ ms, cpuMs, maxRssKiB: process.resourceUsage().maxRSS }));
