// ISO 8601 durations as used for deployment deadlines ("P14D", "PT36H", "P1DT12H30M").
// Years and months are refused: their length depends on the calendar, and a deadline must be exact.

const DURATION_PATTERN = /^P(?:(\d+)W)?(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+(?:\.\d+)?)S)?)?$/;

const MS_PER_SECOND = 1000;
const MS_PER_MINUTE = 60 * MS_PER_SECOND;
const MS_PER_HOUR = 60 * MS_PER_MINUTE;
const MS_PER_DAY = 24 * MS_PER_HOUR;

/** Milliseconds in an ISO 8601 duration of weeks, days, hours, minutes and seconds; undefined if malformed. */
export function parseIsoDuration(text: string): number | undefined {
  const match = DURATION_PATTERN.exec(text);
  if (match === null || text === "P" || text.endsWith("T")) return undefined;
  const [, weeks, days, hours, minutes, seconds] = match;
  const ms =
    Number(weeks ?? 0) * 7 * MS_PER_DAY +
    Number(days ?? 0) * MS_PER_DAY +
    Number(hours ?? 0) * MS_PER_HOUR +
    Number(minutes ?? 0) * MS_PER_MINUTE +
    Math.round(Number(seconds ?? 0) * MS_PER_SECOND);
  return Number.isSafeInteger(ms) ? ms : undefined;
}
