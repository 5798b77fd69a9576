/**
 * Two versions of a real x86-64 executable as a linker would make them: the first bytes of the
 * running node binary, then the same with bytes inserted in the middle and every CALL and JMP
 * whose operand crosses the insertion moved by its length, as the relocated code's calls are.
 */
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { seededBytes } from "./random.js";

export function x86Pair(
  size: number,
  inserted = 64,
): { oldFile: Uint8Array; newFile: Uint8Array; moved: number } {
  const bytes = readFileSync(process.execPath);
  assert.equal(bytes.readUInt32BE(0), 0x7f454c46, `${process.execPath} should be an ELF file`);
  assert.equal(bytes.readUInt16LE(18), 62, `${process.execPath} should be an x86-64 executable`);
  const oldFile = new Uint8Array(bytes.subarray(0, Math.min(bytes.length, size)));
  const at = Math.floor(oldFile.length / 2);
  const newFile = new Uint8Array(oldFile.length + inserted);
  newFile.set(oldFile.subarray(0, at));
  newFile.set(seededBytes(inserted, 5), at);
  newFile.set(oldFile.subarray(at), at + inserted);
  const view = new DataView(newFile.buffer);
  let moved = 0;
  const old = new DataView(oldFile.buffer, oldFile.byteOffset);
  for (let i = 0; i + 5 <= oldFile.length; i++) {
    if (oldFile[i] !== 0xe8 && oldFile[i] !== 0xe9) continue;
    const skip = i + 4;
    const from = i + 5;
    const to = from + old.getInt32(i + 1, true);
    // A call on one side of the insertion to the other side: its distance changes.
    const shift = from <= at && to > at ? inserted : from > at && to <= at ? -inserted : 0;
    const j = i < at ? i : i + inserted;
    if (shift !== 0 && (j + 5 <= at || j >= at + inserted)) {
      view.setInt32(j + 1, view.getInt32(j + 1, true) + shift, true);
      moved++;
    }
    i = skip;
  }
  return { oldFile, newFile, moved };
}
