// The query API for dashboards: JSON, paged with a continuation token, one Table Storage
// partition per request wherever the key design allows.

import type { HttpRequest, HttpResponseInit } from "@azure/functions";
import type { DurableClient } from "durable-functions";
import { MAX_QUERY_PAGE_SIZE } from "../../config/settings.js";
import type { StateStore } from "../../state/store.js";
import type { Page, PageRequest } from "../../state/tables.js";
import type { TransferRow } from "../../state/transfers.js";
import { DEVICE_ID_PATTERN, SET_ID_PATTERN } from "../deployments/request.js";
import { statusOrUndefined } from "../deployments/start.js";

/** Longest continuation token accepted; Table Storage tokens are a few hundred characters. */
export const MAX_CONTINUATION_TOKEN_LENGTH = 4096;
/** Widest transfers range in one request: a quarter of daily partitions. */
export const MAX_TRANSFER_RANGE_MS = 92 * 24 * 3600 * 1000;
/** Rows a series may aggregate; more means the range is too wide for one answer, so ask for less. */
export const MAX_SERIES_ROWS = 100_000;

export interface QueryDeps {
  state: Pick<StateStore, "sets" | "deviceImages" | "transfers">;
  /** Rows per page when the request names no pageSize (QUERY_PAGE_SIZE). */
  defaultPageSize: number;
  /** The set's orchestration status from the Durable client; undefined when no such instance. */
  orchestrationStatus?(setId: string): Promise<OrchestrationProgress | undefined>;
}

/** What the orchestration itself says: its runtime status and custom status (counts, latest changes). */
export interface OrchestrationProgress {
  runtimeStatus: string;
  customStatus: unknown;
}

/** QueryDeps.orchestrationStatus over a Durable client. */
export function orchestrationStatusFrom(
  client: Pick<DurableClient, "getStatus">,
): (setId: string) => Promise<OrchestrationProgress | undefined> {
  return async (setId) => {
    const status = await statusOrUndefined(client, setId);
    if (status === undefined) return undefined;
    return { runtimeStatus: String(status.runtimeStatus), customStatus: status.customStatus ?? null };
  };
}

class QueryError extends Error {
  constructor(
    readonly status: number,
    readonly field: string,
    message: string,
  ) {
    super(message);
  }
}

const DIGEST = /^sha256:[0-9a-f]{64}$/;
const SET_ID = new RegExp(SET_ID_PATTERN);
const DEVICE_ID = new RegExp(DEVICE_ID_PATTERN);
const TIMESTAMP = /^\d{4}-\d{2}-\d{2}(?:T\d{2}:\d{2}(?::\d{2}(?:\.\d{1,9})?)?(?:Z|[+-]\d{2}:\d{2}))?$/;

/**
 * GET /api/deployments/{id}: the set's summary, the orchestration's own status (counts per
 * state, latest changes) and a page of its items (one per device and image).
 */
export function getDeployment(request: HttpRequest, deps: QueryDeps): Promise<HttpResponseInit> {
  return answer(async () => {
    const setId = request.params.id ?? "";
    if (!SET_ID.test(setId)) {
      throw new QueryError(
        400,
        "id",
        `id must be a deployment set id (letters, digits, '.', '_', '-'), found ${JSON.stringify(setId.slice(0, 80))}`,
      );
    }
    const paging = pageRequest(request, deps);
    const [set, progress] = await Promise.all([
      deps.state.sets.getSet(setId),
      deps.orchestrationStatus?.(setId),
    ]);
    const orchestration = progress === undefined ? {} : { orchestration: progress };
    if (set === undefined) {
      // The set row is written once its bundles are placed; before that only the orchestration knows it.
      if (progress !== undefined) return { set: null, ...orchestration, items: [] };
      throw new QueryError(404, "id", `no deployment set ${JSON.stringify(setId)}`);
    }
    const items = await deps.state.sets.listItems(setId, paging);
    const { images, ...summary } = set;
    return { set: { ...summary, images: imagesOf(images) }, ...orchestration, ...pageBody(items) };
  });
}

/** GET /api/deployments?requestedBy=<email>: the sets one person asked for. */
export function listDeployments(request: HttpRequest, deps: QueryDeps): Promise<HttpResponseInit> {
  return answer(async () => {
    const email = request.query.get("requestedBy") ?? "";
    if (email === "") {
      throw new QueryError(400, "requestedBy", "requestedBy is required: the requester's email address");
    }
    const page = await deps.state.sets.listByRequester(email, pageRequest(request, deps));
    return pageBody({
      ...page,
      items: page.items.map(({ images, ...set }) => ({ ...set, images: imagesOf(images) })),
    });
  });
}

/** GET /api/devices/{id}/images: what one device holds, has in transit, or failed to rebuild. */
export function getDeviceImages(request: HttpRequest, deps: QueryDeps): Promise<HttpResponseInit> {
  return answer(async () => {
    const device = request.params.id ?? "";
    if (!DEVICE_ID.test(device)) {
      throw new QueryError(
        400,
        "id",
        `id must be an IoT Hub device id (1-128 characters), found ${JSON.stringify(device.slice(0, 80))}`,
      );
    }
    return pageBody(await deps.state.deviceImages.listByDevice(device, pageRequest(request, deps)));
  });
}

/** GET /api/images/{digest}/devices: which devices hold (or await) one image. */
export function getImageDevices(request: HttpRequest, deps: QueryDeps): Promise<HttpResponseInit> {
  return answer(async () => {
    const digest = request.params.digest ?? "";
    if (!DIGEST.test(digest)) {
      throw new QueryError(
        400,
        "digest",
        `digest must be sha256:<64 lowercase hex>, found ${JSON.stringify(digest)}`,
      );
    }
    return pageBody(await deps.state.deviceImages.listByImage(digest, pageRequest(request, deps)));
  });
}

