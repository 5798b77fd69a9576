/**
 * Table Storage keys. PartitionKey and RowKey may not contain `/ \ # ?` or control
 * characters, and IoT Hub device ids may contain `?` and `%`, so every key part is escaped
 * reversibly: `%` and the forbidden characters become `%XX`.
 */

/** Table Storage rejects keys over 1 KiB; a longer id is a caller bug or hostile input. */
export const MAX_KEY_LENGTH = 1024;

// biome-ignore lint/suspicious/noControlCharactersInRegex: Table Storage forbids control characters in keys
const FORBIDDEN = /[%/\\#?\u0000-\u001f\u007f-\u009f]/g;

export function escapeKey(value: string): string {
  const escaped = value.replace(
    FORBIDDEN,
    (c) => `%${c.charCodeAt(0).toString(16).toUpperCase().padStart(2, "0")}`,
  );
  if (escaped.length > MAX_KEY_LENGTH) {
    throw new Error(
      `expected a table key of at most ${MAX_KEY_LENGTH} characters once escaped, found ${escaped.length} ` +
        `(${JSON.stringify(value.slice(0, 40))}…); use a shorter device id or digest`,
    );
  }
  return escaped;
}

export function unescapeKey(key: string): string {
  return key.replace(/%([0-9A-F]{2})/g, (_, hex: string) => String.fromCharCode(Number.parseInt(hex, 16)));
}

/** RowKey of a deployment set's summary row. */
export const SET_ROW_KEY = "set";
/** Every item RowKey starts with this; `;` sorts right after `:`, which bounds a range query. */
export const ITEM_ROW_PREFIX = "item:";
export const ITEM_ROW_END = "item;";

export function itemRowKey(device: string, digest: string): string {
  // Device ids may contain ':', so the device part is escaped with ':' too, keeping the split unambiguous.
  return `${ITEM_ROW_PREFIX}${escapeKey(device).replace(/:/g, "%3A")}:${escapeKey(digest)}`;
}

/** UTC day `YYYY-MM-DD` of an ISO time: the transfers partition. */
export function dayOf(isoTime: string): string {
  const time = new Date(isoTime);
  if (Number.isNaN(time.getTime())) {
    throw new Error(`expected an ISO 8601 time, found ${JSON.stringify(isoTime)}`);
  }
  return time.toISOString().slice(0, 10);
}

/** RowKey of a transfer: time first so a time range is a key range, then device and digest for uniqueness. */
export function transferRowKey(isoTime: string, device: string, digest: string): string {
  return `${new Date(isoTime).toISOString()}|${escapeKey(device).replace(/\|/g, "%7C")}|${escapeKey(digest)}`;
}

/** Quotes a value for an OData filter string. */
export function odata(value: string): string {
  return `'${value.replace(/'/g, "''")}'`;
}
