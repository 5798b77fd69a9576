/**
 * A small pool of worker threads for the cloud side's heavy work: zstd-napi compresses
 * synchronously, so without workers a diff uses one core. `ref-zstd` literal frames (each
 * against its own reference), approximate matching of changed binaries and plain layer payloads
 * are independent jobs; the pool runs them first come, first served, and each answer is exactly
 * what the main thread would have made. The main thread meanwhile reads and plans.
 */
import { availableParallelism } from "node:os";
import { Worker } from "node:worker_threads";
import type { FilterRange } from "../filters/payload.js";
import type { RefinedPiece } from "../refzstd/approx.js";
import type { CompressFrame, FrameParameters, MatchBinary } from "../refzstd/encoder.js";
import type { PlainCompressor } from "./format.js";

/** Workers per pool: the benchmark machine has 2 cores, and every worker holds its own zstd tables (up to ~800 MB at level 22). */
export const MAX_COMPRESS_WORKERS = 2;

/** How many workers a pool gets here: one per core, at most MAX_COMPRESS_WORKERS. */
export function compressWorkerCount(): number {
  return Math.min(MAX_COMPRESS_WORKERS, Math.max(1, availableParallelism()));
}

export type WorkerJob =
  | {
      readonly id: number;
      readonly kind: "frame";
      readonly literal: Uint8Array;
      readonly dictionary: Uint8Array;
      readonly parameters: FrameParameters;
    }
  | {
      readonly id: number;
      readonly kind: "match";
      readonly oldBytes: Uint8Array;
      readonly newBytes: Uint8Array;
    }
  | ({ readonly id: number; readonly kind: "payload" } & PlainPayloadJob);

export type WorkerReply =
  | { readonly id: number; readonly ok: true; readonly frame: Uint8Array }
  | { readonly id: number; readonly ok: true; readonly pieces: RefinedPiece[] }
  | { readonly id: number; readonly ok: true; readonly payload: PlainPayloadResult }
  | { readonly id: number; readonly ok: false; readonly error: string }
  | { readonly id: number; readonly progress: number };

/** A plain payload job: the layer tar at `targetPath`, compressed whole into `out`. */
export interface PlainPayloadJob {
  readonly targetPath: string;
  readonly out: string;
  readonly level: number;
  readonly windowLog: number;
  readonly x86?: readonly FilterRange[];
  /** Gzip files that may go as their text (PayloadSettings.gzip). */
  readonly gzip?: readonly FilterRange[];
  readonly scratchDir?: string;
  readonly compressor: PlainCompressor;
  /** Repeats beyond the compressor's window as far copies (PayloadSettings.farCopies). */
  readonly farCopies?: boolean;
}

export interface PlainPayloadResult {
  readonly length: number;
  readonly sha256: string;
  /** Gzip files sent as their text. */
  readonly gzipPieces: number;
  /** Far copies in its table. */
  readonly farCopies: number;
}

interface Pending {
  readonly job: WorkerJob;
  readonly transfer: ArrayBuffer[];
  readonly resolve: (reply: WorkerReply) => void;
  readonly reject: (err: Error) => void;
  readonly onProgress?: (done: number) => void;
}

interface Slot {
  readonly worker: Worker;
  busy: Pending | undefined;
}

/**
 * The worker module beside this one, with this module's extension: `.js` when compiled, `.ts`
 * under tsx. Worker threads do not inherit tsx's loader, so a `.ts` worker registers it first.
 */
function startWorker(): Worker {
  const here = import.meta.url;
  const extension = here.slice(here.lastIndexOf("."));
  const url = new URL(`./compress-worker${extension}`, here);
  if (extension !== ".ts") return new Worker(url);
  const tsx = import.meta.resolve("tsx/esm/api");
  return new Worker(
    `import(${JSON.stringify(tsx)}).then((tsx) => { tsx.register(); return import(${JSON.stringify(url.href)}); });`,
    { eval: true },
  );
}

/** Buffers that can move to a worker without a copy: views of a whole ArrayBuffer. */
function transferable(...views: Uint8Array[]): ArrayBuffer[] {
  const buffers: ArrayBuffer[] = [];
  for (const v of views) {
    if (v.buffer instanceof ArrayBuffer && v.byteOffset === 0 && v.byteLength === v.buffer.byteLength)
      if (!buffers.includes(v.buffer)) buffers.push(v.buffer);
  }
  return buffers;
}

