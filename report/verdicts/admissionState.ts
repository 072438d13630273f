// Whether Keyward's admission webhooks are registered and fail closed. Management of KeyRings
// (rotation, version states, destruction and its two-person stamps) and the cross-policy checks of
// KeyPolicies are enforced only there: without the KeyRing webhook, anyone RBAC lets patch a
// KeyRing manages it, and the destruction stamps are whatever the writer puts in.
import type { Webhook, WebhookConfiguration } from '../clusterSnapshot.js';
import { gap, ok, type Evidence } from './assessment.js';

export type WebhookStance = 'fails-closed' | 'fails-open' | 'missing';

export interface AdmissionState {
  keyRings: WebhookStance;
  keyPolicies: WebhookStance;
  evidence: Evidence[];
}

const covers = (webhook: Webhook, resource: string): boolean =>
  (webhook.rules ?? []).some(
    (rule) =>
      rule.apiGroups?.includes('keyward.dev') &&
      rule.resources?.includes(resource) &&
      (rule.operations ?? []).some((op) => op === 'UPDATE' || op === '*'),
  );

function stance(configs: WebhookConfiguration[], resource: string, evidence: Evidence[]): WebhookStance {
  const found = configs.flatMap((config) => (config.webhooks ?? []).filter((w) => covers(w, resource)).map((webhook) => ({ config, webhook })));
  if (found.length === 0) {
    evidence.push(gap(`no admission webhook checks ${resource} updates: their management is not authorised by KeyPolicy`));
    return 'missing';
  }
  let result: WebhookStance = 'fails-closed';
  for (const { config, webhook } of found) {
    // admissionregistration.k8s.io/v1 defaults failurePolicy to Fail.
    const policy = webhook.failurePolicy ?? 'Fail';
    const where = `${config.kind} ${config.metadata.name ?? ''}, webhook ${webhook.name}`;
    if (policy === 'Fail') evidence.push(ok(`${where} checks ${resource} and fails closed (failurePolicy Fail)`));
    else {
      evidence.push(gap(`${where} checks ${resource} but fails open (failurePolicy ${policy}): while it is down, changes go unchecked`));
      result = 'fails-open';
    }
  }
  return result;
}

export function admissionState(configs: WebhookConfiguration[]): AdmissionState {
  const evidence: Evidence[] = [];
  return { keyRings: stance(configs, 'keyrings', evidence), keyPolicies: stance(configs, 'keypolicies', evidence), evidence };
}
