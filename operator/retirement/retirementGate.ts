// Whether a key version may stop decrypting: for a ring the KMS plugin serves, only when a scan of
// etcd, made after every kube-apiserver switched to the newer primary, counted no object under it.
// Admission asks this of the KeyRing's status; the operator asks it again of the status it is about
// to write, so a request that slipped past a removed webhook is still refused.
import type { KeyRingStatus } from '../../core/api/keyRing.js';

/** Why `version` may not be disabled or destroyed yet, or undefined when etcd proves it unused. */
export function etcdRetirementRefusal(status: KeyRingStatus | undefined, version: number): string | undefined {
  const run = status?.reEncryption;
  // Not served by the KMS plugin: nothing in etcd depends on it.
  if (!run) return undefined;
  const entry = status.versions?.find((v) => v.number === version);
  if (!entry || entry.state === 'Destroyed' || entry.state === 'PendingGeneration') return undefined;
  if (version === status.primaryVersion) return undefined;
  if (!run.apiserverSwitchedAt) {
    return `version ${version} may still protect objects in etcd: kube-apiserver does not encrypt with version ${run.targetVersion} yet, so nothing can be proven`;
  }
  const provenAt = entry.etcdObjectsProvenAt;
  if (entry.etcdObjects === undefined || !provenAt || Date.parse(provenAt) < Date.parse(run.apiserverSwitchedAt)) {
    return (
      `version ${version} may still protect objects in etcd: no complete scan since kube-apiserver switched to version ${run.targetVersion} ` +
      `at ${run.apiserverSwitchedAt} has counted them yet`
    );
  }
  if (entry.etcdObjects > 0) {
    return `version ${version} still protects ${entry.etcdObjects} object${entry.etcdObjects === 1 ? '' : 's'} in etcd (scan at ${provenAt}); re-encrypt them first`;
  }
  return undefined;
}
