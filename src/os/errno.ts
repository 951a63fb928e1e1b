import { constants } from 'node:os';

const names = new Map<number, string>(Object.entries(constants.errno as Record<string, number>).map(([name, value]) => [value, name]));

/** The errno posix-socket attaches to what it throws, as its name ('ENOENT', 'EPIPE', ...). */
export function errnoOf(error: unknown): string | undefined {
  const errno = (error as { errno?: unknown }).errno;
  return typeof errno === 'number' ? errnoName(errno) : undefined;
}

/** An errno number as its name (2 → 'ENOENT'). */
export function errnoName(errno: number): string | undefined {
  return names.get(errno);
}
