/**
 * File-level hints for codec tests, derived from two tars the way the bundle encoder derives
 * them: content found in the source by sha256 → a copy; an entry whose path exists in the
 * source → a reference (the header alone when the content is copied, else header and data).
 */
import { createHash } from "node:crypto";
import { type ScannedEntry, TarScanner } from "../../delta/index/tar-scan.js";
import type { CopyHint, ReferenceHint } from "../../delta/refzstd/encoder.js";

interface Scanned {
  readonly entry: ScannedEntry;
  readonly digest: string | undefined;
}

export function scanTar(tar: Uint8Array): Scanned[] {
  const out: Scanned[] = [];
  let hash: ReturnType<typeof createHash> | undefined;
  const scanner = new TarScanner({
    entry(entry) {
      out.push({ entry, digest: undefined });
      hash = entry.type === "file" && entry.size > 0 ? createHash("sha256") : undefined;
    },
    data(chunk) {
      hash?.update(chunk);
    },
    entryEnd(entry) {
      if (hash !== undefined) out[out.length - 1] = { entry, digest: hash.digest("hex") };
      hash = undefined;
    },
  });
  scanner.push(tar);
  scanner.finish();
  return out;
}

export interface HintOptions {
  /**
   * Give a changed entry's reference the tar header lengths of both versions, as the bundle
   * encoder does (delta/bundle/diff.ts), so a changed gzip file can be sent as its text.
   */
  readonly headerLengths?: boolean;
}

/** Hints for `target` against the concatenation of `sources`. */
export function hintsFor(
  target: Uint8Array,
  sources: readonly Uint8Array[],
  options: HintOptions = {},
): { copies: CopyHint[]; references: ReferenceHint[] } {
  const contents = new Map<string, number>();
  const paths = new Map<string, ScannedEntry & { base: number }>();
  let base = 0;
  for (const source of sources) {
    for (const { entry, digest } of scanTar(source)) {
      if (digest !== undefined && !contents.has(digest)) contents.set(digest, base + entry.dataOffset);
      paths.set(entry.path, { ...entry, base });
    }
    base += source.length;
  }
  const copies: CopyHint[] = [];
  const references: ReferenceHint[] = [];
  for (const { entry, digest } of scanTar(target)) {
    const found = digest !== undefined ? contents.get(digest) : undefined;
    const old = paths.get(entry.path);
    const headerLength = entry.dataOffset - entry.headerOffset;
    if (found !== undefined)
      copies.push({ targetOffset: entry.dataOffset, length: entry.size, sourceOffset: found });
    if (old === undefined) continue;
    references.push({
      targetOffset: entry.headerOffset,
      targetLength: found !== undefined ? headerLength : headerLength + entry.size,
      sourceOffset: old.base + old.headerOffset,
      sourceLength: old.dataOffset - old.headerOffset + (found !== undefined ? 0 : old.size),
      ...(options.headerLengths === true && found === undefined
        ? { targetHeaderLength: headerLength, sourceHeaderLength: old.dataOffset - old.headerOffset }
        : {}),
    });
  }
  return { copies, references };
}
