// Throw-away certificates for one control plane, made with openssl: a CA that signs the
// apiserver's serving certificate and the admin client certificate, and a service-account key.
import { execFileSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { setupError } from '../../core/errors.js';

export interface ControlPlanePki {
  caCert: string;
  caKey: string;
  servingCert: string;
  servingKey: string;
  adminCert: string;
  adminKey: string;
  serviceAccountKey: string;
  serviceAccountPub: string;
}

function openssl(dir: string, args: string[]): void {
  try {
    execFileSync('openssl', args, { cwd: dir, stdio: ['ignore', 'pipe', 'pipe'] });
  } catch (err) {
    const e = err as NodeJS.ErrnoException & { stderr?: Buffer };
    if (e.code === 'ENOENT') throw setupError('openssl is not installed (Debian: apt-get install openssl)');
    throw setupError(`openssl ${args[0]} failed: ${e.stderr?.toString().trim() ?? e.message}`);
  }
}

function keyAndCsr(dir: string, name: string, subject: string): void {
  openssl(dir, ['req', '-new', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', `${name}.key`, '-out', `${name}.csr`, '-subj', subject]);
}

function sign(dir: string, name: string, extensions: string, ca = 'ca'): void {
  writeFileSync(join(dir, `${name}.ext`), extensions);
  openssl(dir, ['x509', '-req', '-in', `${name}.csr`, '-CA', `${ca}.crt`, '-CAkey', `${ca}.key`, '-CAcreateserial', '-days', '2', '-out', `${name}.crt`, '-extfile', `${name}.ext`]);
}

function selfSignedCa(dir: string, name: string, commonName: string): void {
  openssl(dir, ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', `${name}.key`, '-out', `${name}.crt`, '-days', '2', '-subj', `/CN=${commonName}`, '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign']);
}

/** etcd's own CA and certificates, laid out as kubeadm does (etcd/ca.crt, apiserver-etcd-client.*). */
export interface EtcdPki {
  caCert: string;
  serverCert: string;
  serverKey: string;
  /** The apiserver's client certificate to etcd; the scanner beside the KMS plugin reads with it too. */
  clientCert: string;
  clientKey: string;
}

/** A separate CA for etcd (as kubeadm makes), a serving certificate for 127.0.0.1 and a client certificate. */
export function createEtcdPki(dir: string): EtcdPki {
  selfSignedCa(dir, 'etcd-ca', 'etcd-ca');
  keyAndCsr(dir, 'etcd-server', '/CN=etcd');
  sign(dir, 'etcd-server', 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n', 'etcd-ca');
  keyAndCsr(dir, 'apiserver-etcd-client', '/O=system:masters/CN=kube-apiserver-etcd-client');
  sign(dir, 'apiserver-etcd-client', 'extendedKeyUsage=clientAuth\n', 'etcd-ca');
  const path = (file: string): string => join(dir, file);
  return {
    caCert: path('etcd-ca.crt'),
    serverCert: path('etcd-server.crt'),
    serverKey: path('etcd-server.key'),
    clientCert: path('apiserver-etcd-client.crt'),
    clientKey: path('apiserver-etcd-client.key'),
  };
}

/** `servingNames`: more SANs for the apiserver's certificate (`IP:...` or `DNS:...`), e.g. a node's address. */
export function createPki(dir: string, servingNames: readonly string[] = []): ControlPlanePki {
  selfSignedCa(dir, 'ca', 'keyward-test-ca');
  keyAndCsr(dir, 'serving', '/CN=kube-apiserver');
  const sans = ['IP:127.0.0.1', 'DNS:localhost', ...servingNames].join(',');
  sign(dir, 'serving', `subjectAltName=${sans}\nextendedKeyUsage=serverAuth\n`);
  keyAndCsr(dir, 'admin', '/O=system:masters/CN=keyward-admin');
  sign(dir, 'admin', 'extendedKeyUsage=clientAuth\n');
  openssl(dir, ['genpkey', '-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:P-256', '-out', 'sa.key']);
  openssl(dir, ['pkey', '-in', 'sa.key', '-pubout', '-out', 'sa.pub']);
  const path = (file: string): string => join(dir, file);
  return {
    caCert: path('ca.crt'),
    caKey: path('ca.key'),
    servingCert: path('serving.crt'),
    servingKey: path('serving.key'),
    adminCert: path('admin.crt'),
    adminKey: path('admin.key'),
    serviceAccountKey: path('sa.key'),
    serviceAccountPub: path('sa.pub'),
  };
}

/**
 * A client certificate for a user in groups (the apiserver reads CN as the user, O as groups),
 * signed by the control plane's CA; `dir` is the PKI directory.
 */
export function issueClientCertificate(dir: string, file: string, user: string, groups: readonly string[] = []): { cert: string; key: string } {
  const subject = [...groups.map((g) => `/O=${g}`), `/CN=${user}`].join('');
  keyAndCsr(dir, file, subject);
  sign(dir, file, 'extendedKeyUsage=clientAuth\n');
  return { cert: join(dir, `${file}.crt`), key: join(dir, `${file}.key`) };
}

/** A serving certificate for 127.0.0.1, the given DNS names (e.g. a webhook) and IP addresses (e.g. a node's), signed by the CA. */
export function issueServingCertificate(dir: string, file: string, dnsNames: readonly string[] = [], ipAddresses: readonly string[] = []): { cert: string; key: string } {
  keyAndCsr(dir, file, `/CN=${dnsNames[0] ?? '127.0.0.1'}`);
  const names = ['IP:127.0.0.1', ...ipAddresses.map((ip) => `IP:${ip}`), ...dnsNames.map((n) => `DNS:${n}`)].join(',');
  sign(dir, file, `subjectAltName=${names}\nextendedKeyUsage=serverAuth\n`);
  return { cert: join(dir, `${file}.crt`), key: join(dir, `${file}.key`) };
}

export function kubeconfigYaml(server: string, pki: ControlPlanePki): string {
  return clientKubeconfigYaml(server, pki.caCert, { cert: pki.adminCert, key: pki.adminKey }, 'keyward-admin');
}

/** A kubeconfig that authenticates with a client certificate (files), trusting `caCert`. */
export function clientKubeconfigYaml(server: string, caCert: string, client: { cert: string; key: string }, user: string): string {
  const b64 = (file: string): string => readFileSync(file).toString('base64');
  return `apiVersion: v1
kind: Config
clusters:
- name: keyward-test
  cluster:
    server: ${server}
    certificate-authority-data: ${b64(caCert)}
users:
- name: ${user}
  user:
    client-certificate-data: ${b64(client.cert)}
    client-key-data: ${b64(client.key)}
contexts:
- name: keyward-test
  context:
    cluster: keyward-test
    user: ${user}
current-context: keyward-test
`;
}
