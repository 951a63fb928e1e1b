import type { Readable } from 'node:stream';
import { quote, type Logger } from '../log/logger.js';
import { reason } from '../log/reason.js';
import { joinSplitTargets, parseDialLine, type DialTarget } from '../input/dial-line.js';
import { readLines } from '../input/line-reader.js';
import type { PeerSlots } from './peer-slots.js';

/** Longer stdin lines are reported and skipped: a host name and a port never need this much. */
const MAX_LINE_BYTES = 4096;

export interface DialLineOptions {
  /** tlsd's stdin. */
  input: Readable;
  /** A line waits for a free peer slot before it is dialed. */
  slots: PeerSlots;
  log: Logger;
  stopping(): boolean;
  /** Dials one target, its peer slot already taken; releases the slot when its connection is done. */
  dial(target: DialTarget): void;
}

/** Reads `host port` lines and dials each once, as peer slots allow; ends with stdin or shutdown. */
export async function readDialLines({ input, slots, log, stopping, dial }: DialLineOptions): Promise<void> {
  try {
    for await (const item of joinSplitTargets(readLines(input, MAX_LINE_BYTES))) {
      if (stopping()) break;
      if ('tooLong' in item) {
        log.warning(`Skipped a stdin line of ${item.tooLong} bytes: longer than ${MAX_LINE_BYTES}`);
        continue;
      }
      const parsed = parseDialLine(item.line);
      if ('blank' in parsed) continue;
      if ('error' in parsed) {
        log.warning(`Skipped stdin line ${quote(item.line)}: ${parsed.error}`);
        continue;
      }
      // Waiting here stops reading stdin, so queued lines cost nothing until a slot frees.
      if (!(await slots.acquire())) break;
      dial(parsed.target);
    }
    // As the original: the end of stdin stops dialing, not serving.
    if (!stopping()) log.info('stdin is closed');
  } catch (error) {
    if (!stopping()) log.error(`Cannot read stdin: ${reason(error)}`);
  }
}
