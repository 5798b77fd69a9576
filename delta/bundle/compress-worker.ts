/**
 * The worker side of compress-pool.ts: compresses `ref-zstd` literal frames, matches changed
 * binaries approximately and builds plain (`zstd`, `brotli`, with or without `-x86`) payloads, one job at a time, with the same code and parameters as the
 * main thread would use, so the bytes are the same.
 */
import { type MessagePort, parentPort } from "node:worker_threads";
import { compressInThread, matchBinary } from "../refzstd/encoder.js";
import type { WorkerJob, WorkerReply } from "./compress-pool.js";
import { encodePayload } from "./payload.js";

if (parentPort === null)
  throw new Error("compress-worker.ts runs as a worker thread of compress-pool.ts, not on its own");

const port: MessagePort = parentPort;
const compressFrame = compressInThread();

async function run(job: WorkerJob): Promise<WorkerReply> {
  if (job.kind === "frame") {
    const frame = await compressFrame(job.literal, job.dictionary, job.parameters);
    return { id: job.id, ok: true, frame };
  }
  if (job.kind === "match") {
    return { id: job.id, ok: true, pieces: await matchBinary(job.oldBytes, job.newBytes) };
  }
  const { targetPath, out, ...settings } = job;
  const payload = await encodePayload(
    targetPath,
    undefined,
    undefined,
    { ...settings, searchWholeSource: false },
    out,
    (done) => port.postMessage({ id: job.id, progress: done } satisfies WorkerReply),
  );
  return { id: job.id, ok: true, payload };
}

port.on("message", (job: WorkerJob) => {
  run(job).then(
    (reply) => port.postMessage(reply),
    (err: unknown) =>
      port.postMessage({
        id: job.id,
        ok: false,
        error: err instanceof Error ? err.message : String(err),
      } satisfies WorkerReply),
  );
});
