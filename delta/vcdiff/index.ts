/** The VCDIFF (RFC 3284) codec's public API: wire format, sources, decoder and encoder. */
export * from "./decoder.js";
export { type CopyHint, type EncodeOptions, encode, encodeBuffer, type SearchHint } from "./encoder.js";
export * from "./format.js";
export * from "./source.js";
