#!/usr/bin/env node
// Finds every *.test.ts under tests/ (or the paths given) and runs them with node's test runner.
// Node 20's --test does not expand globs or pick up .ts files, hence this small launcher.
import { spawnSync } from "node:child_process";
import { readdirSync, statSync } from "node:fs";
import { join } from "node:path";

function collect(path, out) {
  if (statSync(path).isDirectory()) {
    for (const name of readdirSync(path).sort()) {
      if (name === "node_modules" || name.startsWith(".")) continue;
      collect(join(path, name), out);
    }
  } else if (path.endsWith(".test.ts")) {
    out.push(path);
  }
  return out;
}

const args = process.argv.slice(2);
const flags = args.filter((a) => a.startsWith("--"));
const roots = args.filter((a) => !a.startsWith("--"));
const files = (roots.length > 0 ? roots : ["tests"]).flatMap((root) => collect(root, []));
if (files.length === 0) {
  console.error("no test files found");
  process.exit(1);
}
const result = spawnSync(
  process.execPath,
  ["--import", "tsx", "--test", "--test-concurrency=1", ...flags, ...files],
  { stdio: "inherit" },
);
process.exit(result.status ?? 1);
