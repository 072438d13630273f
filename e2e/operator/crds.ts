// Installs Keyward's CRDs from crds/ as an administrator would, and waits until they are served.
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { ApiextensionsV1Api, loadYaml, type KubeConfig, type V1CustomResourceDefinition } from '@kubernetes/client-node';
import { setTimeout as sleep } from 'node:timers/promises';
import { setupError } from '../../core/errors.js';

const crdDir = join(import.meta.dirname, '..', '..', '..', 'crds');

export async function installCrds(kubeConfig: KubeConfig, timeoutMs = 30_000): Promise<void> {
  const extensions = kubeConfig.makeApiClient(ApiextensionsV1Api);
  for (const file of readdirSync(crdDir).filter((f) => f.endsWith('.yaml'))) {
    const crd = loadYaml<V1CustomResourceDefinition>(readFileSync(join(crdDir, file), 'utf8'));
    await extensions.createCustomResourceDefinition({ body: crd });
    const name = crd.metadata?.name ?? '';
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const { status } = await extensions.readCustomResourceDefinition({ name });
      if (status?.conditions?.some((c) => c.type === 'Established' && c.status === 'True')) break;
      if (Date.now() > deadline) throw setupError(`CRD ${name} not Established within ${timeoutMs / 1000} s: ${JSON.stringify(status?.conditions)}`);
      await sleep(100);
    }
  }
}
