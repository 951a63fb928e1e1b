/** The outcome of asking for a slot: admitted (perhaps in another's place), or refused. */
export type Admission<T> = { admitted: true; evicted?: Eviction<T> } | { admitted: false };

/** A pending handshake that gave up its slot to a newcomer; the caller ends its connection. */
export interface Eviction<T> {
  item: T;
  /** Its address group, and how many slots that group held before this one was taken. */
  group: string;
  held: number;
}

interface Entry<T> {
  item: T;
  group: Group<T>;
  older: Entry<T> | undefined;
  newer: Entry<T> | undefined;
}

interface Group<T> {
  key: string;
  count: number;
  oldest: Entry<T> | undefined;
  newest: Entry<T> | undefined;
}

/**
 * The TLS handshakes in progress, within a fixed number of slots shared fairly between address
 * groups (see addressGroup). While a slot is free anyone gets it, so one address may use them all
 * when nobody else is waiting. When none is free, a newcomer whose group would still hold fewer
 * than the biggest holder, itself included, takes the slot of that holder's oldest handshake; any
 * other newcomer is refused. So whoever opens connections and never says hello can keep out only
 * its own group: a client from elsewhere finds room unless every slot is held by a different
 * group, and two groups end up sharing the slots evenly, with no slot changing hands once they
 * are within one of each other.
 *
 * Admission, eviction and release are O(1): each group keeps its handshakes oldest first in a
 * linked list, and the groups are filed by how many they hold, so the biggest is at hand.
 */
export class HandshakeSlots<T> {
  private readonly entries = new Map<T, Entry<T>>();
  private readonly groups = new Map<string, Group<T>>();
  /** The groups holding n slots, under n. */
  private readonly byCount = new Map<number, Set<Group<T>>>();
  /** The most slots any group holds. */
  private most = 0;

  constructor(readonly max: number) {}

  /** Handshakes in progress: slots taken. */
  get size(): number {
    return this.entries.size;
  }

  /** How many slots `group` holds. */
  held(group: string): number {
    return this.groups.get(group)?.count ?? 0;
  }

  /** Whether `item` holds a slot (not released, not evicted). */
  holds(item: T): boolean {
    return this.entries.has(item);
  }

  /** Takes a slot for `item`, from `group`; when all are taken, perhaps the slot of another. */
  admit(item: T, group: string): Admission<T> {
    let evicted: Eviction<T> | undefined;
    if (this.entries.size >= this.max) {
      const biggest = this.byCount.get(this.most)?.values().next().value;
      // Taking from a group that would then hold no more than the newcomer's gains nothing.
      if (biggest === undefined || this.held(group) + 1 >= biggest.count) return { admitted: false };
      const victim = biggest.oldest!;
      evicted = { item: victim.item, group: biggest.key, held: biggest.count };
      this.remove(victim);
    }
    this.add(item, group);
    return evicted ? { admitted: true, evicted } : { admitted: true };
  }

  /** Frees `item`'s slot; false when it holds none (evicted, or released already). */
  release(item: T): boolean {
    const entry = this.entries.get(item);
    if (!entry) return false;
    this.remove(entry);
    return true;
  }

  private add(item: T, key: string): void {
    let group = this.groups.get(key);
    if (!group) {
      group = { key, count: 0, oldest: undefined, newest: undefined };
      this.groups.set(key, group);
    }
    const entry: Entry<T> = { item, group, older: group.newest, newer: undefined };
    if (group.newest) group.newest.newer = entry;
    else group.oldest = entry;
    group.newest = entry;
    this.entries.set(item, entry);
    this.refile(group, group.count++);
  }

  private remove(entry: Entry<T>): void {
    const { group } = entry;
    if (entry.older) entry.older.newer = entry.newer;
    else group.oldest = entry.newer;
    if (entry.newer) entry.newer.older = entry.older;
    else group.newest = entry.older;
    this.entries.delete(entry.item);
    this.refile(group, group.count--);
    if (group.count === 0) this.groups.delete(group.key);
  }

  /** Moves `group` from the file of groups holding `was` to that of its count now (one more or less). */
  private refile(group: Group<T>, was: number): void {
    const file = this.byCount.get(was);
    file?.delete(group);
    if (file?.size === 0) this.byCount.delete(was);
    if (group.count > 0) {
      const next = this.byCount.get(group.count) ?? new Set<Group<T>>();
      next.add(group);
      this.byCount.set(group.count, next);
    }
    if (group.count > this.most) this.most = group.count;
    // The one group at the top came down by one: the top is now where it went.
    else if (was === this.most && !this.byCount.has(was)) this.most = group.count;
  }
}
