import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';

/**
 * -d: keeps each peer's certificate (DER) as DIR/<fingerprint>. An existing file is left as it
 * is: the name is the content's hash, so it already holds the same certificate.
 * Returns an error to log, or undefined.
 */
export async function saveCertificate(dir: string, sha256: string, der: Buffer): Promise<unknown> {
  try {
    await writeFile(join(dir, sha256), der, { flag: 'wx' });
    return undefined;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EEXIST' ? undefined : error;
  }
}
