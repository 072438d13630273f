// The volume component's public surface: what `keyward volume ...` runs, and what the e2e tests
// and benchmarks build on. Each command returns a VolumeOutcome or throws a VolumeRefusal.
export { unlockVolume, type UnlockOptions } from './volumeUnlock.js';
export { lockVolume } from './volumeLock.js';
export { holdVolume } from './volumeHold.js';
export { volumeStatus, formatStatus, type VolumeStatus } from './volumeStatus.js';
export { rekeyToPrimary, rekeyVolume, type RekeyOptions, type RekeyStep, type RekeyToPrimaryOptions } from './volumeRekey.js';
export { audited, workloadFromEnv, type VolumeOperation, type Workload } from './volumeAudit.js';
export { keyVersionAttribute } from './volumeDirectory.js';
export type { VolumeOutcome } from './volumeOutcome.js';
export { VolumeRefusal, type VolumeRefusalCode } from './volumeRefusal.js';