/**
 * GET /api/transfers?from=&to=[&interval=hour|day]: transfers with from ≤ time < to, oldest first,
 * paged; with `interval`, the time series instead: per bucket, arrivals, failures and bytes.
 */
export function getTransfers(request: HttpRequest, deps: QueryDeps): Promise<HttpResponseInit> {
  return answer(async () => {
    const from = timestamp(request, "from");
    const to = timestamp(request, "to");
    if (Date.parse(to) <= Date.parse(from))
      throw new QueryError(400, "to", `to (${to}) must be after from (${from})`);
    if (Date.parse(to) - Date.parse(from) > MAX_TRANSFER_RANGE_MS) {
      throw new QueryError(
        400,
        "to",
        `from and to may be at most ${MAX_TRANSFER_RANGE_MS / 86_400_000} days apart`,
      );
    }
    const interval = request.query.get("interval");
    if (interval === null)
      return pageBody(await deps.state.transfers.list(from, to, pageRequest(request, deps)));
    if (interval !== "hour" && interval !== "day") {
      throw new QueryError(
        400,
        "interval",
        `interval must be hour or day, found ${JSON.stringify(interval)}`,
      );
    }
    return { from, to, interval, series: await series(deps, from, to, interval) };
  });
}

interface Bucket {
  start: string;
  arrived: number;
  failed: number;
  bytes: number;
}

async function series(
  deps: QueryDeps,
  from: string,
  to: string,
  interval: "hour" | "day",
): Promise<Bucket[]> {
  const buckets = new Map<string, Bucket>();
  const width = interval === "hour" ? 13 : 10; // ISO prefix: YYYY-MM-DDTHH or YYYY-MM-DD
  let rows = 0;
  let continuationToken: string | undefined;
  do {
    const page: Page<TransferRow> = await deps.state.transfers.list(from, to, {
      pageSize: MAX_QUERY_PAGE_SIZE,
      continuationToken,
    });
    rows += page.items.length;
    if (rows > MAX_SERIES_ROWS) {
      throw new QueryError(
        400,
        "from",
        `over ${MAX_SERIES_ROWS} transfers between from and to; ask for a shorter range`,
      );
    }
    for (const row of page.items) {
      const key = row.at.slice(0, width);
      let bucket = buckets.get(key);
      if (bucket === undefined) {
        bucket = {
          start: interval === "hour" ? `${key}:00:00.000Z` : `${key}T00:00:00.000Z`,
          arrived: 0,
          failed: 0,
          bytes: 0,
        };
        buckets.set(key, bucket);
      }
      if (row.outcome === "arrived") bucket.arrived++;
      else bucket.failed++;
      bucket.bytes += row.bytes;
    }
    continuationToken = page.continuationToken;
  } while (continuationToken !== undefined);
  return [...buckets.values()].sort((a, b) => (a.start < b.start ? -1 : 1));
}

function timestamp(request: HttpRequest, name: "from" | "to"): string {
  const text = request.query.get(name) ?? "";
  if (!TIMESTAMP.test(text) || Number.isNaN(Date.parse(text))) {
    throw new QueryError(
      400,
      name,
      `${name} must be an ISO 8601 date or time with a time zone (2026-11-28 or 2026-11-28T10:00:00Z), found ${JSON.stringify(text)}`,
    );
  }
  return new Date(text).toISOString();
}

function pageRequest(request: HttpRequest, deps: QueryDeps): PageRequest {
  const sizeText = request.query.get("pageSize");
  const pageSize = sizeText === null ? deps.defaultPageSize : Number(sizeText);
  if (!/^\d+$/.test(sizeText ?? "1") || pageSize < 1 || pageSize > MAX_QUERY_PAGE_SIZE) {
    throw new QueryError(
      400,
      "pageSize",
      `pageSize must be a whole number from 1 to ${MAX_QUERY_PAGE_SIZE}, found ${JSON.stringify(sizeText)}`,
    );
  }
  const continuationToken = request.query.get("continuationToken") ?? undefined;
  if (continuationToken !== undefined && continuationToken.length > MAX_CONTINUATION_TOKEN_LENGTH) {
    throw new QueryError(
      400,
      "continuationToken",
      "continuationToken is too long; pass back the token a previous page gave",
    );
  }
  return { pageSize, ...(continuationToken === undefined ? {} : { continuationToken }) };
}

/** A set row keeps its images as JSON text; a row we cannot read shows none rather than failing the page. */
function imagesOf(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return [];
  }
}

function pageBody<T>(page: Page<T>): { items: T[]; continuationToken?: string } {
  return page.continuationToken === undefined
    ? { items: page.items }
    : { items: page.items, continuationToken: page.continuationToken };
}

async function answer(produce: () => Promise<unknown>): Promise<HttpResponseInit> {
  try {
    return { status: 200, jsonBody: await produce() };
  } catch (error) {
    if (error instanceof QueryError) {
      return { status: error.status, jsonBody: { error: { field: error.field, message: error.message } } };
    }
    // A token we did not issue fails to decode in the SDK (SyntaxError) or is refused by storage (400).
    if (error instanceof SyntaxError || (error as { statusCode?: number }).statusCode === 400) {
      return {
        status: 400,
        jsonBody: {
          error: {
            field: "continuationToken",
            message: `continuationToken is not one this API issued; pass back a previous page's token (${(error as Error).message.split("\n")[0]})`,
          },
        },
      };
    }
    throw error;
  }
}
