/**
 * Starts a private, in-memory Azurite (Blob, Queue and Table) on free ports of 127.0.0.1 for
 * a test file or for local mode (deltaship demo), and stops it afterwards.
 *
 *   const azurite = await startAzurite();
 *   after(() => azurite.stop());
 *   const tables = TableServiceClient.fromConnectionString(azurite.connectionString,
 *     { allowInsecureConnection: true }); // Tables refuse plain http without this
 *   const blobs = BlobServiceClient.fromConnectionString(azurite.connectionString);
 *
 * Every call starts its own process, so test files never share state.
 */
import { type ChildProcess, spawn } from "node:child_process";
import { existsSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { stopProcess } from "./process.js";

/** Azurite's well-known development account; it accepts nothing else. */
export const AZURITE_ACCOUNT = "devstoreaccount1";
export const AZURITE_KEY =
  "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/** How long Azurite may take to listen before the test gives up (a cold start takes about a second). */
const START_TIMEOUT_MS = 30_000;
/** In-memory extent store cap in MB, so a runaway test cannot take half of a shared machine's memory. */
const EXTENT_MEMORY_LIMIT_MB = 512;

export interface Azurite {
  /** Account connection string with Blob, Queue and Table endpoints. */
  readonly connectionString: string;
  readonly blobEndpoint: string;
  readonly queueEndpoint: string;
  readonly tableEndpoint: string;
  stop(): Promise<void>;
}

const AZURITE_BIN = fileURLToPath(new URL("../../node_modules/.bin/azurite", import.meta.url));

export async function startAzurite(): Promise<Azurite> {
  if (!existsSync(AZURITE_BIN)) {
    throw new Error(`expected Azurite at ${AZURITE_BIN}, found nothing; run npm ci`);
  }
  // Port 0 lets the OS pick free ports; Azurite prints the ones it got.
  const child = spawn(
    AZURITE_BIN,
    [
      "--blobHost=127.0.0.1",
      "--blobPort=0",
      "--queueHost=127.0.0.1",
      "--queuePort=0",
      "--tableHost=127.0.0.1",
      "--tablePort=0",
      "--skipApiVersionCheck",
      "--disableTelemetry",
      "--inMemoryPersistence",
      `--extentMemoryLimit=${EXTENT_MEMORY_LIMIT_MB}`,
      "--silent",
    ],
    { stdio: ["ignore", "pipe", "pipe"] },
  );
  // A test process that crashes must not leave Azurite running on a shared machine.
  const killOnExit = () => child.kill("SIGKILL");
  process.once("exit", killOnExit);
  child.once("exit", () => process.off("exit", killOnExit));
  try {
    const ports = await readPorts(child);
    const endpoint = (port: number) => `http://127.0.0.1:${port}/${AZURITE_ACCOUNT}`;
    const blobEndpoint = endpoint(ports.Blob);
    const queueEndpoint = endpoint(ports.Queue);
    const tableEndpoint = endpoint(ports.Table);
    return {
      connectionString:
        `DefaultEndpointsProtocol=http;AccountName=${AZURITE_ACCOUNT};AccountKey=${AZURITE_KEY};` +
        `BlobEndpoint=${blobEndpoint};QueueEndpoint=${queueEndpoint};TableEndpoint=${tableEndpoint};`,
      blobEndpoint,
      queueEndpoint,
      tableEndpoint,
      stop: () => stopProcess(child),
    };
  } catch (error) {
    await stopProcess(child);
    throw error;
  }
}

function readPorts(child: ChildProcess): Promise<Record<"Blob" | "Queue" | "Table", number>> {
  return new Promise((resolve, reject) => {
    const ports: Partial<Record<"Blob" | "Queue" | "Table", number>> = {};
    let output = "";
    const timer = setTimeout(
      () => fail(`Azurite did not listen within ${START_TIMEOUT_MS} ms; output so far:\n${output}`),
      START_TIMEOUT_MS,
    );
    const fail = (message: string) => {
      clearTimeout(timer);
      reject(new Error(message));
    };
    const onData = (chunk: Buffer) => {
      output += chunk.toString("utf8");
      for (const match of output.matchAll(
        /Azurite (Blob|Queue|Table) service is successfully listening at \S+:(\d+)/g,
      )) {
        ports[match[1] as "Blob" | "Queue" | "Table"] = Number(match[2]);
      }
      if (ports.Blob && ports.Queue && ports.Table) {
        clearTimeout(timer);
        child.stdout?.off("data", onData);
        resolve({ Blob: ports.Blob, Queue: ports.Queue, Table: ports.Table });
      }
    };
    child.stdout?.on("data", onData);
    child.stderr?.on("data", (chunk: Buffer) => {
      output += chunk.toString("utf8");
    });
    child.once("error", (error) => fail(`could not start Azurite (${AZURITE_BIN}): ${error.message}`));
    child.once("exit", (code, signal) =>
      fail(`Azurite exited before listening (code ${code}, signal ${signal}); output:\n${output}`),
    );
  });
}
