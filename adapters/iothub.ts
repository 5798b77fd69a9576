// IoT Hub service calls Deltaship makes: push a deployment manifest to one device, and turn a
// twin query into device ids. Both go through azure-iothub's Registry (HTTPS REST).

import iothub from "azure-iothub";

const { Registry } = iothub;
type RegistryClient = InstanceType<typeof Registry>;

/** Twin query page size; IoT Hub's maximum is 10,000 and smaller pages keep each response small. */
const TWIN_QUERY_PAGE_SIZE = 1000;
/** Pages a twin query may take before we stop: a guard against a service that keeps handing out continuations. */
const MAX_TWIN_QUERY_PAGES = 1000;

export interface IotHubAdapter {
  /** Applies `modulesContent` (an IoT Edge deployment's `$edgeAgent`, `$edgeHub`, … desired properties) to one device. */
  pushManifest(deviceId: string, modulesContent: Record<string, unknown>): Promise<void>;
  /**
   * Device ids whose twin matches `condition` (the part after WHERE, e.g. `tags.fleet='atlantic'`),
   * sorted. Throws when more than `limit` devices match.
   */
  queryDevices(condition: string, limit: number): Promise<string[]>;
}

export class IotHubError extends Error {
  constructor(
    message: string,
    readonly statusCode: number | undefined,
  ) {
    super(message);
    this.name = "IotHubError";
  }
}

/** A twin query matched more devices than the caller allows: a request problem, not a service one. */
export class TooManyDevicesError extends IotHubError {
  override name = "TooManyDevicesError";
}

/** An adapter over a Registry built from the IoT Hub service connection string (IOTHUB_CONNECTION_STRING). */
export function createIotHubAdapter(connectionString: string): IotHubAdapter {
  return iotHubAdapterFor(Registry.fromConnectionString(connectionString));
}

export function iotHubAdapterFor(registry: RegistryClient): IotHubAdapter {
  return {
    async pushManifest(deviceId, modulesContent) {
      try {
        await registry.applyConfigurationContentOnDevice(deviceId, { modulesContent });
      } catch (error) {
        throw describe(error, `pushing the deployment manifest to device ${deviceId}`);
      }
    },

    async queryDevices(condition, limit) {
      const query = registry.createQuery(
        `SELECT deviceId FROM devices WHERE ${condition}`,
        TWIN_QUERY_PAGE_SIZE,
      );
      const ids = new Set<string>();
      for (let page = 0; query.hasMoreResults; page++) {
        if (page === MAX_TWIN_QUERY_PAGES) {
          throw new IotHubError(
            `twin query "${condition}" still had results after ${MAX_TWIN_QUERY_PAGES} pages; narrow the query`,
            undefined,
          );
        }
        let rows: unknown;
        try {
          // Pass the token explicitly: next() without one starts the query over (azure-iothub 1.16).
          rows = (query.continuationToken ? await query.next(query.continuationToken) : await query.next())
            .result;
        } catch (error) {
          throw describe(error, `running the twin query "${condition}"`);
        }
        for (const row of Array.isArray(rows) ? rows : []) {
          const id = (row as { deviceId?: unknown }).deviceId;
          if (typeof id === "string") ids.add(id);
        }
        if (ids.size > limit) {
          throw new TooManyDevicesError(
            `twin query "${condition}" matches more than ${limit} devices; split the deployment or narrow the query`,
            undefined,
          );
        }
      }
      return [...ids].sort();
    },
  };
}

function describe(error: unknown, doing: string): IotHubError {
  const e = error as { message?: string; response?: { statusCode?: number }; responseBody?: unknown };
  const status = e.response?.statusCode;
  const body = typeof e.responseBody === "string" ? e.responseBody : JSON.stringify(e.responseBody ?? "");
  const hint =
    status === 401
      ? "check IOTHUB_CONNECTION_STRING (policy name and key, registry write rights)"
      : status === 404
        ? "check that the device is registered in this IoT hub"
        : status === 400
          ? "check the request (twin query syntax, manifest shape)"
          : "IoT Hub may be throttling or unavailable; retry later";
  return new IotHubError(
    `IoT Hub failed ${doing}: ${status ?? "no response"} ${e.message ?? String(error)} ${body}; ${hint}`,
    status,
  );
}
