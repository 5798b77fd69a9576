/** Gathering a stream whose chunks may share one buffer (the decoders reuse their output buffer). */

/** Every chunk of `parts` copied as it arrives, then joined. */
export async function collect(parts: AsyncIterable<Uint8Array>): Promise<Buffer> {
  const chunks: Uint8Array[] = [];
  for await (const part of parts) chunks.push(Buffer.from(part));
  return Buffer.concat(chunks);
}
