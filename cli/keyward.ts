#!/usr/bin/env node
// keyward: one CLI for every part (operator, kms-plugin, csi-provider) and the admin verbs.
// Also a kubectl plugin when installed as `kubectl-keyward`.
import { randomBytes, randomUUID } from 'node:crypto';
import { createReadStream, existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { userInfo } from 'node:os';
import { join, resolve } from 'node:path';
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { createAuditLog } from '../core/audit/auditLog.js';
import { KeywardError } from '../core/errors.js';
import { HsmToken } from '../core/hsm/hsmToken.js';
import { acquirePkcs11Module, findSoftHsmModule, releasePkcs11Module } from '../core/hsm/pkcs11Module.js';
import { RingStore } from '../core/hsm/ringStore.js';
import { type VersionState } from '../core/hsm/ringState.js';
import { readPinFile } from '../core/hsm/pinFile.js';
import { softHsmConfig } from '../core/hsm/softHsmToken.js';
import { initToken } from '../core/hsm/tokenInit.js';
import { missingMechanisms } from '../core/hsm/requiredMechanisms.js';
import { maxSealedPlaintextBytes, sealSecret } from '../core/formats/sealedSecret.js';
import { createLogger } from '../core/observability/logger.js';
import { startKmsPlugin } from '../provider/kms/kmsPlugin.js';

const usage = `usage: keyward <command> [options]

commands:
  hsm init --dir DIR [--label L]           create a development SoftHSM2 token in DIR (PINs written to files there)
  hsm check [--pin-file PATH]              load the PKCS#11 module; with a PIN file, also find the token and log in
  ring create NAME [--namespace NS]        create a ring with version 1 as primary
  ring rotate NAME [--namespace NS]        generate a new version and make it primary
  ring list                                list rings and their versions
  ring disable|enable NAME --version N     change a version's state
  encrypt --ring NAME [--namespace NS] [--in FILE]
                                           seal a secret for a SecretProviderClass: reads FILE or standard input
                                           (bytes as given, up to 64 KiB), prints one line of base64;
                                           audited to --audit-log PATH (default: standard error)
  kms-plugin --socket PATH --ring NAME     serve the KMS v2 API on a unix socket
  csi-provider                             serve the Secrets Store CSI provider API on <socket-dir>/keyward.sock
  operator                                 reconcile KeyRings into HSM keys (leader-elected)
  etcd-scanner --ring NAME --provider-name NAME --etcd-endpoints URL[,URL]
                                           read-only: count etcd objects per KMS key id, report them in the HSM
  report [-o markdown|json|html] [--output-file PATH] [--kubeconfig PATH] [--context NAME]
                                           the compliance report: each key-management practice, its verdict
                                           (holds, partial, fails, not-built, unknown) and the evidence read
                                           from the cluster (Markdown by default)
  volume unlock --dir DIR --key FILE       in a pod: encrypt DIR (fscrypt v2) on first use, else unlock it with the
                                           delivered key whose identifier its policy names (FILE.v<N> siblings too)
  volume hold --dir DIR                    native sidecar: on SIGTERM drop this user's claim on DIR's key (lock)
  volume lock --dir DIR                    drop this user's claim on DIR's key now
  volume status --dir DIR [-o json]        encrypted?, key identifier, key version, key present?
  volume rekey --dir DIR --key FILE        copy DIR from the delivered version it is under to the primary
                                           (FILE, versioned by its FILE.v<N> sibling) and swap it in; resumable
  volume rekey --dir DIR --from-key OLD --to-key NEW --to-version N
                                           the same with the two keys named

HSM options (hsm check, ring, encrypt, kms-plugin, csi-provider, operator, etcd-scanner):
  --pkcs11-module PATH   PKCS#11 library (default: SoftHSM2)
  --token-label LABEL    token to use (default: keyward)
  --pin-file PATH        file holding the user PIN (never pass a PIN on the command line)

kms-plugin options:
  --metrics-address H:P  /metrics, /healthz, /livez listener (default 127.0.0.1:9464)
  --metrics-tls-address H:P  also serve /metrics here over HTTPS, only to clients with a certificate
                         from --metrics-client-ca-file (for Prometheus on a static pod's node address)
  --metrics-tls-cert-file PATH, --metrics-tls-key-file PATH  that listener's certificate and key
  --metrics-client-ca-file PATH  the CA whose client certificates may scrape it
  --audit-log PATH       audit records (default: standard output)
  --refresh SECONDS      how often to re-read the ring from the HSM (default 2)
  --node-name NAME       this node, in the key-use record the operator reads (default: NODE_NAME, else the hostname)

etcd-scanner options (never decrypts; reads keys and stored key ids only):
  --provider-name NAME   the KMS provider's name in the EncryptionConfiguration (its envelopes are counted)
  --etcd-endpoints URLS  comma-separated http(s)://host:port, tried in order
  --etcd-cafile PATH, --etcd-certfile PATH, --etcd-keyfile PATH
                         TLS to etcd (kubeadm: /etc/kubernetes/pki/etcd/ca.crt, apiserver-etcd-client.crt/.key)
  --resources LIST       encrypted resources, as the EncryptionConfiguration names them (default secrets)
  --interval SECONDS     time between scans (default 300); a scan request from the operator is answered within seconds
  --page-size N          keys per etcd read (default 500; halved while a response is over 64 MiB)
  --pages-per-second N   etcd reads per second at most (default 10)
  --metrics-address H:P  /metrics, /healthz, /livez listener (default 127.0.0.1:9468)
  --audit-log PATH       audit records (default: standard output)

csi-provider options (the apiserver from KUBECONFIG, or in-cluster):
  --socket-dir DIR       the driver's provider directory (default /var/run/secrets-store-csi-providers)
  --audience AUD         audience of the pod tokens the CSIDriver's tokenRequests mint (default keyward)
  --node-name NAME       this node, whose pods are watched so a deleted pod's token stops working
                         (default: $NODE_NAME; required)
  --metrics-address H:P  /metrics, /healthz, /livez listener (default 127.0.0.1:9466)
  --audit-log PATH       audit records (default: standard output)
  --token-review-ttl SECONDS  how long a TokenReview is reused, at most the token's life (default 300)
  --material-ttl SECONDS how long a derived key or opened secret is kept in memory (default 300)
  --ring-refresh SECONDS how often rings are re-read from the HSM while mounts arrive (default 2)
  --max-in-flight-mib MIB  request bytes handled at once; past it a Mount is refused as Overloaded (default 2)

volume options (unlock, hold, lock, rekey; refusals exit 1 naming NotEncryptable, NotEmpty,
NotEncrypted, ForeignKey, KeyUnreadable or RekeyInconsistent, and change nothing):
  --key-version N        unlock: the primary's version when no FILE.v<N> sibling says it
  --audit-log PATH       audit records (default: standard output)
  --pod-name, --pod-namespace, --service-account  the workload, for the audit record
                         (default: $POD_NAME, $POD_NAMESPACE, $SERVICE_ACCOUNT from the downward API)

operator options (the apiserver from KUBECONFIG, or in-cluster):
  --metrics-address H:P  /metrics, /healthz, /livez listener (default 127.0.0.1:9465)
  --lease-namespace NS   namespace of the leader-election Lease (default: POD_NAMESPACE, else default)
  --identity ID          this replica's name in the Lease (default: host name and pid)
  --workers N            KeyRings reconciled at once (default 4)
  --lease-duration SECONDS  how long a dead leader blocks its successor (default 15)
  --audit-log PATH       audit records (default: standard output)
  --webhook-address H:P  serve the admission webhook here (KeyPolicy enforcement; default: off)
  --webhook-cert-dir DIR holds tls.crt and tls.key for the webhook
  --approval-window MINUTES  how long a destruction request waits for approval (default 60)
  --re-encryption true|false  rewrite etcd after a rotation (default true); false when the operator
                         may not list and update the encrypted resources: retirement then waits
                         for re-encryption by the cluster admin
`;

const hsmOptions = {
  'pkcs11-module': { type: 'string' },
  'token-label': { type: 'string', default: 'keyward' },
  'pin-file': { type: 'string' },
  namespace: { type: 'string', default: '' },
} as const satisfies ParseArgsConfig['options'];

function parse<O extends NonNullable<ParseArgsConfig['options']>>(args: string[], options: O) {
  try {
    return parseArgs({ args, options, allowPositionals: true, strict: true });
  } catch (err) {
    throw new KeywardError('InvalidArgument', (err as Error).message);
  }
}

function openToken(values: { 'pkcs11-module'?: string; 'token-label': string; 'pin-file'?: string }): HsmToken {
  return HsmToken.open({
    modulePath: values['pkcs11-module'] ?? findSoftHsmModule(),
    tokenLabel: values['token-label'],
    pin: readPinFile(values['pin-file']),
  });
}

function requireName(positionals: string[], what: string): string {
  const name = positionals[0];
  if (!name) throw new KeywardError('InvalidArgument', `${what} needs a ring name`);
  return name;
}

function hsmInit(args: string[]): void {
  const { values } = parse(args, { dir: { type: 'string' }, label: { type: 'string', default: 'keyward' }, 'pkcs11-module': { type: 'string' } });
  if (!values.dir) throw new KeywardError('InvalidArgument', 'hsm init needs --dir');
  const dir = resolve(values.dir);
  const tokenDir = join(dir, 'tokens');
  const configPath = join(dir, 'softhsm2.conf');
  mkdirSync(tokenDir, { recursive: true, mode: 0o700 });
  writeFileSync(configPath, softHsmConfig(tokenDir), { mode: 0o600 });
  const pinFile = join(dir, 'user.pin');
  const soPinFile = join(dir, 'so.pin');
  if (!existsSync(pinFile)) writeFileSync(pinFile, randomBytes(16).toString('hex'), { mode: 0o600 });
  if (!existsSync(soPinFile)) writeFileSync(soPinFile, randomBytes(16).toString('hex'), { mode: 0o600 });
  process.env.SOFTHSM2_CONF = configPath;
  initToken(values['pkcs11-module'] ?? findSoftHsmModule(), values.label, readPinFile(soPinFile), readPinFile(pinFile));
  process.stdout.write(`token '${values.label}' ready\nexport SOFTHSM2_CONF=${configPath}\nPIN file: ${pinFile}\n`);
}

/** The chart's pre-install check: fails, naming the module or the token, before anything is deployed. */
function hsmCheck(args: string[]): void {
  const { values, positionals } = parse(args, hsmOptions);
  if (positionals.length > 0) throw new KeywardError('InvalidArgument', 'hsm check takes no arguments');
  const modulePath = values['pkcs11-module'] ?? findSoftHsmModule();
  if (!values['pin-file']) {
    // The token's storage may not exist yet (a volume created with the release): the module alone.
    acquirePkcs11Module(modulePath);
    releasePkcs11Module(modulePath);
    process.stdout.write(`PKCS#11 module ${modulePath} loads\n`);
    return;
  }
  const token = openToken(values);
  try {
    const missing = missingMechanisms(token.mechanisms());
    if (missing.length > 0) {
      throw new KeywardError('FailedPrecondition', `PKCS#11 module ${modulePath} does not offer, on token '${values['token-label']}', what these KeyRings need: ${missing.join('; ')}`);
    }
  } finally {
    token.close();
  }
  process.stdout.write(`PKCS#11 module ${modulePath} loads; token '${values['token-label']}' found, PIN accepted, every mechanism Keyward uses offered\n`);
}

async function ring(args: string[]): Promise<void> {
  const [verb, ...rest] = args;
  const { values, positionals } = parse(rest, { ...hsmOptions, version: { type: 'string' } });
  const token = openToken(values);
  try {
    const store = new RingStore(token);
    const ref = () => ({ name: requireName(positionals, `ring ${verb}`), namespace: values.namespace });
    switch (verb) {
      case 'create': {
        const created = await store.create(ref());
        process.stdout.write(`ring ${created.name} created: version 1 primary, key id ${created.versions[0]?.keyId}\n`);
        break;
      }
      case 'rotate': {
        const rotated = await store.rotate(ref());
        const primary = rotated.versions.find((v) => v.number === rotated.primary);
        process.stdout.write(`ring ${rotated.name} rotated: version ${rotated.primary} primary, key id ${primary?.keyId}\n`);
        break;
      }
      case 'list':
        for (const r of await store.list()) {
          process.stdout.write(`${r.namespace ? `${r.namespace}/` : ''}${r.name}  primary=${r.primary}${r.released ? `  released from its name ${r.released}` : ''}\n`);
          for (const v of r.versions) process.stdout.write(`  v${v.number}  ${v.state.padEnd(16)} ${v.keyId}  created ${v.createdAt}\n`);
        }
        break;
      case 'enable':
      case 'disable': {
        const number = Number(values.version);
        if (!Number.isInteger(number) || number < 1) throw new KeywardError('InvalidArgument', `ring ${verb} needs --version N (a positive integer)`);
        const state: VersionState = verb === 'enable' ? 'Enabled' : 'Disabled';
        await store.setVersionState(ref(), number, state);
        process.stdout.write(`version ${number} is now ${state}\n`);
        break;
      }
      default:
        throw new KeywardError('InvalidArgument', `unknown ring command '${verb ?? ''}' (create, rotate, list, enable, disable)`);
    }
  } finally {
    token.close();
  }
}

async function kmsPlugin(args: string[]): Promise<void> {
  const { values } = parse(args, {
    ...hsmOptions,
    socket: { type: 'string' },
    ring: { type: 'string' },
    'metrics-address': { type: 'string', default: '127.0.0.1:9464' },
    'metrics-tls-address': { type: 'string' },
    'metrics-tls-cert-file': { type: 'string' },
    'metrics-tls-key-file': { type: 'string' },
    'metrics-client-ca-file': { type: 'string' },
    'audit-log': { type: 'string', default: '-' },
    refresh: { type: 'string', default: '2' },
    'node-name': { type: 'string', default: process.env.NODE_NAME ?? '' },
  });
  const tlsAddress = values['metrics-tls-address'];
  const tlsFiles = { certFile: values['metrics-tls-cert-file'], keyFile: values['metrics-tls-key-file'], clientCaFile: values['metrics-client-ca-file'] };
  if (tlsAddress && !(tlsFiles.certFile && tlsFiles.keyFile && tlsFiles.clientCaFile)) {
    throw new KeywardError('InvalidArgument', '--metrics-tls-address needs --metrics-tls-cert-file, --metrics-tls-key-file and --metrics-client-ca-file');
  }
  if (!values.socket) throw new KeywardError('InvalidArgument', 'kms-plugin needs --socket PATH');
  if (!values.ring) throw new KeywardError('InvalidArgument', 'kms-plugin needs --ring NAME');
  const refreshSeconds = Number(values.refresh);
  if (!(refreshSeconds >= 0.1 && refreshSeconds <= 10)) throw new KeywardError('InvalidArgument', '--refresh must be between 0.1 and 10 seconds');
  const log = createLogger('kms-plugin');
  const plugin = await startKmsPlugin(
    {
      socketPath: resolve(values.socket),
      modulePath: values['pkcs11-module'] ?? findSoftHsmModule(),
      tokenLabel: values['token-label'],
      pin: readPinFile(values['pin-file']),
      ring: { name: values.ring, namespace: values.namespace },
      metricsAddress: values['metrics-address'],
      metricsTls:
        tlsAddress && tlsFiles.certFile && tlsFiles.keyFile && tlsFiles.clientCaFile
          ? { address: tlsAddress, certFile: tlsFiles.certFile, keyFile: tlsFiles.keyFile, clientCaFile: tlsFiles.clientCaFile }
          : undefined,
      auditLog: values['audit-log'],
      refreshMs: refreshSeconds * 1000,
      nodeName: values['node-name'] || undefined,
    },
    log,
  );
  stopOnSignal(log, () => plugin.stop());
}

async function etcdScanner(args: string[]): Promise<void> {
  const { values, positionals } = parse(args, {
    ...hsmOptions,
    ring: { type: 'string' },
    'provider-name': { type: 'string' },
    'etcd-endpoints': { type: 'string' },
    'etcd-cafile': { type: 'string' },
    'etcd-certfile': { type: 'string' },
    'etcd-keyfile': { type: 'string' },
    resources: { type: 'string', default: 'secrets' },
    interval: { type: 'string', default: '300' },
    'page-size': { type: 'string', default: '500' },
    'pages-per-second': { type: 'string', default: '10' },
    'metrics-address': { type: 'string', default: '127.0.0.1:9468' },
    'audit-log': { type: 'string', default: '-' },
  });
  if (positionals.length > 0) throw new KeywardError('InvalidArgument', 'etcd-scanner takes no arguments');
  if (!values.ring) throw new KeywardError('InvalidArgument', 'etcd-scanner needs --ring NAME');
  if (!values['provider-name']) throw new KeywardError('InvalidArgument', 'etcd-scanner needs --provider-name NAME (the KMS provider in the EncryptionConfiguration)');
  const endpoints = (values['etcd-endpoints'] ?? '').split(',').map((e) => e.trim()).filter(Boolean);
  if (endpoints.length === 0) throw new KeywardError('InvalidArgument', 'etcd-scanner needs --etcd-endpoints URL[,URL]');
  if (Boolean(values['etcd-certfile']) !== Boolean(values['etcd-keyfile'])) throw new KeywardError('InvalidArgument', '--etcd-certfile and --etcd-keyfile go together');
  const pageSize = Number(values['page-size']);
  if (!(Number.isInteger(pageSize) && pageSize >= 1 && pageSize <= 10_000)) throw new KeywardError('InvalidArgument', '--page-size must be a whole number from 1 to 10000');
  const pagesPerSecond = Number(values['pages-per-second']);
  if (!(pagesPerSecond > 0 && pagesPerSecond <= 1000)) throw new KeywardError('InvalidArgument', '--pages-per-second must be above 0 and at most 1000');
  const { startEtcdScanner } = await import('../scanner/etcdScanner.js');
  const log = createLogger('etcd-scanner');
  const scanner = await startEtcdScanner(
    {
      modulePath: values['pkcs11-module'] ?? findSoftHsmModule(),
      tokenLabel: values['token-label'],
      pin: readPinFile(values['pin-file']),
      ring: { name: values.ring, namespace: values.namespace },
      provider: values['provider-name'],
      endpoints,
      tls: { caFile: values['etcd-cafile'], certFile: values['etcd-certfile'], keyFile: values['etcd-keyfile'] },
      resources: values.resources.split(',').map((r) => r.trim()).filter(Boolean),
      intervalMs: secondsOption(values.interval, 'interval', 1, 7 * 24 * 3600),
      pageSize,
      pagesPerSecond,
      metricsAddress: values['metrics-address'],
      auditLog: values['audit-log'],
    },
    log,
  );
  stopOnSignal(log, () => scanner.stop());
}

/** SIGTERM or SIGINT stops the component (draining what is in flight), then the process exits. */
function stopOnSignal(log: ReturnType<typeof createLogger>, stop: () => Promise<void>): void {
  for (const signal of ['SIGTERM', 'SIGINT'] as const) {
    process.once(signal, () => {
      log.info({ signal }, 'shutting down');
      stop().then(
        () => process.exit(0),
        () => process.exit(1),
      );
    });
  }
}

/** A --flag in seconds, within bounds, as milliseconds. */
function secondsOption(value: string, flag: string, min: number, max: number): number {
  const seconds = Number(value);
  if (!(seconds >= min && seconds <= max)) throw new KeywardError('InvalidArgument', `--${flag} must be between ${min} and ${max} seconds`);
  return seconds * 1000;
}

async function csiProvider(args: string[]): Promise<void> {
  const { values } = parse(args, {
    ...hsmOptions,
    'socket-dir': { type: 'string', default: '/var/run/secrets-store-csi-providers' },
    audience: { type: 'string', default: 'keyward' },
    'node-name': { type: 'string', default: process.env.NODE_NAME ?? '' },
    'metrics-address': { type: 'string', default: '127.0.0.1:9466' },
    'audit-log': { type: 'string', default: '-' },
    'token-review-ttl': { type: 'string', default: '300' },
    'material-ttl': { type: 'string', default: '300' },
    'ring-refresh': { type: 'string', default: '2' },
    'max-in-flight-mib': { type: 'string', default: '2' },
  });
  if (!values.audience) throw new KeywardError('InvalidArgument', '--audience must not be empty');
  if (!values['node-name']) throw new KeywardError('InvalidArgument', '--node-name (or NODE_NAME) is required: the provider watches its node\'s pods');
  const tokenReviewTtlMs = secondsOption(values['token-review-ttl'], 'token-review-ttl', 1, 3600);
  const materialTtlMs = secondsOption(values['material-ttl'], 'material-ttl', 1, 3600);
  const ringRefreshMs = secondsOption(values['ring-refresh'], 'ring-refresh', 0.1, 60);
  const inFlightMib = Number(values['max-in-flight-mib']);
  if (!(Number.isInteger(inFlightMib) && inFlightMib >= 1 && inFlightMib <= 16)) throw new KeywardError('InvalidArgument', '--max-in-flight-mib must be a whole number from 1 to 16');
  const { startCsiProvider } = await import('../provider/csi/csiProvider.js');
  const log = createLogger('csi-provider');
  const provider = await startCsiProvider(
    {
      socketDir: resolve(values['socket-dir']),
      modulePath: values['pkcs11-module'] ?? findSoftHsmModule(),
      tokenLabel: values['token-label'],
      pin: readPinFile(values['pin-file']),
      audience: values.audience,
      nodeName: values['node-name'],
      metricsAddress: values['metrics-address'],
      auditLog: values['audit-log'],
      tokenReviewTtlMs,
      materialTtlMs,
      ringRefreshMs,
      maxInFlightBytes: inFlightMib * 1024 * 1024,
    },
    log,
  );
  stopOnSignal(log, () => provider.stop());
}

async function operator(args: string[]): Promise<void> {
  const { values } = parse(args, {
    ...hsmOptions,
    'metrics-address': { type: 'string', default: '127.0.0.1:9465' },
    'lease-namespace': { type: 'string', default: process.env.POD_NAMESPACE ?? 'default' },
    identity: { type: 'string' },
    workers: { type: 'string', default: '4' },
    'lease-duration': { type: 'string', default: '15' },
    'audit-log': { type: 'string', default: '-' },
    'webhook-address': { type: 'string' },
    'webhook-cert-dir': { type: 'string' },
    'approval-window': { type: 'string', default: '60' },
    're-encryption': { type: 'string', default: 'true' },
  });
  const reEncryption = values['re-encryption'];
  if (reEncryption !== 'true' && reEncryption !== 'false') throw new KeywardError('InvalidArgument', `--re-encryption must be true or false, not '${reEncryption.slice(0, 40)}'`);
  const approvalMinutes = Number(values['approval-window']);
  if (!(approvalMinutes >= 1 && approvalMinutes <= 7 * 24 * 60)) throw new KeywardError('InvalidArgument', '--approval-window must be between 1 and 10080 minutes');
  if (values['webhook-address'] && !values['webhook-cert-dir']) throw new KeywardError('InvalidArgument', '--webhook-address needs --webhook-cert-dir (tls.crt and tls.key)');
  const workers = Number(values.workers);
  if (!Number.isInteger(workers) || workers < 1 || workers > 64) throw new KeywardError('InvalidArgument', '--workers must be a whole number from 1 to 64');
  const leaseSeconds = Number(values['lease-duration']);
  if (!(leaseSeconds >= 2 && leaseSeconds <= 300)) throw new KeywardError('InvalidArgument', '--lease-duration must be between 2 and 300 seconds');
  // Loaded here, not at the top: the node-side commands should not pay for the Kubernetes client.
  const { KubeConfig } = await import('@kubernetes/client-node');
  const { startOperator } = await import('../operator/operator.js');
  const kubeConfig = new KubeConfig();
  kubeConfig.loadFromDefault();
  const log = createLogger('operator');
  const running = await startOperator(
    {
      kubeConfig,
      modulePath: values['pkcs11-module'] ?? findSoftHsmModule(),
      tokenLabel: values['token-label'],
      pin: readPinFile(values['pin-file']),
      leaseNamespace: values['lease-namespace'],
      identity: values.identity,
      metricsAddress: values['metrics-address'],
      workers,
      // client-go's proportions: renew within 2/3 of the lease, retry every 2/15 of it.
      leaseDurationMs: leaseSeconds * 1000,
      renewDeadlineMs: (leaseSeconds * 2000) / 3,
      retryPeriodMs: (leaseSeconds * 2000) / 15,
      audit: createAuditLog('operator', values['audit-log']),
      admission: values['webhook-address'] ? { address: values['webhook-address'], certDir: values['webhook-cert-dir'] ?? '' } : undefined,
      approvalWindowMs: approvalMinutes * 60_000,
      reEncryption: reEncryption === 'true',
    },
    log,
  );
  log.info({ metrics: running.metricsAddress }, 'operator started');
  let signalled = false;
  stopOnSignal(log, () => {
    signalled = true;
    return running.stop();
  });
  // Leadership lost without being asked to stop: exit, so the Deployment starts a fresh replica.
  await running.done;
  if (!signalled) {
    log.error('leadership lost; exiting');
    await running.stop();
    process.exit(1);
  }
}

/** Reads the secret, stopping past the limit so an oversize input is refused without being kept. */
async function readSecret(path: string | undefined): Promise<Buffer> {
  const source = path === undefined ? process.stdin : createReadStream(path);
  const chunks: Buffer[] = [];
  let length = 0;
  try {
    for await (const chunk of source) {
      chunks.push(chunk as Buffer);
      length += (chunk as Buffer).length;
      if (length > maxSealedPlaintextBytes) break;
    }
  } catch (err) {
    for (const chunk of chunks) chunk.fill(0);
    throw new KeywardError('InvalidArgument', `cannot read ${path ?? 'standard input'}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`, {
      cause: err,
    });
  } finally {
    if (path !== undefined) source.destroy();
  }
  const secret = Buffer.concat(chunks, length);
  for (const chunk of chunks) chunk.fill(0);
  if (length > maxSealedPlaintextBytes) {
    secret.fill(0);
    throw new KeywardError('InvalidArgument', `the secret from ${path ?? 'standard input'} is over ${maxSealedPlaintextBytes} bytes; the limit is 64 KiB`);
  }
  return secret;
}

async function encrypt(args: string[]): Promise<void> {
  const { values, positionals } = parse(args, { ...hsmOptions, ring: { type: 'string' }, in: { type: 'string' }, 'audit-log': { type: 'string', default: '/dev/stderr' } });
  if (!values.ring) throw new KeywardError('InvalidArgument', 'encrypt needs --ring NAME');
  if (positionals.length > 0) throw new KeywardError('InvalidArgument', 'encrypt takes no arguments; give the secret with --in FILE or on standard input');
  const plaintext = await readSecret(values.in);
  const audit = createAuditLog('cli', values['audit-log']);
  const record = { requestId: randomUUID(), actor: `os-user:${userInfo().username}`, operation: 'encrypt', ring: `${values.namespace ? `${values.namespace}/` : ''}${values.ring}` };
  const token = openToken(values);
  try {
    const sealed = await sealSecret(token, new RingStore(token), { name: values.ring, namespace: values.namespace }, plaintext);
    // Bytes 2-5 of a sealed value are its key version (core/formats/sealedSecret.ts).
    audit.record({ ...record, result: 'allowed', keyVersion: sealed.readUInt32BE(2) });
    process.stdout.write(`${sealed.toString('base64')}\n`);
  } catch (err) {
    audit.record({ ...record, result: 'failed', code: err instanceof KeywardError ? err.code : 'Internal', reason: err instanceof KeywardError ? err.message : 'internal error' });
    throw err;
  } finally {
    plaintext.fill(0);
    token.close();
    await audit.flush();
  }
}

/** A --flag holding a key version: a positive whole number. */
function versionOption(value: string | undefined, flag: string): number | undefined {
  if (value === undefined) return undefined;
  const version = Number(value);
  if (!Number.isInteger(version) || version < 1) throw new KeywardError('InvalidArgument', `--${flag} must be a key version (a positive whole number)`);
  return version;
}

async function volume([verb, ...args]: string[]): Promise<void> {
  const { values, positionals } = parse(args, {
    dir: { type: 'string' },
    key: { type: 'string' },
    'key-version': { type: 'string' },
    'from-key': { type: 'string' },
    'to-key': { type: 'string' },
    'to-version': { type: 'string' },
    output: { type: 'string', short: 'o', default: 'text' },
    'audit-log': { type: 'string', default: '-' },
    'pod-name': { type: 'string', default: process.env.POD_NAME ?? '' },
    'pod-namespace': { type: 'string', default: process.env.POD_NAMESPACE ?? '' },
    'service-account': { type: 'string', default: process.env.SERVICE_ACCOUNT ?? '' },
  });
  if (positionals.length > 0) throw new KeywardError('InvalidArgument', `volume ${verb ?? ''} takes no arguments`);
  if (!values.dir) throw new KeywardError('InvalidArgument', `volume ${verb ?? ''} needs --dir DIR`);
  const dir = resolve(values.dir);
  // Loaded here: only volume commands need the fscrypt addon.
  const volumes = await import('../volume/volumeCommands.js');
  if (verb === 'status') {
    if (values.output !== 'text' && values.output !== 'json') throw new KeywardError('InvalidArgument', '-o must be text or json');
    process.stdout.write(volumes.formatStatus(volumes.volumeStatus(dir), values.output));
    return;
  }
  const audit = createAuditLog('volume', values['audit-log']);
  const workload = { podName: values['pod-name'] || undefined, podNamespace: values['pod-namespace'] || undefined, serviceAccount: values['service-account'] || undefined };
  let outcome;
  switch (verb) {
    case 'unlock':
      if (!values.key) throw new KeywardError('InvalidArgument', 'volume unlock needs --key FILE (the delivered primary key)');
      outcome = await volumes.audited(audit, 'volumeUnlock', dir, workload, () =>
        volumes.unlockVolume({ dir, keyFile: resolve(values.key!), keyVersion: versionOption(values['key-version'], 'key-version') }),
      );
      break;
    case 'lock':
      outcome = await volumes.audited(audit, 'volumeLock', dir, workload, () => volumes.lockVolume(dir));
      break;
    case 'hold': {
      const stop = new Promise((resolveStop) => ['SIGTERM', 'SIGINT'].forEach((signal) => process.once(signal, resolveStop)));
      process.stderr.write(`keyward volume hold: holding ${dir}; its key is dropped on SIGTERM\n`);
      outcome = await volumes.audited(audit, 'volumeLock', dir, workload, () => volumes.holdVolume(dir, stop));
      break;
    }
    case 'rekey': {
      if (values.key) {
        if (values['from-key'] || values['to-key'] || values['to-version']) throw new KeywardError('InvalidArgument', 'volume rekey takes either --key FILE or --from-key, --to-key and --to-version');
        const options = { dir, keyFile: resolve(values.key) };
        outcome = await volumes.audited(audit, 'volumeRekey', dir, workload, () => volumes.rekeyToPrimary(options));
        break;
      }
      const toVersion = versionOption(values['to-version'], 'to-version');
      if (!values['from-key'] || !values['to-key'] || toVersion === undefined) throw new KeywardError('InvalidArgument', 'volume rekey needs --key FILE, or --from-key FILE, --to-key FILE and --to-version N');
      const options = { dir, fromKeyFile: resolve(values['from-key']), toKeyFile: resolve(values['to-key']), toVersion };
      outcome = await volumes.audited(audit, 'volumeRekey', dir, workload, () => volumes.rekeyVolume(options));
      break;
    }
    default:
      throw new KeywardError('InvalidArgument', `unknown volume command '${verb ?? ''}' (unlock, hold, lock, status, rekey)`);
  }
  process.stderr.write(`keyward volume ${verb}: ${outcome.code}: ${outcome.message}\n`);
}

async function report(args: string[]): Promise<void> {
  const { values, positionals } = parse(args, {
    output: { type: 'string', short: 'o', default: 'markdown' },
    'output-file': { type: 'string' },
    kubeconfig: { type: 'string' },
    context: { type: 'string' },
  });
  if (positionals.length > 0) throw new KeywardError('InvalidArgument', 'report takes no arguments');
  // Loaded here: only the report needs it.
  const { parseFormat, runReport } = await import('../report/reportCommand.js');
  await runReport({ format: parseFormat(values.output), outputFile: values['output-file'], kubeconfig: values.kubeconfig, context: values.context });
}

const commands: Record<string, (args: string[]) => Promise<void>> = {
  hsm: ([verb, ...rest]) =>
    Promise.resolve().then(() => {
      if (verb === 'init') hsmInit(rest);
      else if (verb === 'check') hsmCheck(rest);
      else throw new KeywardError('InvalidArgument', `unknown hsm command '${verb ?? ''}' (init, check)`);
    }),
  ring,
  encrypt,
  'kms-plugin': kmsPlugin,
  'csi-provider': csiProvider,
  'etcd-scanner': etcdScanner,
  operator,
  volume,
  report,
};

const [command, ...rest] = process.argv.slice(2);
const run = command ? commands[command] : undefined;
if (!run) {
  process.stderr.write(command && command !== 'help' && command !== '--help' ? `keyward: unknown command '${command}'\n\n${usage}` : usage);
  process.exitCode = command && command !== 'help' && command !== '--help' ? 2 : 0;
} else {
  run(rest).catch((err: unknown) => {
    const message = err instanceof KeywardError ? err.message : `internal error: ${(err as Error).message}`;
    process.stderr.write(`keyward ${command}: ${message}\n`);
    process.exitCode = err instanceof KeywardError && err.code === 'InvalidArgument' ? 2 : 1;
  });
}
