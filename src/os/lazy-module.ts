import { createRequire } from 'node:module';

/**
 * A module loaded on first use rather than at start-up: the helpers run once per connection, and
 * a module they need only on some paths should not cost the others.
 */
export function lazyModule<T>(specifier: string): () => T {
  let loaded: T | undefined;
  return () => (loaded ??= createRequire(import.meta.url)(specifier) as T);
}
