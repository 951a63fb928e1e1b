/** One attribute of a distinguished name, in the order given (the order openssl prints). */
export interface SubjectAttribute {
  key: SubjectKey;
  value: string;
}

/** The attributes a self-signed identity may carry, with their OIDs and RFC 5280 upper bounds. */
const attributes = {
  CN: { oid: '2.5.4.3', max: 64 },
  O: { oid: '2.5.4.10', max: 64 },
  OU: { oid: '2.5.4.11', max: 64 },
  L: { oid: '2.5.4.7', max: 128 },
  ST: { oid: '2.5.4.8', max: 128 },
  C: { oid: '2.5.4.6', max: 2 },
} as const;

export type SubjectKey = keyof typeof attributes;

export function attributeOid(key: SubjectKey): string {
  return attributes[key].oid;
}

export class SubjectError extends Error {}

/**
 * Reads `--subject`: a name in openssl's form (`/CN=alice/O=Example`, `\/` for a slash in a value),
 * or, when it does not start with `/`, just the common name, since that is all most identities need.
 */
export function parseSubject(text: string): SubjectAttribute[] {
  const parts = text.startsWith('/') ? splitSlashes(text.slice(1)).map(parsePart) : [{ key: 'CN' as const, value: text }];
  if (parts.length === 0) throw new SubjectError('the subject is empty');
  for (const part of parts) checkValue(part);
  return parts;
}

function splitSlashes(text: string): string[] {
  const parts: string[] = [];
  let current = '';
  for (let i = 0; i < text.length; i++) {
    const char = text[i];
    if (char === '\\' && i + 1 < text.length) current += text[++i];
    else if (char === '/') {
      parts.push(current);
      current = '';
    } else current += char;
  }
  parts.push(current);
  // A trailing slash ("/CN=alice/") ends the name rather than starting an empty attribute.
  if (parts.length > 1 && parts[parts.length - 1] === '') parts.pop();
  return parts;
}

function parsePart(part: string): SubjectAttribute {
  const equals = part.indexOf('=');
  if (equals <= 0) throw new SubjectError(`expected KEY=value in the subject, got ${JSON.stringify(part)}`);
  const key = part.slice(0, equals);
  if (!isSubjectKey(key)) {
    throw new SubjectError(`unknown subject attribute ${JSON.stringify(key)} (known: ${Object.keys(attributes).join(', ')})`);
  }
  return { key, value: part.slice(equals + 1) };
}

function isSubjectKey(key: string): key is SubjectKey {
  return Object.hasOwn(attributes, key);
}

function checkValue({ key, value }: SubjectAttribute): void {
  if (value === '') throw new SubjectError(`the subject's ${key} is empty`);
  if (/[\x00-\x1f\x7f]/.test(value)) throw new SubjectError(`the subject's ${key} has a control character`);
  if (key === 'C' && !/^[A-Z]{2}$/.test(value)) throw new SubjectError('the subject\'s C must be a two-letter country code (such as DE)');
  const { max } = attributes[key];
  if ([...value].length > max) throw new SubjectError(`the subject's ${key} is longer than ${max} characters`);
}

/** The subject in openssl's form, for messages. */
export function formatSubject(subject: SubjectAttribute[]): string {
  return subject.map(({ key, value }) => `/${key}=${value.replace(/[\\/]/g, '\\$&')}`).join('');
}
