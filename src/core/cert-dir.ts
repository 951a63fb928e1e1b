import { link, unlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';

/**
 * -d: keeps each peer's certificate (DER) as DIR/<fingerprint>. An existing file is left as it
 * is: the name is the content's hash, so it already holds the same certificate.
 * Returns an error to log, or undefined.
 */
export async function saveCertificate(dir: string, sha256: string, der: Buffer): Promise<unknown> {
  // Written aside and linked into place, so a full disk never leaves an empty DIR/<fingerprint>
  // that "an existing file is kept" would then keep for good; link() also refuses to replace.
  const temporary = join(dir, `.${sha256}.${process.pid}.${Math.random().toString(36).slice(2)}`);
  try {
    await writeFile(temporary, der, { flag: 'wx' });
    await link(temporary, join(dir, sha256));
    return undefined;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EEXIST' ? undefined : error;
  } finally {
    await unlink(temporary).catch(() => {});
  }
}
