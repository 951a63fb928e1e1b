import t from 'tap';
import { addressGroup } from '../src/core/address-group.js';
import { HandshakeSlots, type Admission } from '../src/core/handshake-slots.js';
import { Rng } from './lib/soak/traffic.js';

t.test('address groups: an IPv4 address, or an IPv6 /64', async (t) => {
  const cases: Array<[address: string, group: string, why: string]> = [
    ['192.0.2.7', '192.0.2.7', 'IPv4 counts by address: neighbours behind other NATs are other clients'],
    ['2001:db8:1:2:aaaa:bbbb:cccc:dddd', '2001:db8:1:2::/64', 'IPv6 counts by /64'],
    ['2001:db8:1:2::1', '2001:db8:1:2::/64', 'any address of one /64 is the same group'],
    ['2001:db8:1:3::1', '2001:db8:1:3::/64', 'the next /64 is another'],
    ['2001:DB8:0001:0002:0:0:0:9', '2001:db8:1:2::/64', 'in one spelling whatever the input\'s'],
    ['2001:db8::5', '2001:db8::/64', 'zeros that end the prefix fold into ::'],
    ['2001:0:0:1::5', '2001:0:0:1::/64', 'inner zeros stay: the interface part is the longer run'],
    ['::1', '::/64', 'loopback'],
    ['::', '::/64', 'the unspecified address'],
    ['fe80::1%eth0', 'fe80::/64', 'a zone names our interface, not the peer'],
    ['::ffff:127.0.0.2', '127.0.0.2', 'an IPv4-mapped address is its IPv4 address, not the /64 all of IPv4 maps into'],
    ['::ffff:7f00:3', '127.0.0.3', 'in either spelling'],
    ['64:ff9b::192.0.2.1', '64:ff9b::/64', 'NAT64 addresses are IPv6 addresses'],
    ['', '', 'no address at all is a group of its own'],
    ['not an address', 'not an address', 'so is anything else'],
  ];
  for (const [address, group, why] of cases) t.equal(addressGroup(address), group, `${JSON.stringify(address)}: ${why}`);
  // Handshake fairness counts a /48: one tunnel broker's free allocation, or one 6to4 IPv4 address.
  t.equal(addressGroup('2001:db8:1:2::1', 48), '2001:db8:1::/48', 'a /48');
  t.equal(addressGroup('2001:db8:1:ffff::1', 48), '2001:db8:1::/48', 'every /64 of it is the same group');
  t.equal(addressGroup('2001:db8::7', 48), '2001:db8::/48', 'zeros that end the prefix fold into ::');
  t.equal(addressGroup('2002:c000:0201:1::1', 48), '2002:c000:201::/48', 'a 6to4 /48: one IPv4 address');
  t.equal(addressGroup('::ffff:192.0.2.1', 48), '192.0.2.1', 'IPv4 stays by address');
});

const admitted = <T>(a: Admission<T>): boolean => a.admitted;

t.test('slots: anyone while one is free; when full, the biggest holder gives up its oldest', async (t) => {
  const slots = new HandshakeSlots<string>(4);
  for (const item of ['a1', 'a2', 'a3']) t.same(slots.admit(item, 'A'), { admitted: true }, `${item} takes a free slot`);
  t.same(slots.admit('b1', 'B'), { admitted: true });
  t.equal(slots.size, 4);
  t.same(slots.admit('a4', 'A'), { admitted: false }, 'full: the biggest holder itself is refused');
  t.same(slots.admit('c1', 'C'), { admitted: true, evicted: { item: 'a1', group: 'A', held: 3 } }, 'a newcomer takes the slot of the oldest of the biggest holder');
  t.same([slots.size, slots.held('A'), slots.held('C')], [4, 2, 1], 'the counts follow');
  t.same(slots.admit('c2', 'C'), { admitted: false }, 'not once it would hold as many as the holder it takes from: nothing would be fairer');
  t.same(slots.admit('b2', 'B'), { admitted: false }, 'nor for another group in that position');
  t.equal(slots.release('a1'), false, 'the evicted one holds no slot');
  t.equal(slots.release('a2'), true, 'a finished handshake frees its slot');
  t.equal(slots.release('a2'), false, 'once');
  t.same(slots.admit('a5', 'A'), { admitted: true }, 'a free slot goes to anyone, the biggest holder too');
  t.same(slots.admit('d1', 'D'), { admitted: true, evicted: { item: 'a3', group: 'A', held: 2 } }, 'its oldest is next');
});

