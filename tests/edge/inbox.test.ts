/**
 * The inbox hands a bundle on only when it is complete: its declared length is there, nothing
 * changed for the quiet period, and no preallocated hole is left. Driven poll by poll with a
 * clock of its own, so nothing depends on timing. Bundles are real: header, canonical manifest
 * and Ed25519 signature from `delta/bundle`.
 */
import assert from "node:assert/strict";
import { createHash, randomBytes } from "node:crypto";
import { appendFile, mkdir, mkdtemp, open, readdir, rename, rm, truncate, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, it } from "node:test";
import {
  type BundleManifest,
  encodeHeader,
  encodeManifest,
  encodeSignatureBlock,
  SIGNATURE_BLOCK_SIZE,
} from "../../delta/bundle/format.js";
import { generateSigningKey, signManifest } from "../../delta/bundle/sign.js";
import { declaredLength, hasUnfilledBlock, readHead } from "../../edge-module/bundle-file.js";
import { type Arrival, Inbox, isIgnoredName } from "../../edge-module/inbox.js";

const QUIET_MS = 1_000;
const PAYLOAD_BYTES = 300 * 1024;

const digestOf = (bytes: Uint8Array) => `sha256:${createHash("sha256").update(bytes).digest("hex")}`;

/** A signed bundle with one payload of random bytes (the inbox never decodes payloads). */
function makeBundle(): Buffer {
  const payload = randomBytes(PAYLOAD_BYTES);
  const config = Buffer.from(JSON.stringify({ rootfs: { type: "layers", diff_ids: [] } }));
  const layerDiffId = digestOf(randomBytes(16));
  const manifest: BundleManifest = {
    format: 1,
    target: {
      repository: "apps/telemetry",
      tag: "1.4.2",
      manifestDigest: "",
      config: config.toString("base64"),
      configDigest: digestOf(config),
      layers: [{ diffId: layerDiffId, size: 1_000_000 }],
    },
    sources: [],
    layers: [
      {
        offset: 0,
        length: payload.length,
        sha256: digestOf(payload),
        outputSize: 1_000_000,
        diffId: layerDiffId,
        codec: "zstd",
      },
    ],
  };
  const manifestBytes = encodeManifest(manifest);
  const signature = encodeSignatureBlock(signManifest(manifestBytes, generateSigningKey()));
  const header = encodeHeader({
    manifestLength: manifestBytes.length,
    signatureLength: SIGNATURE_BLOCK_SIZE,
    payloadsLength: payload.length,
  });
  return Buffer.concat([header, manifestBytes, signature, payload]);
}

