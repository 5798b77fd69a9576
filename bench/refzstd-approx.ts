/**
 * Measures approximate matching on real executable pairs, by hand (the files are too large for CI):
 *   node --import tsx bench/refzstd-approx.ts OLD NEW [OLD NEW ...]
 * Prints, per pair, the cloud-side time and peak RSS of `approximatePieces`, the piece counts, and
 * the sizes after `zstd -19 --long=28` of the piece table, the diff stream and the extra stream,
 * separately and as one interleaved literal stream, and with the diff pieces as x86 diff pieces
 * (difference bytes and operand words, ref-zstd version 3); checks the round trip byte for byte.
 */
import { spawnSync } from "node:child_process";
import { readFileSync } from "node:fs";
import {
  applyPieces,
  approximatePieces,
  encodePieceTable,
  literalStream,
  pieceStreams,
  splitExactRuns,
} from "../delta/refzstd/approx.js";
import { x86Mode } from "../delta/refzstd/encoder.js";
import { writeX86Words, X86_ABSOLUTE, X86_RELATIVE, x86PieceStreams } from "../delta/refzstd/x86diff.js";

function zstdSize(bytes: Uint8Array): number {
  if (bytes.length === 0) return 0;
  const run = spawnSync("zstd", ["-19", "--long=28", "-q", "-c"], { input: bytes, maxBuffer: 1 << 30 });
  if (run.status !== 0) throw new Error(`zstd failed: ${run.stderr}`);
  return run.stdout.length;
}

const args = process.argv.slice(2);
const minCopy = Number(process.env.MIN_COPY ?? 4096);
for (let i = 0; i + 1 < args.length; i += 2) {
  const oldFile = new Uint8Array(readFileSync(args[i]!));
  const newFile = new Uint8Array(readFileSync(args[i + 1]!));
  const started = process.hrtime.bigint();
  const cpuStart = process.cpuUsage();
  const pieces = approximatePieces(oldFile, newFile);
  const ms = Number(process.hrtime.bigint() - started) / 1e6;
  const cpu = process.cpuUsage(cpuStart);
  const { diff, extra } = pieceStreams(oldFile, newFile, pieces);
  const rebuilt = applyPieces(oldFile, pieces, diff, extra);
  if (Buffer.compare(rebuilt, newFile) !== 0) throw new Error(`round trip differs for ${args[i + 1]}`);
  const table = encodePieceTable(pieces);
  const t = zstdSize(table);
  const d = zstdSize(diff);
  const e = zstdSize(extra);
  const refined = splitExactRuns(oldFile, newFile, pieces, minCopy);
  const rTable = zstdSize(encodePieceTable(refined));
  const rLiteral = zstdSize(literalStream(oldFile, newFile, refined));
  // The diff pieces as x86 diff pieces (ref-zstd version 3): difference bytes, then the operand words.
  // The encoder's mode: MOV imm32 operands too for a position-dependent executable.
  const mode = x86Mode(oldFile) === X86_ABSOLUTE ? X86_ABSOLUTE : X86_RELATIVE;
  const { diff: x86Diff, words } = x86PieceStreams(mode, oldFile, newFile, pieces);
  // One stream per kind of operand, as a segment's frame holds them.
  const x = zstdSize(x86Diff);
  let w = 0;
  for (const list of words) {
    const bytes = new Uint8Array(4 * list.length);
    writeX86Words([list], bytes, 0);
    w += zstdSize(bytes);
  }
  const counts = (list: readonly { kind: string }[]) =>
    ["extra", "diff", "copy"].map((k) => `${k} ${list.filter((p) => p.kind === k).length}`).join(", ");
  console.log(
    [
      `${args[i + 1]}: old ${oldFile.length}, new ${newFile.length} bytes`,
      `  approximatePieces ${ms.toFixed(0)} ms (CPU ${((cpu.user + cpu.system) / 1000).toFixed(0)} ms), peak RSS ${(process.resourceUsage().maxRSS / 1024).toFixed(0)} MB`,
      `  pieces: ${counts(pieces)}; diff ${diff.length} B, extra ${extra.length} B`,
      `  zstd -19: table ${t} + diff ${d} + extra ${e} = ${t + d + e}`,
      `  as x86 diff pieces: table ${t} + diff ${x} + words (${words.map((list) => list.length).join("/")}) ${w} + extra ${e} = ${t + x + w + e}`,
      `  with copies (runs >= ${minCopy}): ${counts(refined)}; table ${rTable} + literal ${rLiteral} = ${rTable + rLiteral}`,
    ].join("\n"),
  );
}
