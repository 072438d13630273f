// A hung apiserver, for real: the control plane's kube-apiserver process is frozen with SIGSTOP
// (it keeps its sockets open and answers nothing) and resumed with SIGCONT. Mounts whose token has
// no cached review are refused with TokenReviewUnavailable within the provider's deadline, all of
// them, and a watch that falls silent fails so the informer starts it again.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { CoreV1Api } from '@kubernetes/client-node';
import { ApiTimeoutError, loadApiConnection } from '../../core/kube/apiConnection.js';
import { createSoftHsmToken, type SoftHsmToken } from '../../core/hsm/softHsmToken.js';
import { eventually } from '../../testbed/eventually.js';
import { startControlPlane, type ControlPlane } from '../../testbed/control-plane/controlPlane.js';
import { installCrds } from '../operator/crds.js';
import { createPod, driverMountRequest, podToken, type TestPod } from './driverRequest.js';
import { startInProcessProvider, type InProcessProvider } from './inProcessProvider.js';

const audience = 'keyward';
const timeoutMs = 2000;
/** Scheduling slack on 2 shared cores. */
const slackMs = 1500;
const objects = '- type: dataKey\n  name: db-volume\n  keyRing: volume-keys\n  path: luks/db.key\n';

describe('CSI provider: a hung apiserver (kube-apiserver frozen with SIGSTOP)', function () {
  this.timeout(60_000);
  let cp: ControlPlane;
  let core: CoreV1Api;
  let softhsm: SoftHsmToken;
  let inProcess: InProcessProvider;
  let client: InProcessProvider['client'];
  let auditFile: string;
  let web: TestPod;

  /** Runs `body` with the apiserver frozen; it is always resumed. */
  async function frozen<T>(body: () => Promise<T>): Promise<T> {
    const pid = cp.apiserver.pid ?? assert.fail('kube-apiserver has no pid');
    process.kill(pid, 'SIGSTOP');
    try {
      return await body();
    } finally {
      process.kill(pid, 'SIGCONT');
    }
  }

  before(async function () {
    this.timeout(300_000);
    cp = await startControlPlane();
    await installCrds(cp.kubeConfig);
    core = cp.kubeConfig.makeApiClient(CoreV1Api);
    await core.createNamespace({ body: { metadata: { name: 'shop' } } });
    web = await createPod(core, 'shop', 'web', 'app');
    softhsm = createSoftHsmToken();
    process.env.SOFTHSM2_CONF = softhsm.configPath;
    inProcess = await startInProcessProvider(cp, softhsm, { workDirPrefix: 'keyward-csi-hung-', audience, apiserverTimeoutMs: timeoutMs });
    ({ client, auditFile } = inProcess);
  });

  after(async () => {
    await inProcess?.stop();
    softhsm?.remove();
    await cp?.stop();
  });

  it('refuses every Mount waiting on the hung TokenReview with TokenReviewUnavailable within the deadline, and reviews again once the apiserver answers', async () => {
    // Minted while the apiserver answers; never reviewed, so no review of it is cached.
    const token = await podToken(core, web, audience);
    const mount = () => client.mount(driverMountRequest(web, { objects, tokens: { [audience]: token } }));
    await frozen(async () => {
      const started = Date.now();
      // Three mounts of one pod share one review.
      const answers = await Promise.all([mount(), mount(), mount()]);
      const took = Date.now() - started;
      assert.ok(took < timeoutMs + slackMs, `the mounts took ${took} ms`);
      for (const answer of answers) {
        assert.equal(answer.error?.code, 'TokenReviewUnavailable');
      }
      // The timed-out review holds no later mount: it tries again and is refused in time too.
      const again = Date.now();
      assert.equal((await mount()).error?.code, 'TokenReviewUnavailable');
      assert.ok(Date.now() - again < timeoutMs + slackMs, `the later mount took ${Date.now() - again} ms`);
    });
    // Audit records are written once per event-loop turn, so the last may land just after its answer.
    const auditedRefusals = (): { result: string; code?: string; reason?: string }[] =>
      readFileSync(auditFile, 'utf8')
        .split('\n')
        .filter(Boolean)
        .map((line) => JSON.parse(line) as { result: string; code?: string; reason?: string })
        .filter((line) => line.code === 'TokenReviewUnavailable');
    const refusals = await eventually('four audited refusals', 5_000, () => {
      const found = auditedRefusals();
      return found.length >= 4 ? found : undefined;
    });
    assert.equal(refusals.length, 4);
    for (const refusal of refusals) {
      assert.equal(refusal.result, 'failed');
      assert.match(refusal.reason ?? '', new RegExp(`did not answer within ${timeoutMs} ms`));
      assert.doesNotMatch(refusal.reason ?? '', new RegExp(token.token.slice(-20)));
    }
    // Resumed: the review succeeds; no KeyPolicy grants the ring, so the refusal is the policy's.
    await eventually('the token is reviewed again', 30_000, async () => {
      const code = (await mount()).error?.code;
      return code && code !== 'TokenReviewUnavailable' ? code : undefined;
    });
  });

  it('a watch that falls silent fails with ApiTimeoutError after its idle time', async () => {
    const api = loadApiConnection(cp.kubeconfigPath, { requestTimeoutMs: timeoutMs, watchIdleMs: timeoutMs });
    try {
      let lines = 0;
      let lastLineAt = 0;
      const onLine = (): void => {
        lines++;
        lastLineAt = Date.now();
      };
      const watching = api.stream('/api/v1/namespaces?watch=1', onLine, new AbortController().signal);
      // Its initial events say the watch is established.
      await eventually('the watch begins', 10_000, () => Promise.resolve(lines > 0 || undefined));
      await frozen(async () => {
        await assert.rejects(watching, ApiTimeoutError);
        const silent = Date.now() - lastLineAt;
        assert.ok(silent >= timeoutMs - 50 && silent < timeoutMs + slackMs, `the watch ended ${silent} ms after its last line`);
      });
    } finally {
      api.close();
    }
  });
});
