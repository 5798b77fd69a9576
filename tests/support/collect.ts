/** Gathering a stream whose chunks may share one buffer (the decoders reuse their output buffer). */

/** Every chunk of `parts` copied as it arrives, then joined. */
export async function collect(parts: AsyncIterable<Uint8Array>): Promise<Buffer> {
  const chunks: Uint8Array[] = [];
  for await (const part of parts) chunks.push(Buffer.from(part));
  return Buffer.concat(chunks);
}

/**
 * `bytes` as a stream like a zstd decoder's with reused output: every chunk of `size` bytes is the
 * same Buffer (whose slice() is a view, not a copy), overwritten after it is pulled.
 */
export async function* reusing(bytes: Uint8Array, size: number): AsyncGenerator<Uint8Array> {
  const buffer = Buffer.alloc(size);
  for (let at = 0; at < bytes.length; at += size) {
    const n = Math.min(size, bytes.length - at);
    buffer.set(bytes.subarray(at, at + n));
    yield buffer.subarray(0, n);
    buffer.fill(0xee);
  }
}
