// The CSI e2e files start the provider in-process on a real control plane and SoftHSM2 token the
// same way: this starts it with a gRPC client on its socket, and stop() undoes it all in one call.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { CustomObjectsApi } from '@kubernetes/client-node';
import { keyPolicyResource, type KeyPolicyRule } from '../../core/api/keyPolicy.js';
import type { SoftHsmToken } from '../../core/hsm/softHsmToken.js';
import { createLogger } from '../../core/observability/logger.js';
import { CSIDriverProvider } from '../../proto/gen/csi/v1alpha1/service_pb.js';
import { startCsiProvider, type CsiProvider, type CsiProviderConfig } from '../../provider/csi/csiProvider.js';
import type { ControlPlane } from '../../testbed/control-plane/controlPlane.js';
import { grpcClient, type UnaryClient } from '../../testbed/grpcClient.js';

/** What a test chooses; the socket directory, the token's PIN, the kubeconfig and the audit file are the fixture's. */
export type InProcessProviderOptions = Omit<CsiProviderConfig, 'socketDir' | 'modulePath' | 'tokenLabel' | 'pin' | 'kubeconfigPath' | 'auditLog'> & {
  /** Prefix of the work directory made under the system temp dir. */
  workDirPrefix: string;
};

export interface InProcessProvider {
  provider: CsiProvider;
  client: UnaryClient<(typeof CSIDriverProvider)['method']>;
  /** Holds the providers/ socket directory and the audit file; removed by stop(). */
  workDir: string;
  /** The provider's audit log, one JSON record a line. */
  auditFile: string;
  /** Closes the client, stops the provider and removes workDir, in that order; safe to call twice. */
  stop(): Promise<void>;
}

/** Starts the provider (silent log) against `cp`'s apiserver and `softhsm`'s token. */
export async function startInProcessProvider(
  cp: Pick<ControlPlane, 'kubeconfigPath'>,
  softhsm: Pick<SoftHsmToken, 'modulePath' | 'label' | 'pin'>,
  { workDirPrefix, ...options }: InProcessProviderOptions,
): Promise<InProcessProvider> {
  const workDir = mkdtempSync(join(tmpdir(), workDirPrefix));
  const removeWorkDir = (): void => rmSync(workDir, { recursive: true, force: true });
  const auditFile = join(workDir, 'audit.jsonl');
  let provider: CsiProvider;
  try {
    provider = await startCsiProvider(
      {
        socketDir: join(workDir, 'providers'),
        modulePath: softhsm.modulePath,
        tokenLabel: softhsm.label,
        pin: softhsm.pin,
        kubeconfigPath: cp.kubeconfigPath,
        auditLog: auditFile,
        ...options,
      },
      createLogger('csi-provider', 'silent'),
    );
  } catch (err) {
    removeWorkDir();
    throw err;
  }
  const client = grpcClient(CSIDriverProvider, `unix:${provider.socketPath}`);
  let stopping: Promise<void> | undefined;
  const stop = (): Promise<void> =>
    (stopping ??= (async () => {
      client.close();
      await provider.stop();
      removeWorkDir();
    })());
  return { provider, client, workDir, auditFile, stop };
}

/** Creates the KeyPolicy `namespace`/`name` with these rules. */
export async function createKeyPolicy(objects: CustomObjectsApi, namespace: string, name: string, rules: KeyPolicyRule[]): Promise<void> {
  await objects.createNamespacedCustomObject({
    ...keyPolicyResource,
    namespace,
    body: { apiVersion: 'keyward.dev/v1alpha1', kind: 'KeyPolicy', metadata: { name, namespace }, spec: { rules } },
  });
}
