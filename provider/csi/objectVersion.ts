// MountResponse.object_version: one version per object, which the driver records in the
// SecretProviderClassPodStatus and compares across remounts. It must change exactly when what the
// object delivers changes, and must say nothing about the content.
//
// The version is HMAC-SHA-256, under a key of 256 random bits made when the provider starts and
// kept only in its memory, over the object's configuration and every file it delivers.
// Why it reveals nothing: HMAC under a secret key is a pseudorandom function, so to anyone without
// the key a version is indistinguishable from a random string. Unlike a plain hash, nobody who can
// read the SecretProviderClassPodStatus can confirm a guess of a low-entropy secret (a short
// password) offline, or tell two objects' contents apart beyond "equal or not". The scope (the
// pod) is part of the input, so versions are not even comparable between pods. What does show is
// the one thing the driver needs: whether an object changed between two mounts of one pod.
// The cost of a per-process key: after a provider restart every version changes once, and the
// driver rewrites files whose contents are identical. A key kept in the HSM would avoid that.
import { createHmac, randomBytes } from 'node:crypto';
import { isDerivedKey, type MountObject } from './mountRequest.js';

/** One file an object delivers, as it goes into MountResponse.files. */
export interface ServedFile {
  path: string;
  mode: number;
  contents: Uint8Array;
}

/**
 * The version of one object as served to one pod.
 * `scope` says to whom it was served (the reviewed pod UID): the same content for two pods gets
 * unrelated versions.
 */
export type ObjectVersioner = (scope: string, object: MountObject, files: readonly ServedFile[]) => string;

const domain = 'keyward.dev/csi/object-version/v1';
const minKeyBytes = 32;

/** A versioner under `key`; by default a fresh random key, which is what the provider uses. */
export function createObjectVersioner(key: Uint8Array = randomBytes(minKeyBytes)): ObjectVersioner {
  if (key.length < minKeyBytes) throw new Error(`an object version key needs at least ${minKeyBytes} bytes; got ${key.length}`);
  const secret = Buffer.from(key); // a copy: the caller cannot change or read it back through us
  return (scope, object, files) => {
    const mac = createHmac('sha256', secret);
    // Every field is length-prefixed, so ("ab", "c") and ("a", "bc") feed different bytes.
    const field = (value: string | Uint8Array): void => {
      const data = typeof value === 'string' ? Buffer.from(value, 'utf8') : value;
      const length = Buffer.alloc(4);
      length.writeUInt32BE(data.length);
      mac.update(length);
      mac.update(data);
    };
    field(domain);
    field(scope);
    field(object.type);
    field(object.name);
    field(object.keyRing);
    field(object.path);
    field(String(object.mode));
    field(isDerivedKey(object) ? String(object.previousVersions) : '');
    field(object.type === 'secret' ? object.ciphertext : new Uint8Array());
    const sorted = [...files].sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
    field(String(sorted.length));
    for (const file of sorted) {
      field(file.path);
      field(String(file.mode));
      field(file.contents);
    }
    return mac.digest('base64url');
  };
}
