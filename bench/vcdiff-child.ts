/**
 * One codec run in its own process, so its peak RSS is its own: `encode SOURCE TARGET OUT` or
 * `decode SOURCE DELTA OUT [RUNS] [fresh]`. Prints one JSON line: wall and CPU milliseconds of the
 * codec work (not process start-up) and the process's peak RSS in KiB. A decode may repeat RUNS
 * times in the process (`runs` lists each): the later runs are what a running edge module sees,
 * its code already compiled; with `fresh` the buffers a decode keeps for the next are dropped
 * between runs, as after an idle pause.
 */

import { createReadStream } from "node:fs";
import { open } from "node:fs/promises";
import { decode, releaseDecoderMemory } from "../delta/vcdiff/decoder.js";
import { encode } from "../delta/vcdiff/encoder.js";
import { FileSource, fileChunks } from "../delta/vcdiff/source.js";

const [mode, sourcePath, inputPath, outPath, runsArg, freshArg] = process.argv.slice(2);
if ((mode !== "encode" && mode !== "decode") || outPath === undefined) {
  console.error("usage: vcdiff-child.ts encode|decode SOURCE INPUT OUT [RUNS] [fresh]");
  process.exit(2);
}
const runCount = mode === "decode" ? Math.max(1, Number(runsArg ?? 1)) : 1;

async function once(): Promise<{ ms: number; cpuMs: number }> {
  const source = await FileSource.open(sourcePath!);
  // Each write completes before the next chunk is asked for, as the CLI does: with reuseBuffers a
  // chunk is overwritten once the decoder moves on to the next window.
  const out = await open(outPath!, "w");
  const inputHandle = await open(inputPath!, "r");
  // The decoder reads the delta the way the CLI does (one reused buffer) and reuses its target
  // buffers, as the CLI does; the encoder reads a plain stream.
  const input =
    mode === "encode" ? createReadStream(inputPath!, { highWaterMark: 1 << 20 }) : fileChunks(inputHandle);
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
  await source.close();
  await inputHandle.close();
  return { ms, cpuMs: (cpu.user + cpu.system) / 1000 };
}

const runs: { ms: number; cpuMs: number }[] = [];
for (let i = 0; i < runCount; i++) {
  if (freshArg === "fresh") releaseDecoderMemory();
  runs.push(await once());
}
console.log(JSON.stringify({ ...runs[0], runs, maxRssKiB: process.resourceUsage().maxRSS }));
