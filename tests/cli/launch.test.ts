/**
 * cli/launch.ts: `apply` runs in a child Node.js process with glibc's mmap threshold fixed; other
 * commands run in this process. The child here is a small script that records what it was given.
 */
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, describe, it } from "node:test";
import {
  launch,
  MALLOC_TUNABLE,
  tunedEnvironment,
  tunedFlags,
  YOUNG_GENERATION_FLAG,
} from "../../cli/launch.js";

const scratch = mkdtempSync(join(tmpdir(), "deltaship-launch-test-"));
after(() => rmSync(scratch, { recursive: true, force: true }));

describe("tunedEnvironment", () => {
  it("adds the mmap threshold to GLIBC_TUNABLES on Linux, after any tunables already set", () => {
    assert.equal(tunedEnvironment({ PATH: "/bin" }, "linux")?.GLIBC_TUNABLES, MALLOC_TUNABLE);
    assert.equal(tunedEnvironment({ PATH: "/bin" }, "linux")?.PATH, "/bin");
    assert.equal(
      tunedEnvironment({ GLIBC_TUNABLES: "glibc.malloc.arena_max=2" }, "linux")?.GLIBC_TUNABLES,
      `glibc.malloc.arena_max=2:${MALLOC_TUNABLE}`,
    );
  });

  it("changes nothing when the threshold is already set, or off Linux", () => {
    assert.equal(
      tunedEnvironment({ GLIBC_TUNABLES: "glibc.malloc.mmap_threshold=65536" }, "linux"),
      undefined,
    );
    assert.equal(tunedEnvironment({}, "darwin"), undefined);
    assert.equal(tunedEnvironment({}, "win32"), undefined);
  });
});

describe("tunedFlags", () => {
  it("caps V8's semi-spaces unless the flags or NODE_OPTIONS say otherwise", () => {
    assert.deepEqual(tunedFlags([], {}), [YOUNG_GENERATION_FLAG]);
    assert.deepEqual(tunedFlags(["--import", "tsx"], { NODE_OPTIONS: "--max-old-space-size=512" }), [
      YOUNG_GENERATION_FLAG,
    ]);
    assert.deepEqual(tunedFlags(["--max-semi-space-size=4"], {}), []);
    assert.deepEqual(tunedFlags([], { NODE_OPTIONS: "--trace-gc --max-semi-space-size=8" }), []);
  });
});

describe("launch", () => {
  /** A stand-in entry script: writes its arguments, V8 flags and GLIBC_TUNABLES to the file named first after the command, exits 7. */
  const script = join(scratch, "entry.mjs");
  writeFileSync(
    script,
    'import { writeFileSync } from "node:fs";\nconst [, , command, out, ...rest] = process.argv;\nwriteFileSync(out, JSON.stringify({ command, rest, flags: process.execArgv, tunables: process.env.GLIBC_TUNABLES ?? null }));\nprocess.exit(7);\n',
  );

  it("starts apply again in a child with the tunable and returns the child's exit code", {
    skip: process.platform === "linux" ? false : "the tunable is glibc's",
  }, async () => {
    const saved = process.env.GLIBC_TUNABLES;
    delete process.env.GLIBC_TUNABLES;
    try {
      const out = join(scratch, "apply.json");
      assert.equal(await launch(["apply", out, "bundle.dsb", "--to", "x.tar"], script), 7);
      assert.deepEqual(JSON.parse(readFileSync(out, "utf8")), {
        command: "apply",
        rest: ["bundle.dsb", "--to", "x.tar"],
        flags: [YOUNG_GENERATION_FLAG, ...process.execArgv],
        tunables: MALLOC_TUNABLE,
      });
    } finally {
      if (saved !== undefined) process.env.GLIBC_TUNABLES = saved;
    }
  });

  it("runs other commands in this process (an unknown one is a usage error, exit 2)", async () => {
    assert.equal(await launch(["no-such-command"], script), 2);
  });

  it("passes a usage error of apply through the real launcher's child", () => {
    const r = spawnSync(
      process.execPath,
      [join(import.meta.dirname, "..", "..", "bin", "deltaship.mjs"), "apply"],
      {
        encoding: "utf8",
      },
    );
    assert.equal(r.status, 2, r.stderr);
    assert.match(r.stderr, /bundle/i);
  });
});
