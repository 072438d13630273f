// Kubernetes API clients whose requests share keep-alive connections. client-node 1.x gives every
// request a new https.Agent, so every call opens a TCP connection, builds a TLS context (CA,
// certificate and key parsed again) and handshakes; reconciling many KeyRings, that was about a
// sixth of the operator's CPU and a steady growth of its native memory.
import { createHash } from 'node:crypto';
import { Agent, type AgentOptions } from 'node:https';
import {
  createConfiguration,
  ServerConfiguration,
  type Configuration,
  type KubeConfig,
  type RequestContext,
  type SecurityAuthentication,
} from '@kubernetes/client-node';
import { setupError } from '../errors.js';

/** makeApiClient(api), with one keep-alive agent for as long as the TLS identity stays the same. */
export function keepAliveApiClient<T>(kubeConfig: KubeConfig, api: new (config: Configuration) => T): T {
  const cluster = kubeConfig.getCurrentCluster();
  if (!cluster) throw setupError('the kubeconfig has no current cluster');
  let shared: { identity: string; agent: Agent } | undefined;
  const auth: SecurityAuthentication = {
    getName: () => 'kubeconfig on keep-alive connections',
    applySecurityAuthentication: async (context: RequestContext) => {
      // Headers (tokens) and TLS files as client-node reads them for each request.
      await kubeConfig.applySecurityAuthentication(context);
      const made = context.getAgent();
      // Proxy agents (subclasses) and plain HTTP stay as client-node made them.
      if (!(made instanceof Agent) || made.constructor !== Agent) return;
      const identity = tlsIdentity(made.options);
      // A rotated client certificate or CA gets a new pool; the old one drains by itself.
      if (shared?.identity !== identity) shared = { identity, agent: new Agent({ ...made.options, keepAlive: true }) };
      context.setAgent(shared.agent);
    },
  };
  return new api(createConfiguration({ baseServer: new ServerConfiguration(cluster.server, {}), authMethods: { default: auth } }));
}

function tlsIdentity(options: AgentOptions): string {
  const hash = createHash('sha256');
  // client-node passes the files' contents as Buffers; anything else is compared as JSON.
  const parts: unknown[] = [options.ca, options.cert, options.key, options.pfx, options.passphrase, options.servername, options.rejectUnauthorized].flat();
  for (const part of parts) hash.update(Buffer.isBuffer(part) ? part : (JSON.stringify(part) ?? 'undefined')).update('\0');
  return hash.digest('hex');
}
