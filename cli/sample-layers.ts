/**
 * Real files of this machine packed as reproducible layer tars: what the codec demo and the
 * codec's tests diff when no image is at hand.
 */
import { execFileSync } from "node:child_process";
import { accessSync, constants, lstatSync, readdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";

/**
 * Readable regular files under root (paths relative to /), sorted by path, until their sizes add
 * up to about budget bytes; a file of budget/maxShare bytes or more is left out, so no one file
 * makes up the sample.
 */
export function sampleFiles(root: string, budget: number, maxShare: number): string[] {
  const out: string[] = [];
  let total = 0;
  const walk = (dir: string): void => {
    let names: string[];
    try {
      names = readdirSync(dir).sort();
    } catch {
      return;
    }
    for (const name of names) {
      if (total >= budget) return;
      const path = join(dir, name);
      const st = lstatSync(path, { throwIfNoEntry: false });
      if (st === undefined) continue;
      if (st.isDirectory()) walk(path);
      else if (st.isFile() && st.size < budget / maxShare) {
        try {
          accessSync(path, constants.R_OK);
        } catch {
          continue; // unreadable files would make tar fail
        }
        out.push(path.slice(1));
        total += st.size;
      }
    }
  };
  walk(root);
  return out;
}

/** A reproducible tar of the given paths (relative to /): sorted, fixed owner and times, like an image layer. */
export function tarLayer(out: string, paths: string[], mtime: number): void {
  const list = `${out}.list`;
  writeFileSync(list, `${paths.join("\n")}\n`);
  execFileSync("tar", [
    "--create",
    "--file",
    out,
    "--directory",
    "/",
    "--no-recursion",
    "--sort=name",
    `--mtime=@${mtime}`,
    "--owner=0",
    "--group=0",
    "--numeric-owner",
    "--ignore-failed-read",
    "--files-from",
    list,
  ]);
}
