import { setTimeout as sleep } from 'node:timers/promises';
import t from 'tap';
import { BurstLog } from '../src/log/burst-log.js';

t.test('a burst: the first line in full, the rest counted in one line per interval', async (t) => {
  const lines: string[] = [];
  const intervalMs = 50;
  const log = new BurstLog({ warning: (line) => lines.push(line) }, intervalMs, (count, seconds, last) => `${count} more in ${seconds} s, the last ${last}`);
  log.report('first: in full', 'a');
  t.same(lines, ['first: in full'], 'the first is logged at once');
  for (let i = 0; i < 1_000; i++) log.report(`event ${i}`, `d${i}`);
  t.same(lines, ['first: in full'], 'the others wait');
  const deadline = Date.now() + 5_000;
  while (lines.length < 2 && Date.now() < deadline) await sleep(10);
  t.same(lines, ['first: in full', '1000 more in 0 s, the last d999'], 'then one line counts them');

  // A quiet interval ends the burst (waiting twenty of them leaves the timer no excuse).
  await sleep(intervalMs * 20);
  t.equal(lines.length, 2, 'nothing to tell, nothing told');
  log.report('second burst', 'b');
  t.equal(lines.at(-1), 'second burst', 'the next event starts a new burst, logged in full');
  log.report('unseen', 'c');
  log.flush();
  t.equal(lines.at(-1), '1 more in 0 s, the last c', 'flush tells what is counted (at shutdown)');
  log.flush();
  t.equal(lines.length, 4, 'once');
});

t.test('with room for three in full an interval: three lines, then a count, and room again next interval', async (t) => {
  const lines: string[] = [];
  const intervalMs = 50;
  const log = new BurstLog({ warning: (line) => lines.push(line) }, intervalMs, (count, _seconds, last) => `${count} more, the last ${last}`, 3);
  for (let i = 0; i < 10; i++) log.report(`event ${i}`, `d${i}`);
  t.same(lines, ['event 0', 'event 1', 'event 2'], 'three in full at once, the others wait');
  const deadline = Date.now() + 5_000;
  while (lines.length < 4 && Date.now() < deadline) await sleep(10);
  t.same(lines.slice(3), ['7 more, the last d9'], 'then one line counts them');
  log.report('next interval', 'x');
  t.equal(lines.at(-1), 'next interval', 'the next interval has room again');
  log.flush();
});

