/**
 * What the module needs from the image engine (`delta/bundle`, `delta/image`), as one small
 * interface: the module's state machine, inbox and reports are written against it, and
 * `engine-delta.ts` implements it with the real engine and the local registry.
 */

/** Public keys the module trusts, by key id (the form `delta/bundle/sign.ts` reads). */
export type TrustedKeys = Readonly<Record<string, string>>;

/** What the bundle header and manifest say, read before anything is verified. */
export interface BundleHead {
  /**
   * `sha256:…` of the signed manifest bytes: the same bundle has the same id whatever its file
   * name, which is what the journal is keyed by (a second delivery is recognised by it).
   */
  readonly bundleId: string;
  /** Total file length the header declares. */
  readonly declaredLength: number;
  readonly repository: string;
  readonly tag: string;
  /**
   * Manifest digest of the image in the cloud's registry (ACR), from the signed manifest: the
   * identity the cloud tracks the image by. The rebuilt image gets another manifest digest in the
   * local registry (its layers are stored uncompressed), so reports name this one.
   */
  readonly sourceDigest: string;
  /** diff_ids of the layers the device must hold. */
  readonly sourceLayers: readonly string[];
  /** Bytes of the rebuilt image: every target layer (uncompressed) plus the config. */
  readonly outputBytes: number;
  /** Bytes the engine may write to scratch besides the output (inflated source layers). */
  readonly scratchBytes: number;
}

export interface RebuiltImage {
  /** Manifest digest now under `repository:tag` in the local registry. */
  readonly digest: string;
  /** Bytes of image written (layers plus config). */
  readonly bytesWritten: number;
}

export interface EdgeEngine {
  /**
   * The total length the header declares; `undefined` while the file is shorter than the
   * header. Throws a clear error when the file is not a bundle at all.
   */
  declaredLength(path: string): Promise<number | undefined>;
  /** Reads the header and manifest of a complete file (nothing is verified yet). */
  readHead(path: string): Promise<BundleHead>;
  /** True while a full-length file still has unwritten holes in its payloads. */
  hasUnfilledBlock(path: string): Promise<boolean>;
  /** Throws unless the manifest's Ed25519 signature verifies against one of `trust`. */
  verifySignature(path: string, trust: TrustedKeys): Promise<void>;
  /** The source layers (diff_ids) of `head` that the local registry does not hold. */
  missingSourceLayers(head: BundleHead): Promise<string[]>;
  /**
   * Rebuilds the image (scratch files under `scratchDir`, memory bounded by the engine's window),
   * verifies every layer and the config, then pushes the blobs and, last, the manifest under
   * `repository:tag`. `beforePush` runs once everything is verified and nothing is pushed yet.
   */
  rebuild(
    path: string,
    trust: TrustedKeys,
    scratchDir: string,
    beforePush: () => void,
  ): Promise<RebuiltImage>;
  /** Manifest digest under `repository:tag` in the local registry, if any. */
  digestOf(repository: string, tag: string): Promise<string | undefined>;
  /** Every tagged image in the local registry. */
  inventory(): Promise<{ image: string; digest: string }[]>;
}
