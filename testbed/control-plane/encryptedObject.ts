// Reads what kube-apiserver stores for a KMS v2 encrypted object, for tests that check etcd
// directly: the product's parser (scanner/etcdEnvelope.ts), so tests and scanner agree.
import { readKmsV2Envelope } from '../../scanner/etcdEnvelope.js';

export interface StoredKmsValue {
  provider: string;
  keyId: string;
}

/** Undefined when the value is not a well-formed KMS v2 envelope. */
export function parseKmsV2Value(raw: Buffer): StoredKmsValue | undefined {
  const envelope = readKmsV2Envelope(raw);
  return envelope && 'keyId' in envelope ? envelope : undefined;
}