export class CompressPool {
  private readonly slots: Slot[] = [];
  private readonly queue: Pending[] = [];
  private nextId = 1;
  private closed = false;

  constructor(readonly size = compressWorkerCount()) {
    if (!Number.isInteger(size) || size < 1)
      throw new RangeError(`a compress pool needs 1 or more workers, got ${size}`);
  }

  /** A `CompressFrame` for encodeRefZstd: the literal and dictionary buffers move to the worker. */
  readonly compressFrame: CompressFrame = async (literal, dictionary, parameters) => {
    const reply = await this.submit(
      { id: this.nextId++, kind: "frame", literal, dictionary, parameters },
      transferable(literal, dictionary),
    );
    if (!("frame" in reply)) throw new Error("compress worker answered a frame job without a frame");
    return reply.frame;
  };

  /** A `MatchBinary` for encodeRefZstd: approximate matching of a changed executable in a worker (both files move there). */
  readonly matchBinary: MatchBinary = async (oldBytes, newBytes) => {
    const reply = await this.submit(
      { id: this.nextId++, kind: "match", oldBytes, newBytes },
      transferable(oldBytes, newBytes),
    );
    if (!("pieces" in reply)) throw new Error("compress worker answered a match job without pieces");
    return reply.pieces;
  };

  /** Builds a plain (`zstd`, `brotli`, with or without `-x86`) payload in a worker; `onBytes` sees how much of the tar was read. */
  async encodePlainPayload(
    job: PlainPayloadJob,
    onBytes?: (done: number) => void,
  ): Promise<PlainPayloadResult> {
    const reply = await this.submit({ id: this.nextId++, kind: "payload", ...job }, [], onBytes);
    if (!("payload" in reply)) throw new Error("compress worker answered a payload job without a payload");
    return reply.payload;
  }

  /** Stops every worker; jobs still queued or running fail. The process can exit afterwards. */
  async close(): Promise<void> {
    this.closed = true;
    const closed = (pending: Pending) =>
      pending.reject(new Error(`the compress pool was closed before a ${pending.job.kind} job finished`));
    for (const pending of this.queue.splice(0)) closed(pending);
    const slots = this.slots.splice(0);
    for (const slot of slots) {
      if (slot.busy !== undefined) closed(slot.busy);
      slot.busy = undefined;
    }
    await Promise.all(slots.map((slot) => slot.worker.terminate()));
  }

  private submit(job: WorkerJob, transfer: ArrayBuffer[], onProgress?: (done: number) => void) {
    if (this.closed) return Promise.reject(new Error("the compress pool is closed"));
    return new Promise<WorkerReply>((resolve, reject) => {
      this.queue.push({ job, transfer, resolve, reject, ...(onProgress ? { onProgress } : {}) });
      this.dispatch();
    });
  }

  private dispatch(): void {
    while (this.queue.length > 0) {
      let slot = this.slots.find((s) => s.busy === undefined);
      if (slot === undefined && this.slots.length < this.size) slot = this.spawn();
      if (slot === undefined) return;
      const pending = this.queue.shift()!;
      slot.busy = pending;
      slot.worker.ref();
      slot.worker.postMessage(pending.job, pending.transfer);
    }
  }

  private spawn(): Slot {
    const slot: Slot = { worker: startWorker(), busy: undefined };
    this.slots.push(slot);
    slot.worker.unref();
    slot.worker.on("message", (reply: WorkerReply) => {
      const pending = slot.busy;
      if (pending === undefined || pending.job.id !== reply.id) return;
      if ("progress" in reply) {
        pending.onProgress?.(reply.progress);
        return;
      }
      slot.busy = undefined;
      slot.worker.unref();
      if (reply.ok) pending.resolve(reply);
      else pending.reject(new Error(`compress worker failed on a ${pending.job.kind} job: ${reply.error}`));
      this.dispatch();
    });
    // A worker that dies takes its job with it; the next job gets a fresh worker.
    const fail = (err: Error) => {
      const index = this.slots.indexOf(slot);
      if (index < 0) return;
      this.slots.splice(index, 1);
      const pending = slot.busy;
      slot.busy = undefined;
      pending?.reject(
        new Error(
          `compress worker stopped during a ${pending.job.kind} job: ${err.message}; the diff cannot continue`,
        ),
      );
      if (!this.closed) this.dispatch();
    };
    slot.worker.on("error", fail);
    slot.worker.on("messageerror", fail);
    slot.worker.on("exit", (code) => fail(new Error(`exited with code ${code}`)));
    return slot;
  }
}
