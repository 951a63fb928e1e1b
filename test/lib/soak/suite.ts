import type { SoakCase } from './case.js';
import { childCrashes, childExitsAtOnce, childNeverExits, childNeverReads, forkBomb } from './faults-children.js';
import { peersHalfClose, peersReset, peersVanish } from './faults-peers.js';
import { certDirProblems, descriptorExhaustion, syslogProblems } from './faults-system.js';
import { oversizedRecords, plaintextHttp, randomHandshakes, slowloris, truncatedHandshakes } from './hostile-tls.js';
import { hostileAliasFiles, randomStdinLines, std2fifoPathTricks } from './hostile-input.js';
import { legacyProtocols, noCertificateNoChild, renegotiation, secretsStayHome } from './security.js';
import { concurrentLoad, sequentialLoad } from './load.js';
import { reloadUnderLoad } from './reload.js';

/** Every case, in the order of the table. */
export const suite: SoakCase[] = [sequentialLoad, concurrentLoad, reloadUnderLoad, childExitsAtOnce, childCrashes, childNeverReads, childNeverExits, forkBomb, peersReset, peersHalfClose, peersVanish, descriptorExhaustion, certDirProblems, syslogProblems, randomHandshakes, truncatedHandshakes, plaintextHttp, oversizedRecords, slowloris, randomStdinLines, hostileAliasFiles, std2fifoPathTricks, legacyProtocols, renegotiation, noCertificateNoChild, secretsStayHome];