t.test('slots: one holder of all, then a client, then a second holder', async (t) => {
  const max = 256;
  const slots = new HandshakeSlots<number>(max);
  for (let i = 0; i < max; i++) slots.admit(i, '127.0.0.2');
  let refused = 0;
  for (let i = max; i < 1_000; i++) if (!admitted(slots.admit(i, '127.0.0.2'))) refused++;
  t.equal(refused, 1_000 - max, 'once it holds every slot, its further connections are refused');
  t.same(slots.admit(-1, '127.0.0.1'), { admitted: true, evicted: { item: 0, group: '127.0.0.2', held: max } }, 'the client takes the oldest attacker\'s slot');
  // A second attacker gets up to half, then nothing: the client's slot is never taken.
  let second = 0;
  while (second < max && admitted(slots.admit(1_000 + second, '127.0.0.3'))) second++;
  t.same([slots.held('127.0.0.1'), slots.held('127.0.0.2'), slots.held('127.0.0.3')], [1, 128, 127], 'the two attackers share what the client leaves, within one');
  t.equal(second, 127);
  t.equal(slots.size, max);
});

t.test('slots agree with a plain model over 20,000 random steps', async (t) => {
  const rng = new Rng(7);
  const random = (): number => rng.next();
  const max = 12;
  const slots = new HandshakeSlots<number>(max);
  /** The model: pending items in arrival order with their groups. */
  let model: Array<{ item: number; group: string }> = [];
  const counts = (): Map<string, number> => {
    const map = new Map<string, number>();
    for (const { group } of model) map.set(group, (map.get(group) ?? 0) + 1);
    return map;
  };
  let mismatches = 0;
  const fail = (what: string, extra: object): void => {
    if (mismatches++ < 5) t.fail(what, extra);
  };
  for (let step = 0, next = 0; step < 20_000; step++) {
    if (model.length > 0 && random() < 0.45) {
      const { item } = model[Math.floor(random() * model.length)]!;
      if (!slots.release(item)) fail('a pending item is released', { step, item });
      model = model.filter((m) => m.item !== item);
      continue;
    }
    // Skewed groups: G0 arrives most, so it is usually the biggest holder.
    const group = `G${Math.floor(random() ** 2 * 5)}`;
    const item = next++;
    const held = counts();
    const most = Math.max(0, ...held.values());
    const expectAdmit = model.length < max || (held.get(group) ?? 0) + 1 < most;
    const result = slots.admit(item, group);
    if (result.admitted !== expectAdmit) fail('admission as the model says', { step, group, held: Object.fromEntries(held), result });
    if (!result.admitted) continue;
    if (model.length >= max) {
      const evicted = result.evicted;
      const oldestOf = (g: string): number | undefined => model.find((m) => m.group === g)?.item;
      if (!evicted || held.get(evicted.group) !== most || evicted.held !== most || evicted.item !== oldestOf(evicted.group)) {
        fail('the oldest of a biggest holder is evicted', { step, evicted, held: Object.fromEntries(held) });
      }
      if (evicted) model = model.filter((m) => m.item !== evicted.item);
    } else if (result.evicted) fail('nobody is evicted while a slot is free', { step });
    model.push({ item, group });
    if (slots.size !== model.length) fail('size', { step, size: slots.size, model: model.length });
    for (const g of ['G0', 'G1', 'G2', 'G3', 'G4']) if (slots.held(g) !== (counts().get(g) ?? 0)) fail(`held(${g})`, { step });
  }
  t.equal(mismatches, 0, 'no step disagreed');
  for (const { item } of model) slots.release(item);
  t.equal(slots.size, 0, 'every slot comes back');
});
