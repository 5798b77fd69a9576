/**
 * What the module needs from the image engine (`delta/bundle`, `delta/image`), as one small
 * interface: the module's state machine, inbox and reports are written against it, and
 * `engine-delta.ts` implements it with the real engine and the local registry.
 */

/** Public keys the module trusts, by key id (the form `delta/bundle/sign.ts` reads). */
export type TrustedKeys = Readonly<Record<string, string>>;

/** What the bundle header and manifest say, read before anything is verified. */
export interface BundleHead {
  /** Stable id of the bundle (content-addressed), used for the journal and reports. */
  readonly bundleId: string;
  /** Total file length the header declares; the file is complete when it has exactly this many bytes. */
  readonly declaredLength: number;
  readonly repository: string;
  readonly tag: string;
  /** diff_ids of the layers the device must hold. */
  readonly sourceLayers: readonly string[];
  /** Bytes of the rebuilt image: every target layer (uncompressed) plus the config. */
  readonly outputBytes: number;
  /** Bytes the engine may write to scratch besides the output (inflated source layers). */
  readonly scratchBytes: number;
}

export interface AppliedImage {
  /** Where the engine left the verified image, for `push`. */
  readonly scratchDir: string;
  readonly bytesWritten: number;
}

export interface EdgeEngine {
  /**
   * Reads the header and manifest. `undefined` while the file is still too short to hold them;
   * throws a clear error when the file is not a bundle at all.
   */
  readHead(path: string): Promise<BundleHead | undefined>;
  /** Throws unless the manifest's Ed25519 signature verifies against one of `trust`. */
  verifySignature(path: string, trust: TrustedKeys): Promise<void>;
  /** The source layers (diff_ids) of `head` that the local registry does not hold. */
  missingSourceLayers(head: BundleHead): Promise<string[]>;
  /** Rebuilds the image into `scratchDir`, verifying every layer and the config. */
  apply(path: string, trust: TrustedKeys, scratchDir: string): Promise<AppliedImage>;
  /** Pushes the verified blobs, then the manifest under `repository:tag`; returns the manifest digest. */
  push(head: BundleHead, applied: AppliedImage): Promise<string>;
  /** Manifest digest under `repository:tag` in the local registry, if any. */
  digestOf(repository: string, tag: string): Promise<string | undefined>;
  /** Every tagged image in the local registry. */
  inventory(): Promise<{ image: string; digest: string }[]>;
}
