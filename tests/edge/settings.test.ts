/** The module's settings and file-name conventions: plain functions, plain data. */
import assert from "node:assert/strict";
import { mkdtemp, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, it } from "node:test";
import { parseTrustedKeys, readSettings } from "../../edge-module/config.js";
import { trustedKeysFromDesired } from "../../edge-module/hub.js";
import type { Logger } from "../../edge-module/log.js";
import { namePart } from "../../edge-module/processor.js";
import { reportProperties } from "../../edge-module/reports.js";

const PEM =
  "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=\n-----END PUBLIC KEY-----";

describe("edge module settings", () => {
  it("reads the set and bundle ids from dot-separated name parts, else nothing", () => {
    assert.equal(namePart("0200-normal.set-7f3c.bundle-ab12.dsb", "set"), "7f3c");
    assert.equal(namePart("0200-normal.set-7f3c.bundle-ab12.dsb", "bundle"), "ab12");
    assert.equal(namePart("sha256-aa-bb.bundle", "set"), undefined);
    assert.equal(namePart("sha256-aa-bb.bundle", "bundle"), undefined);
    assert.equal(namePart("x.set-.dsb", "set"), undefined);
  });

  it("takes trusted keys as JSON or one PEM key and names what is wrong otherwise", () => {
    assert.deepEqual(parseTrustedKeys(JSON.stringify({ cloud: PEM }), "env"), { cloud: PEM });
    assert.deepEqual(parseTrustedKeys(`${PEM}\n`, "/keys/cloud.pub"), { "/keys/cloud.pub": PEM });
    assert.deepEqual(parseTrustedKeys("  ", "env"), {});
    assert.throws(() => parseTrustedKeys("cloud=abc", "env"), {
      message: 'env: expected JSON {"<label>": "<public key>"} or a PEM public key, found neither',
    });
    assert.throws(() => parseTrustedKeys('{"cloud": 3}', "env"), {
      message: 'env: key "cloud" is not a non-empty string',
    });
  });

  it("reads every setting from the environment with its default", async () => {
    const dir = await mkdtemp(join(tmpdir(), "deltaship-settings-"));
    try {
      const file = join(dir, "keys.json");
      await writeFile(file, JSON.stringify({ fromFile: PEM }));
      const settings = readSettings({
        DELTASHIP_INBOX: "/data/inbox",
        DELTASHIP_REGISTRY: "http://localRegistry:5000",
        DELTASHIP_TRUSTED_KEYS_FILE: file,
        DELTASHIP_TRUSTED_KEYS: JSON.stringify({ fromEnv: PEM }),
        DELTASHIP_QUIET_MS: "0",
        DELTASHIP_IGNORE_SUFFIXES: ".inprogress",
      });
      assert.equal(settings.stateDir, "/data/inbox/.deltaship");
      assert.equal(settings.registry, "localRegistry:5000");
      assert.deepEqual(settings.trustedKeys, { fromFile: PEM, fromEnv: PEM });
      assert.equal(settings.pollMs, 2_000);
      assert.equal(settings.quietMs, 0);
      assert.deepEqual(settings.retry, { initialDelayMs: 1_000, maxDelayMs: 60_000 });
      assert.equal(settings.ignoredSuffixes.at(-1), ".inprogress");
      assert.deepEqual(settings.warnings, []);
      const missing = readSettings({ DELTASHIP_TRUSTED_KEYS_FILE: join(dir, "absent.json") });
      assert.equal(
        missing.registry,
        "localRegistry:5000",
        "the registry module's name in the shipped manifests",
      );
      assert.equal(missing.inboxDir, "/inbox");
      assert.deepEqual(missing.trustedKeys, {});
      assert.deepEqual(missing.warnings, [
        `DELTASHIP_TRUSTED_KEYS_FILE ${join(dir, "absent.json")} does not exist; using the twin's trustedKeys only`,
      ]);
      assert.throws(() => readSettings({ DELTASHIP_POLL_MS: "fast" }), {
        message: 'DELTASHIP_POLL_MS="fast": expected a whole number of at least 10',
      });
      assert.throws(() => readSettings({ DELTASHIP_CRASH_AFTER: "sometime" }), {
        message:
          "DELTASHIP_CRASH_AFTER=sometime: expected one of claimed, verified, applied, pushed, reported",
      });
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it("reads trustedKeys from desired properties, skipping twin metadata and logging bad entries", () => {
    const lines: string[] = [];
    const log: Logger = {
      log: (level, step, fields) => lines.push(`${level} ${step} ${JSON.stringify(fields)}`),
    };
    assert.deepEqual(
      trustedKeysFromDesired({ trustedKeys: { k1: PEM, $version: 3, k2: 7 }, $version: 4 }, log),
      {
        k1: PEM,
      },
    );
    assert.deepEqual(lines, ['warn twin.trustedKeys.invalid {"keyId":"k2","expected":"non-empty string"}']);
    assert.equal(trustedKeysFromDesired({ other: 1 }, log), undefined);
  });

  it("gives routes the report type and, for image reports, set, bundle and image", () => {
    assert.deepEqual(reportProperties({ type: "inventory", images: [] }), { type: "inventory" });
    assert.deepEqual(
      reportProperties({
        type: "imageFailed",
        setId: "s1",
        bundleId: "b1",
        image: "apps/x:1",
        digest: "",
        bytes: 0,
        durationMs: 3,
        reason: "r",
      }),
      { type: "imageFailed", setId: "s1", bundleId: "b1", image: "apps/x:1" },
    );
  });
});
