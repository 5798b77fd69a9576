/**
 * One entry point for every image location the command line accepts: a docker-archive file, an
 * OCI layout folder (each optionally followed by `:tag`, or written with skopeo's
 * `docker-archive:` / `oci:` prefixes), or a registry reference.
 */
import { stat } from "node:fs/promises";
import { join } from "node:path";
import { openDockerArchive, writeDockerArchive } from "./docker-archive.js";
import { type Platform, parsePlatform, splitImageName } from "./oci.js";
import { OCI_LAYOUT_FILE, openOciLayout, writeOciLayout } from "./oci-layout.js";
import type { RegistryOptions } from "./registry.js";
import type { ImageReader, ImageToWrite } from "./types.js";

export interface OpenImageOptions {
  /** `os/arch[/variant]` or a Platform, for indexes; default linux/amd64. */
  readonly platform?: Platform | string;
  /** Passed through to the registry client (credentials, plain HTTP for a local registry, …). */
  readonly registry?: RegistryOptions;
}

export type ImageLocation =
  | { readonly kind: "docker-archive"; readonly path: string; readonly name?: string }
  | { readonly kind: "oci"; readonly path: string; readonly name?: string }
  | { readonly kind: "registry"; readonly reference: string };

async function kindOf(path: string): Promise<"file" | "oci" | "dir" | undefined> {
  const info = await stat(path).catch(() => undefined);
  if (info === undefined) return undefined;
  if (info.isFile()) return "file";
  if (!info.isDirectory()) return undefined;
  return (await stat(join(path, OCI_LAYOUT_FILE)).catch(() => undefined))?.isFile() ? "oci" : "dir";
}

/** `path[:name]`: the whole string when it exists, else the shortest existing prefix before a colon. */
async function splitPathAndName(text: string): Promise<{ path: string; name?: string; kind?: string }> {
  const whole = await kindOf(text);
  if (whole !== undefined) return { path: text, kind: whole };
  for (let i = text.indexOf(":"); i > 0; i = text.indexOf(":", i + 1)) {
    const kind = await kindOf(text.slice(0, i));
    if (kind !== undefined) return { path: text.slice(0, i), name: text.slice(i + 1), kind };
  }
  return { path: text };
}

function withName<T extends object>(base: T, name: string | undefined): T & { name?: string } {
  return name ? { ...base, name } : base;
}

/** Decides what a reference names, looking at the file system; does not open anything. */
export async function locateImage(ref: string): Promise<ImageLocation> {
  if (ref.startsWith("docker-archive:")) {
    const rest = ref.slice("docker-archive:".length);
    const { path, name } = await splitPathAndName(rest);
    return withName({ kind: "docker-archive" as const, path }, name);
  }
  if (ref.startsWith("oci:")) {
    const { path, name } = await splitPathAndName(ref.slice("oci:".length));
    return withName({ kind: "oci" as const, path }, name);
  }
  if (ref.startsWith("docker://")) return { kind: "registry", reference: ref.slice("docker://".length) };
  const { path, name, kind } = await splitPathAndName(ref);
  if (kind === "file") return withName({ kind: "docker-archive" as const, path }, name);
  if (kind === "oci") return withName({ kind: "oci" as const, path }, name);
  if (kind === "dir") {
    throw new Error(
      `${path} is a directory without an ${OCI_LAYOUT_FILE} file, so it is not an OCI image layout`,
    );
  }
  // Registry references never start like a path; such a ref is a file that is missing.
  if (/^\.{0,2}\//.test(ref) || /\.tar(\.gz)?$/.test(path)) {
    throw new Error(`${path} does not exist; give an existing docker-archive file or OCI layout folder`);
  }
  return { kind: "registry", reference: ref };
}

/**
 * Opens an image for reading: `image.tar`, `image.tar:apps/x:1.2`, `layout-dir`, `layout-dir:1.2`,
 * `docker-archive:…`, `oci:…`, or a registry reference such as `localhost:5000/apps/x:1.2`.
 */
export async function openImage(ref: string, options: OpenImageOptions = {}): Promise<ImageReader> {
  const location = await locateImage(ref);
  const platform = typeof options.platform === "string" ? parsePlatform(options.platform) : options.platform;
  const common = platform ? { platform } : {};
  switch (location.kind) {
    case "docker-archive":
      return openDockerArchive(location.path, {
        ...common,
        ...(location.name ? { tag: location.name } : {}),
      });
    case "oci":
      return openOciLayout(location.path, { ...common, ...(location.name ? { tag: location.name } : {}) });
    case "registry": {
      // Loaded on demand: local files never pay for the HTTP client.
      const { openRegistryImage } = await import("./registry.js");
      return openRegistryImage(location.reference, { ...options.registry, ...common });
    }
  }
}

export interface WriteImageOptions {
  /** For OCI layouts: store layers gzip-compressed instead of as plain tars. */
  readonly compression?: "none" | "gzip";
}

export interface WrittenImage {
  readonly kind: "docker-archive" | "oci";
  readonly path: string;
  readonly manifestDigest: string;
}

/** What writeImage would write at `dest`: an OCI layout or a docker-archive file. */
export async function writeDestinationKind(dest: string): Promise<"docker-archive" | "oci"> {
  if (dest.startsWith("oci:")) return "oci";
  if (dest.startsWith("docker-archive:")) return "docker-archive";
  const found = await splitPathAndName(dest);
  return found.kind === "oci" || found.kind === "dir" || dest.endsWith("/") ? "oci" : "docker-archive";
}

/**
 * Writes an image to a docker-archive file or an OCI layout: `oci:dir[:tag]`, an existing layout
 * folder or a path ending in `/` → OCI layout; `docker-archive:file[:repo:tag]` or any other path →
 * docker-archive. A name after the path overrides the image's repository and tag. Registry pushes
 * are `pushImage` in registry.ts.
 */
export async function writeImage(
  dest: string,
  image: ImageToWrite,
  options: WriteImageOptions = {},
): Promise<WrittenImage> {
  const kind = await writeDestinationKind(dest);
  const rest = dest.startsWith("oci:")
    ? dest.slice(4)
    : dest.startsWith("docker-archive:")
      ? dest.slice("docker-archive:".length)
      : dest;
  // A colon after an existing path, or after a path whose parent exists, separates the name.
  const split = await splitPathAndName(rest);
  let path = split.path;
  let name = split.name;
  if (split.kind === undefined) {
    const colon = rest.indexOf(":");
    if (colon > 0) {
      path = rest.slice(0, colon);
      name = rest.slice(colon + 1);
    }
  }
  if (kind === "oci") {
    const written = await writeOciLayout(path, image, {
      ...(name ? { tag: name } : {}),
      ...(options.compression ? { compression: options.compression } : {}),
    });
    return { kind, path, manifestDigest: written.digest };
  }
  const named = name ? { ...image, ...splitImageName(name) } : image;
  const written = await writeDockerArchive(path, named);
  return { kind, path, manifestDigest: written.manifestDigest };
}
