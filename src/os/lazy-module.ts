import { createRequire } from 'node:module';

/**
 * A module loaded on first use rather than at start-up: the helpers run once per connection, and
 * a module they need only on some paths should not cost the others.
 */
export function lazyModule<T>(specifier: string): () => T {
  let loaded: T | undefined;
  return () => (loaded ??= createRequire(import.meta.url)(specifier) as T);
}

/** node:child_process, which brings net and the streams with it: a tenth of a helper's start-up. */
export const childProcess = lazyModule<typeof import('node:child_process')>('node:child_process');
