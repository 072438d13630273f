// Keyward's admission webhooks on a test control plane, registered as the chart registers them
// but reached by URL (no Service without a cluster network), and clients for real users
// authenticated by client certificates from the control plane's CA.
import { mkdirSync, readFileSync, copyFileSync } from 'node:fs';
import { join } from 'node:path';
import { AdmissionregistrationV1Api, KubeConfig, type V1MutatingWebhookConfiguration, type V1ValidatingWebhookConfiguration } from '@kubernetes/client-node';
import { keyPolicyWebhookPath, keyRingWebhookPath } from '../../operator/admission/admissionServer.js';
import type { ControlPlane } from '../../testbed/control-plane/controlPlane.js';
import { issueClientCertificate, issueServingCertificate } from '../../testbed/control-plane/pki.js';

/** A directory with tls.crt and tls.key for a webhook on 127.0.0.1, signed by the control plane's CA. */
export function webhookCertDir(cp: ControlPlane, dir: string): string {
  const { cert, key } = issueServingCertificate(cp.pki.dir, 'keyward-webhook');
  mkdirSync(dir, { recursive: true });
  copyFileSync(cert, join(dir, 'tls.crt'));
  copyFileSync(key, join(dir, 'tls.key'));
  return dir;
}

const rule = (resource: string) => ({
  apiGroups: ['keyward.dev'],
  apiVersions: ['v1alpha1'],
  operations: ['CREATE', 'UPDATE'],
  resources: [resource],
  scope: 'Namespaced',
});

/** Registers both webhooks for a server at `address` (host:port), failing closed. */
export async function registerAdmissionWebhooks(cp: ControlPlane, address: string): Promise<void> {
  const api = cp.kubeConfig.makeApiClient(AdmissionregistrationV1Api);
  const caBundle = readFileSync(cp.pki.caCert).toString('base64');
  const common = { failurePolicy: 'Fail', sideEffects: 'None', admissionReviewVersions: ['v1'], timeoutSeconds: 5, matchPolicy: 'Equivalent' };
  const mutating: V1MutatingWebhookConfiguration = {
    metadata: { name: 'keyward-keyrings' },
    webhooks: [{ name: 'keyrings.keyward.dev', clientConfig: { url: `https://${address}${keyRingWebhookPath}`, caBundle }, rules: [rule('keyrings')], ...common }],
  };
  const validating: V1ValidatingWebhookConfiguration = {
    metadata: { name: 'keyward-keypolicies' },
    webhooks: [{ name: 'keypolicies.keyward.dev', clientConfig: { url: `https://${address}${keyPolicyWebhookPath}`, caBundle }, rules: [rule('keypolicies')], ...common }],
  };
  await api.createMutatingWebhookConfiguration({ body: mutating });
  await api.createValidatingWebhookConfiguration({ body: validating });
}

/** A client for a user (CN) in groups (O), as an identity provider would present them. */
export function userKubeConfig(cp: ControlPlane, user: string, groups: readonly string[] = []): KubeConfig {
  const file = `user-${user.replace(/[^a-z0-9-]/gi, '_')}`;
  const { cert, key } = issueClientCertificate(cp.pki.dir, file, user, groups);
  const kubeConfig = new KubeConfig();
  kubeConfig.loadFromOptions({
    clusters: [{ name: 'test', server: cp.apiserverUrl, caData: readFileSync(cp.pki.caCert).toString('base64') }],
    users: [{ name: user, certData: readFileSync(cert).toString('base64'), keyData: readFileSync(key).toString('base64') }],
    contexts: [{ name: 'test', cluster: 'test', user }],
    currentContext: 'test',
  });
  return kubeConfig;
}
