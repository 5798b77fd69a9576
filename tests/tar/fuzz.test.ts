/**
 * Seeded mutations of real tars and of a docker-archive: every one must end in a result or in
 * one of our typed errors, never in a crash, a hang or an untyped exception.
 */
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import { CompressionError } from "../../delta/image/compression.js";
import { DigestError } from "../../delta/image/digest.js";
import { openDockerArchive, writeDockerArchive } from "../../delta/image/docker-archive.js";
import { ImageFormatError } from "../../delta/image/oci.js";
import { TarError } from "../../delta/tar/format.js";
import { TarReader } from "../../delta/tar/reader.js";
import { collect, fixtureImage } from "../image/archive-fixture.js";
import { prng } from "../support/random.js";

/** Seeded fractions in [0, 1): the same mutations on every run, so a failure can be replayed. */
function rng(seed: number): () => number {
  const next = prng(seed);
  return () => next() / 2 ** 32;
}

function mutate(base: Uint8Array, random: () => number): Uint8Array {
  const kind = Math.floor(random() * 4);
  if (kind === 0) return base.slice(0, Math.floor(random() * base.length));
  const out = base.slice();
  // Most header fields live in the first 512 bytes of a block: aim there half of the time.
  const count = 1 + Math.floor(random() * 4);
  for (let i = 0; i < count; i++) {
    const block = Math.floor(random() * (out.length / 512));
    const at = kind === 1 ? block * 512 + Math.floor(random() * 512) : Math.floor(random() * out.length);
    out[at] = kind === 3 ? 0x80 | Math.floor(random() * 128) : Math.floor(random() * 256);
  }
  return out;
}

async function* chunked(bytes: Uint8Array, size: number): AsyncGenerator<Uint8Array> {
  for (let i = 0; i < bytes.length; i += size) yield bytes.subarray(i, Math.min(bytes.length, i + size));
}

describe("fuzzing", () => {
  let dir: string;
  let tars: Uint8Array[];
  before(() => {
    dir = mkdtempSync(join(tmpdir(), "tar-fuzz-"));
    const root = join(dir, "root");
    mkdirSync(join(root, "a".repeat(90), "b".repeat(90)), { recursive: true });
    writeFileSync(join(root, "a".repeat(90), "b".repeat(90), "file.txt"), "x".repeat(3000));
    writeFileSync(join(root, "small"), "y");
    tars = ["gnu", "pax", "ustar"].map((format) => {
      execFileSync("tar", [`--format=${format}`, "-cf", join(dir, `${format}.tar`), "-C", root, "."]);
      return new Uint8Array(readFileSync(join(dir, `${format}.tar`)));
    });
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  it("ends every mutated tar in entries or a TarError", async () => {
    const random = rng(20261128);
    const outcomes = { ok: 0, TarError: 0 };
    for (let i = 0; i < 1500; i++) {
      const input = mutate(tars[i % tars.length]!, random);
      try {
        const reader = new TarReader(chunked(input, 1 + Math.floor(random() * 2000)));
        for await (const item of reader) for await (const _ of item.data) void _;
        assert.ok(reader.size <= input.length);
        outcomes.ok++;
      } catch (err) {
        assert.ok(err instanceof TarError, `mutation ${i}: ${(err as Error).stack}`);
        assert.ok(err.offset >= 0 && err.offset <= input.length, `mutation ${i}: offset ${err.offset}`);
        outcomes.TarError++;
      }
    }
    assert.ok(outcomes.ok > 100 && outcomes.TarError > 100, JSON.stringify(outcomes));
  });

  it("ends every mutated docker-archive in an image or a typed error", async () => {
    const archive = join(dir, "image.tar");
    await writeDockerArchive(archive, await fixtureImage("apps/fuzz", "1", "f"));
    const base = new Uint8Array(readFileSync(archive));
    const random = rng(7);
    const outcomes: Record<string, number> = {};
    const mutated = join(dir, "mutated.tar");
    for (let i = 0; i < 300; i++) {
      writeFileSync(mutated, mutate(base, random));
      let outcome = "ok";
      try {
        const reader = await openDockerArchive(mutated);
        try {
          for (let l = 0; l < reader.info.layers.length; l++) await collect(await reader.openLayerTar(l));
        } finally {
          await reader.close();
        }
      } catch (err) {
        const typed = [TarError, ImageFormatError, DigestError, CompressionError].some(
          (t) => err instanceof t,
        );
        assert.ok(typed, `mutation ${i}: ${(err as Error).stack}`);
        outcome = (err as Error).name;
      }
      outcomes[outcome] = (outcomes[outcome] ?? 0) + 1;
    }
    assert.ok((outcomes.ok ?? 0) > 10, JSON.stringify(outcomes));
    assert.ok((outcomes.DigestError ?? 0) > 10, JSON.stringify(outcomes));
  });
});
