/** The VCDIFF (RFC 3284) codec's public API: wire format, sources, decoder and encoder. */
export * from "./decoder.js";
export * from "./format.js";
export * from "./source.js";
