/** Gzip files made the way Debian makes them: the real GNU `gzip` binary over real texts. */
import { execFileSync } from "node:child_process";
import { readFileSync } from "node:fs";

/** The real `gzip` binary over `input` on stdin (so no name is stored) with these flags. */
export function gnuGzip(input: Uint8Array, ...flags: string[]): Buffer {
  return execFileSync("gzip", ["-c", ...flags], { input, maxBuffer: 64 * 1024 * 1024 });
}

/** A licence text Debian ships in /usr/share/common-licenses. */
export function licence(name: string): Buffer {
  return readFileSync(`/usr/share/common-licenses/${name}`);
}
