// Installs Keyward's CRDs from crds/ as an administrator would, and waits until they are served.
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { ApiextensionsV1Api, CustomObjectsApi, loadYaml, type KubeConfig, type V1CustomResourceDefinition } from '@kubernetes/client-node';
import { setTimeout as sleep } from 'node:timers/promises';
import { setupError } from '../../core/errors.js';

const crdDir = join(import.meta.dirname, '..', '..', '..', 'crds');

export async function installCrds(kubeConfig: KubeConfig, timeoutMs = 30_000): Promise<void> {
  const extensions = kubeConfig.makeApiClient(ApiextensionsV1Api);
  const objects = kubeConfig.makeApiClient(CustomObjectsApi);
  for (const file of readdirSync(crdDir).filter((f) => f.endsWith('.yaml'))) {
    const crd = loadYaml<V1CustomResourceDefinition>(readFileSync(join(crdDir, file), 'utf8'));
    await extensions.createCustomResourceDefinition({ body: crd });
    const name = crd.metadata?.name ?? '';
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      const { status } = await extensions.readCustomResourceDefinition({ name });
      // Established, and its storage serving: right after, lists may still answer 429 for a moment.
      if (status?.conditions?.some((c) => c.type === 'Established' && c.status === 'True') && (await served(objects, crd))) break;
      if (Date.now() > deadline) throw setupError(`CRD ${name} not Established within ${timeoutMs / 1000} s: ${JSON.stringify(status?.conditions)}`);
      await sleep(100);
    }
  }
}

async function served(objects: CustomObjectsApi, crd: V1CustomResourceDefinition): Promise<boolean> {
  const version = crd.spec.versions.find((v) => v.served)?.name ?? '';
  return objects.listClusterCustomObject({ group: crd.spec.group, version, plural: crd.spec.names.plural }).then(
    () => true,
    () => false,
  );
}
