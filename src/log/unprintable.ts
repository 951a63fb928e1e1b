/**
 * Characters that never reach a log line or a child's environment as they are: controls (C0, DEL,
 * C1), invisible format characters (bidirectional overrides, zero-width ones, the BOM), line and
 * paragraph separators, and lone surrogates. Each can make text look like what it is not: a second
 * line, a line read in another order, a name with a character no one sees.
 */
const unprintable = /[\p{Cc}\p{Cf}\p{Zl}\p{Zp}\p{Cs}]/gu;

/** `text` with each unprintable character replaced by what `escape` makes of it. */
export function escapeUnprintable(text: string, escape: (char: string) => string): string {
  return text.replace(unprintable, escape);
}

/** `\u007f`, `\u202e`, `\u{e0001}`: the form JSON and JavaScript read back. */
export function unicodeEscape(char: string): string {
  const code = char.codePointAt(0)!;
  return code > 0xffff ? `\\u{${code.toString(16)}}` : `\\u${code.toString(16).padStart(4, '0')}`;
}
