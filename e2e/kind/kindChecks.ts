// The checks of the real-node install tests (e2e/install/clusterChecks.ts), run by e2e/kind/run.sh
// against the kind cluster it installed Keyward on: the kubectl on PATH, with KUBECONFIG. Not a
// test file: `node dist/e2e/kind/kindChecks.js` prints one line per check and exits 1 on a failure.
import { randomBytes } from 'node:crypto';
import { kubectlRunner } from '../../testbed/control-plane/kubectl.js';
import { applyShopWorkload, expectMountRefused, keywardPod, readPodFile, shop, waitPodRunning, waitWebhookServing, type Cluster } from '../install/clusterChecks.js';

const releaseNamespace = 'keyward-system';
// Pulled by the kind node from Docker Hub (the node tests load theirs from an archive instead).
const busybox = 'busybox:1.36';

const cluster: Cluster = { kubectl: kubectlRunner('kubectl') };

function expect(condition: boolean, what: string): void {
  if (!condition) throw new Error(what);
}

async function main(): Promise<boolean> {
  const secretValue = `kind-${randomBytes(8).toString('hex')}`;
  let admin = '';
  const checks: [string, () => Promise<void>][] = [
    ['the admission webhook answers through its Service', () => waitWebhookServing(cluster, releaseNamespace)],
    ['namespace shop: KeyRings Ready, KeyPolicy, SecretProviderClass with a value sealed in the operator', async () => {
      // The KeyPolicy names the user this kubeconfig authenticates as (kind's: kubernetes-admin).
      admin = (await cluster.kubectl(['auth', 'whoami', '-o', 'jsonpath={.status.userInfo.username}'])).trim();
      expect(admin !== '', 'kubectl auth whoami gave no user name');
      await applyShopWorkload(cluster, releaseNamespace, admin, secretValue);
      // A re-run starts from new pods: old ones hold the previous run's value.
      await cluster.kubectl(['-n', shop.namespace, 'delete', 'pod', 'web', 'intruder', '--ignore-not-found', '--wait=true']);
    }],
    ['pod web (granted by the KeyPolicy) runs with the sealed secret and a 32-byte derived key', async () => {
      await cluster.kubectl(['apply', '-f', '-'], keywardPod('web', shop.serviceAccount, busybox, 'IfNotPresent'));
      await waitPodRunning(cluster, 'web', 180_000);
      const password = (await readPodFile(cluster, 'web', 'db/password')).toString();
      expect(password === secretValue, `db/password is ${JSON.stringify(password)}, not the sealed value`);
      const key = await readPodFile(cluster, 'web', 'luks/db.key');
      expect(key.length === 32, `luks/db.key is ${key.length} bytes, not 32`);
    }],
    ['pod intruder (named by no KeyPolicy) stays Pending with a FailedMount Event naming NotAuthorized', async () => {
      await cluster.kubectl(['apply', '-f', '-'], keywardPod('intruder', 'intruder', busybox, 'IfNotPresent'));
      const message = await expectMountRefused(cluster, 'intruder', 'NotAuthorized', 120_000);
      expect(!message.includes(secretValue), 'the refusal message holds the secret value');
      await cluster.kubectl(['-n', shop.namespace, 'delete', 'pod', 'intruder', '--wait=false']);
    }],
  ];

  // Each check needs the ones before it: stop at the first failure.
  for (const [i, [name, check]] of checks.entries()) {
    const started = Date.now();
    try {
      await check();
      process.stdout.write(`ok    ${name} (${((Date.now() - started) / 1000).toFixed(1)} s)\n`);
    } catch (err) {
      process.stdout.write(`FAIL  ${name}\n`);
      console.error(`      ${(err as Error).message}`);
      for (const [skipped] of checks.slice(i + 1)) process.stdout.write(`skip  ${skipped}\n`);
      return false;
    }
  }
  process.stdout.write(`all ${checks.length} checks passed (KeyPolicy admin: ${admin})\n`);
  return true;
}

main().then(
  (passed) => {
    process.exitCode = passed ? 0 : 1;
  },
  (err: unknown) => {
    console.error(err);
    process.exitCode = 1;
  },
);
