/**
 * Just enough DER to walk to a certificate's names and keep each value's exact bytes: a peer's
 * certificate is read from its encoding, not from text a library made of it. @peculiar/asn1-x509
 * (used by tlsd-keygen) decodes values itself and loses what matters here: a UTF8String that is
 * not UTF-8 comes back as Latin-1 text, indistinguishable from a real one.
 */

/** One element: its first identifier octet (class, constructed bit, tag number), its contents, and its whole encoding. */
export interface DerElement {
  tag: number;
  content: Buffer;
  encoding: Buffer;
}

export const SEQUENCE = 0x30;
export const SET = 0x31;
export const OBJECT_IDENTIFIER = 0x06;

/** The elements `bytes` holds one after another; throws on anything that is not DER. */
export function derElements(bytes: Buffer): DerElement[] {
  const elements: DerElement[] = [];
  let offset = 0;
  const next = (): number => {
    if (offset >= bytes.length) throw new Error('truncated DER');
    return bytes[offset++]!;
  };
  while (offset < bytes.length) {
    const start = offset;
    const tag = next();
    // Tag numbers above 30 follow in base 128; such a value is kept whole, like any other.
    if ((tag & 0x1f) === 0x1f) while (next() & 0x80) continue;
    let length = next();
    if (length & 0x80) {
      const octets = length & 0x7f;
      if (octets === 0) throw new Error('indefinite length, not DER');
      if (octets > 3) throw new Error('DER element longer than 16 MB');
      length = 0;
      for (let i = 0; i < octets; i++) length = length * 256 + next();
    }
    if (length > bytes.length - offset) throw new Error('truncated DER');
    elements.push({ tag, content: bytes.subarray(offset, offset + length), encoding: bytes.subarray(start, offset + length) });
    offset += length;
  }
  return elements;
}

/** The elements of a constructed element that must have tag `tag`. */
export function derChildren(element: DerElement | undefined, tag: number, what: string): DerElement[] {
  if (element?.tag !== tag) throw new Error(`${what}: expected tag 0x${tag.toString(16)}, got ${element ? `0x${element.tag.toString(16)}` : 'nothing'}`);
  return derElements(element.content);
}

/** An OBJECT IDENTIFIER's contents in dotted form (2.5.4.3). */
export function oidText(content: Buffer): string {
  const arcs: number[] = [];
  let value = 0;
  for (const byte of content) {
    value = value * 128 + (byte & 0x7f);
    if (!Number.isSafeInteger(value)) throw new Error('object identifier arc too large');
    if (byte & 0x80) continue;
    arcs.push(value);
    value = 0;
  }
  if (arcs.length === 0 || content[content.length - 1]! & 0x80) throw new Error('malformed object identifier');
  const first = arcs.shift()!;
  // The first octets hold two arcs: 40 × (0, 1 or 2) + the second.
  const top = Math.min(2, Math.floor(first / 40));
  return [top, first - 40 * top, ...arcs].join('.');
}
