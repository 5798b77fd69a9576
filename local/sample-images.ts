/**
 * The demo's sample images, built in seconds from real files on this machine: a base (shared
 * libraries), a runtime on top of it (programs), two applications on the runtime (JavaScript
 * from this project's own dependencies) and an update of one of them. Deterministic for a given
 * machine: fixed times, sorted files, the same edits.
 */
import { createHash } from "node:crypto";
import { readdir, readFile, stat } from "node:fs/promises";
import { join, relative } from "node:path";
import { fileURLToPath } from "node:url";
import type { ImageToWrite, LayerToWrite } from "../delta/image/types.js";
import { buildTar, type TarWriterEntry, whiteout } from "../delta/tar/writer.js";

export interface SampleImage {
  /** Repository and tag, e.g. `samples/telemetry:1.1`. */
  name: string;
  image: ImageToWrite;
}

export interface SampleSet {
  base: SampleImage;
  runtime: SampleImage;
  telemetryV1: SampleImage;
  telemetryV2: SampleImage;
  dashboard: SampleImage;
}

/** Sizes keep the demo near a minute on a simulated 256 kbit/s link. */
const BASE_BYTES = 3 * 1024 * 1024;
const RUNTIME_BYTES = 2 * 1024 * 1024;
const APP_BYTES = 700 * 1024;
const CREATED = "2026-01-01T00:00:00Z";

const projectRoot = fileURLToPath(new URL("..", import.meta.url));

async function filesUnder(dir: string, accept: (name: string) => boolean, budget: number): Promise<string[]> {
  const picked: string[] = [];
  let total = 0;
  const walk = async (d: string): Promise<void> => {
    let entries: import("node:fs").Dirent[];
    try {
      entries = await readdir(d, { withFileTypes: true });
    } catch {
      return;
    }
    for (const e of entries.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0))) {
      if (total >= budget) return;
      const path = join(d, e.name);
      if (e.isDirectory()) await walk(path);
      else if (e.isFile() && accept(e.name)) {
        const size = (await stat(path)).size;
        if (size === 0 || size > budget / 2 || total + size > budget) continue;
        picked.push(path);
        total += size;
      }
    }
  };
  await walk(dir);
  return picked;
}

async function fileEntries(paths: string[], root: string, prefix: string): Promise<TarWriterEntry[]> {
  const entries: TarWriterEntry[] = [];
  const dirs = new Set<string>();
  for (const path of paths) {
    const inImage = `${prefix}${relative(root, path)}`;
    const parts = inImage.split("/");
    for (let i = 1; i < parts.length; i++) {
      const dir = `${parts.slice(0, i).join("/")}/`;
      if (!dirs.has(dir)) {
        dirs.add(dir);
        entries.push({ path: dir, type: "directory" });
      }
    }
    const mode = (await stat(path)).mode & 0o777;
    entries.push({ path: inImage, type: "file", content: await readFile(path), mode });
  }
  return entries;
}

async function layer(entries: TarWriterEntry[]): Promise<LayerToWrite> {
  const tar = await buildTar(entries);
  const diffId = `sha256:${createHash("sha256").update(tar).digest("hex")}`;
  return {
    diffId,
    size: tar.length,
    async open() {
      return (async function* () {
        yield tar;
      })();
    },
  };
}

function image(repository: string, tag: string, layers: LayerToWrite[], cmd: string[]): SampleImage {
  const config = {
    architecture: "amd64",
    os: "linux",
    created: CREATED,
    config: {
      Env: ["PATH=/usr/local/bin:/usr/bin:/bin"],
      Cmd: cmd,
      Labels: { "org.deltaship.sample": "true" },
    },
    rootfs: { type: "layers", diff_ids: layers.map((l) => l.diffId) },
    history: layers.map((_, i) => ({ created: CREATED, created_by: `deltaship sample layer ${i + 1}` })),
  };
  return {
    name: `${repository}:${tag}`,
    image: { repository, tag, config: new TextEncoder().encode(JSON.stringify(config)), layers },
  };
}

/** Edits an application the way a release does: a version bump, one file changed, one added, one removed. */
function update(entries: TarWriterEntry[]): TarWriterEntry[] {
  const files = entries.filter((e) => e.type === "file");
  const removed = files[files.length - 1]?.path;
  const out: TarWriterEntry[] = [];
  for (const e of entries) {
    if (e.path === removed) continue;
    if (e === files[0] && e.content !== undefined) {
      const text = new TextDecoder().decode(e.content);
      out.push({ ...e, content: new TextEncoder().encode(`// telemetry 1.1: batch uploads\n${text}`) });
    } else {
      out.push(e);
    }
  }
  out.push({
    path: "app/RELEASE",
    type: "file",
    content: new TextEncoder().encode("telemetry 1.1\n- batches uploads over the satellite link\n"),
  });
  if (removed !== undefined) out.push(whiteout(removed));
  return out;
}

export async function buildSampleImages(): Promise<SampleSet> {
  const libs = await filesUnder("/usr/lib/x86_64-linux-gnu", (n) => n.includes(".so"), BASE_BYTES);
  const bins = await filesUnder("/usr/bin", () => true, RUNTIME_BYTES);
  if (libs.length === 0 || bins.length === 0) {
    throw new Error("expected shared libraries under /usr/lib/x86_64-linux-gnu and programs under /usr/bin");
  }
  const js = (n: string) => n.endsWith(".js");
  const telemetryFiles = await filesUnder(
    join(projectRoot, "node_modules/@azure/core-rest-pipeline"),
    js,
    APP_BYTES,
  );
  const dashboardFiles = await filesUnder(join(projectRoot, "node_modules/ajv/dist"), js, APP_BYTES);

  const baseLayer = await layer(await fileEntries(libs, "/", ""));
  const runtimeLayer = await layer(await fileEntries(bins, "/", ""));
  const telemetryEntries = await fileEntries(telemetryFiles, join(projectRoot, "node_modules"), "app/");
  const telemetryV1Layer = await layer(telemetryEntries);
  const telemetryV2Layer = await layer(update(telemetryEntries));
  const dashboardLayer = await layer(
    await fileEntries(dashboardFiles, join(projectRoot, "node_modules"), "app/"),
  );

  return {
    base: image("samples/base", "12", [baseLayer], ["/bin/sh"]),
    runtime: image("samples/runtime", "1", [baseLayer, runtimeLayer], ["/bin/sh"]),
    telemetryV1: image(
      "samples/telemetry",
      "1.0",
      [baseLayer, runtimeLayer, telemetryV1Layer],
      ["app/index.js"],
    ),
    telemetryV2: image(
      "samples/telemetry",
      "1.1",
      [baseLayer, runtimeLayer, telemetryV2Layer],
      ["app/index.js"],
    ),
    dashboard: image("samples/dashboard", "2.0", [baseLayer, runtimeLayer, dashboardLayer], ["app/index.js"]),
  };
}