describe("edge inbox", () => {
  let root: string;
  let dir: string;
  let clock = 0;
  let inbox: Inbox;
  let bundle: Buffer;

  /** One poll after the clock moved past the quiet period. */
  const pollLater = async (): Promise<Arrival[]> => {
    clock += QUIET_MS + 1;
    return inbox.poll();
  };
  const names = (arrivals: Arrival[]) => arrivals.map((a) => `${a.kind}:${a.name}`);

  before(async () => {
    root = await mkdtemp(join(tmpdir(), "deltaship-inbox-"));
    bundle = makeBundle();
  });
  after(async () => {
    await rm(root, { recursive: true, force: true });
  });

  const fresh = async (name: string) => {
    dir = join(root, name);
    await rm(dir, { recursive: true, force: true });
    await mkdir(dir);
    inbox = new Inbox({
      dir,
      quietMs: QUIET_MS,
      declaredLength,
      readHead,
      hasUnfilledBlock,
      now: () => clock,
    });
  };

  it("hands over a bundle written in slow chunks once, only after it is complete and quiet", async () => {
    await fresh("slow");
    const path = join(dir, "0100-normal.set-s1.bundle-b1.dsb");
    const chunk = 7_919;
    await writeFile(path, bundle.subarray(0, 10)); // shorter than the header
    for (let at = 10; at < bundle.length; at += chunk) {
      assert.deepEqual(names(await pollLater()), [], `nothing handed over while ${at} bytes are there`);
      assert.deepEqual(names(await pollLater()), [], `nothing handed over when ${at} bytes stay quiet`);
      await appendFile(path, bundle.subarray(at, Math.min(at + chunk, bundle.length)));
    }
    assert.deepEqual(names(await inbox.poll()), [], "a change just seen is not acted on");
    clock += QUIET_MS - 1;
    assert.deepEqual(names(await inbox.poll()), [], "not before the quiet period is over");
    const [arrival, ...rest] = await pollLater();
    assert.equal(rest.length, 0);
    assert.equal(arrival?.kind, "complete");
    assert.equal(arrival.kind === "complete" && arrival.head.declaredLength, bundle.length);
    assert.equal(arrival.kind === "complete" && arrival.head.repository, "apps/telemetry");
    assert.deepEqual(names(await pollLater()), [], "handed over once");
    assert.deepEqual(
      await readdir(dir),
      ["0100-normal.set-s1.bundle-b1.dsb"],
      "the inbox moves nothing itself",
    );
  });

  it("waits for a preallocated file filled in place until no hole is left", async () => {
    await fresh("in-place");
    const path = join(dir, "b.dsb");
    await writeFile(path, "");
    await truncate(path, bundle.length);
    assert.deepEqual(names(await pollLater()), []);
    assert.deepEqual(names(await pollLater()), [], "a zero-filled header is a file not written yet");
    const handle = await open(path, "r+");
    const half = Math.floor(bundle.length / 2);
    await handle.write(bundle, 0, half, 0);
    await handle.sync();
    assert.deepEqual(names(await pollLater()), []);
    assert.deepEqual(names(await pollLater()), [], "full length with a zero hole is still arriving");
    await handle.write(bundle, half, bundle.length - half, half);
    await handle.close();
    assert.deepEqual(names(await pollLater()), []);
    assert.deepEqual(names(await pollLater()), ["complete:b.dsb"]);
  });

  it("takes a bundle renamed into place and ignores the mover's temporary names", async () => {
    await fresh("renamed");
    await writeFile(join(dir, "c.dsb.part"), bundle);
    await writeFile(join(dir, ".c.dsb"), bundle);
    assert.deepEqual(names(await pollLater()), []);
    assert.deepEqual(names(await pollLater()), [], "*.part and dotfiles are never bundles");
    await rename(join(dir, "c.dsb.part"), join(dir, "c.dsb"));
    assert.deepEqual(names(await pollLater()), []);
    assert.deepEqual(names(await pollLater()), ["complete:c.dsb"]);
    for (const name of ["x.part", "x.partial", "x.tmp", ".hidden", "x.filepart", "x.reason.txt", "x~"]) {
      assert.equal(isIgnoredName(name), true, name);
    }
    assert.equal(isIgnoredName("0100-normal.set-s1.bundle-b1.dsb"), false);
  });

  it("leaves an interrupted transfer alone and takes it when it resumes to the end", async () => {
    await fresh("interrupted");
    const path = join(dir, "d.dsb");
    await writeFile(path, bundle.subarray(0, 100_000));
    for (let i = 0; i < 5; i++)
      assert.deepEqual(names(await pollLater()), [], "a stalled transfer stays put");
    assert.deepEqual(await readdir(dir), ["d.dsb"]);
    await appendFile(path, bundle.subarray(100_000));
    assert.deepEqual(names(await pollLater()), []);
    assert.deepEqual(names(await pollLater()), ["complete:d.dsb"]);
  });

  it("calls a file longer than its header declares, or one that is no bundle, unusable", async () => {
    await fresh("unusable");
    await writeFile(join(dir, "long.dsb"), Buffer.concat([bundle, Buffer.from("extra")]));
    await writeFile(join(dir, "notes.txt"), "these are not the bundles you are looking for, not even close");
    assert.deepEqual(names(await pollLater()), []);
    const arrivals = await pollLater();
    assert.deepEqual(names(arrivals).sort(), ["unusable:long.dsb", "unusable:notes.txt"]);
    const long = arrivals.find((a) => a.name === "long.dsb");
    assert.equal(
      long?.kind === "unusable" && long.reason,
      `long.dsb is ${bundle.length + 5} bytes but its header declares ${bundle.length}; the transfer wrote past the end of the bundle, send it again`,
    );
    const notes = arrivals.find((a) => a.name === "notes.txt");
    assert.match(
      notes?.kind === "unusable" ? notes.reason : "",
      /^notes\.txt is not a bundle: bundle bad magic/,
    );
  });
});
