/**
 * One codec run in its own process, so its peak RSS is its own: `encode SOURCE TARGET OUT` or
 * `decode SOURCE DELTA OUT`. Prints one JSON line: wall and CPU milliseconds of the codec work
 * (not process start-up) and the process's peak RSS in KiB.
 */

import { once } from "node:events";
import { createReadStream, createWriteStream } from "node:fs";
import { decode } from "../delta/vcdiff/decoder.js";
import { encode } from "../delta/vcdiff/encoder.js";
import { FileSource } from "../delta/vcdiff/source.js";

const [mode, sourcePath, inputPath, outPath] = process.argv.slice(2);
if ((mode !== "encode" && mode !== "decode") || outPath === undefined) {
  console.error("usage: vcdiff-child.ts encode|decode SOURCE INPUT OUT");
  process.exit(2);
}

const source = await FileSource.open(sourcePath);
const out = createWriteStream(outPath);
const input = createReadStream(inputPath, { highWaterMark: 1 << 20 });
const start = performance.now();
const cpuStart = process.cpuUsage();
const stream = mode === "encode" ? encode(input, source) : decode(input, { source });
for await (const part of stream) {
  if (!out.write(part)) await once(out, "drain");
}
out.end();
await once(out, "finish");
const ms = performance.now() - start;
const cpu = process.cpuUsage(cpuStart);
const cpuMs = (cpu.user + cpu.system) / 1000;
await source.close();
console.log(JSON.stringify({ ms, cpuMs, maxRssKiB: process.resourceUsage().maxRSS }));
