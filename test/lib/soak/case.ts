import { rmSync } from 'node:fs';
import { makeIdentity, tempDir, type TestIdentity } from '../identity.js';
import type { Teardown } from '../tlsd.js';

/** How big a run is: `quick` for `npm test` and `npm run soak -- --quick`, `full` for the table in docs. */
export type ProfileName = 'quick' | 'full';

export interface Profile {
  name: ProfileName;
  /** The quick or the full figure, whichever this run uses. */
  pick<T>(quick: T, full: T): T;
}

export function profile(name: ProfileName): Profile {
  return { name, pick: (quick, full) => (name === 'quick' ? quick : full) };
}

/** Before the case, the worst seen while it ran, and once it had settled. */
export interface Triple {
  before: number;
  during: number;
  after: number;
}

export interface Check {
  ok: boolean;
  what: string;
  detail?: string;
}

/** One row of the table, and everything the tap version asserts. */
export interface CaseResult {
  id: string;
  title: string;
  /** What was tried, how many times (sessions, connections, lines, files …). */
  tries: number;
  /** Sessions that went wrong plus checks that failed. */
  failures: number;
  /** Sessions that went wrong (refused, cut short, corrupted), whatever the checks say. */
  sessionFailures: number;
  /** Bytes a peer or a child sent that never arrived (must be 0). */
  bytesLost: number;
  /** tlsd's descriptors (/proc/PID/fd) and resident memory in MiB. */
  fds?: Triple;
  rssMiB?: Triple;
  checks: Check[];
  notes: string[];
  ms: number;
}

/** The identities every case may use: tlsd's own, two clients. */
export interface Cast {
  server: TestIdentity;
  alice: TestIdentity;
  bob: TestIdentity;
}

/** What a case gets: its sizes, a scratch directory, identities, and a place for its figures. */
export class CaseContext implements Teardown {
  tries = 0;
  sessionFailures = 0;
  bytesLost = 0;
  fds: Triple | undefined;
  rssMiB: Triple | undefined;
  readonly checks: Check[] = [];
  readonly notes: string[] = [];
  private readonly teardowns: Array<() => void | Promise<void>> = [];

  constructor(
    readonly profile: Profile,
    readonly dir: string,
    readonly cast: Cast,
  ) {}

  /** Records an expectation; returns whether it held so the case can go on accordingly. */
  check(ok: boolean, what: string, detail?: string): boolean {
    this.checks.push({ ok, what, ...(detail === undefined ? {} : { detail }) });
    return ok;
  }

  note(text: string): void {
    this.notes.push(text);
  }

  teardown(fn: () => void | Promise<void>): void {
    this.teardowns.push(fn);
  }

  async cleanup(): Promise<void> {
    for (const fn of this.teardowns.splice(0).reverse()) {
      try {
        await fn();
      } catch {
        // a teardown that fails must not hide the case's result
      }
    }
  }
}

export interface SoakCase {
  id: string;
  title: string;
  /** Part of test/soak-short.ts (quick profile inside `npm test`). */
  short?: boolean;
  /** Longest the case may take in the full profile before it is abandoned as failed. */
  timeoutMs?: number;
  run(ctx: CaseContext): Promise<void>;
}

/** Identities for a whole run, made once by openssl in a directory removed at the end. */
export function makeCast(dir: string): Cast {
  return { server: makeIdentity(dir, 'server'), alice: makeIdentity(dir, 'alice'), bob: makeIdentity(dir, 'bob') };
}

/**
 * Runs one case to its end, whatever happens: an exception is a failed check, never a crash. A
 * case that has not ended after `limitMs` (default: its timeoutMs, halved in the quick profile) is
 * abandoned as failed and cleaned up.
 */
export async function runCase(soakCase: SoakCase, prof: Profile, cast: Cast, limitMs?: number): Promise<CaseResult> {
  const dir = tempDir(`tlsd-soak-${soakCase.id}-`);
  const ctx = new CaseContext(prof, dir, cast);
  const started = Date.now();
  const limit = limitMs ?? (soakCase.timeoutMs ?? 600_000) * (prof.name === 'quick' ? 0.5 : 1);
  let timer: NodeJS.Timeout | undefined;
  try {
    await Promise.race([
      soakCase.run(ctx),
      new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`abandoned after ${limit / 1000} s`)), limit))),
    ]);
  } catch (error) {
    ctx.check(false, 'the case ran to its end', error instanceof Error ? error.message.slice(0, 2000) : String(error));
  } finally {
    clearTimeout(timer);
    await ctx.cleanup();
    rmSync(dir, { recursive: true, force: true });
  }
  const failedChecks = ctx.checks.filter((check) => !check.ok).length;
  return {
    id: soakCase.id,
    title: soakCase.title,
    tries: ctx.tries,
    failures: ctx.sessionFailures + failedChecks,
    sessionFailures: ctx.sessionFailures,
    bytesLost: ctx.bytesLost,
    ...(ctx.fds ? { fds: ctx.fds } : {}),
    ...(ctx.rssMiB ? { rssMiB: ctx.rssMiB } : {}),
    checks: ctx.checks,
    notes: ctx.notes,
    ms: Date.now() - started,
  };
}
