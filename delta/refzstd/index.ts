export * from "./decoder.js";
export * from "./encoder.js";
export * from "./format.js";
export { GzipToolError } from "./regzip.js";
