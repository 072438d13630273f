// Crash safety: the operator process is SIGKILLed 20 times at random points while KeyRings are
// created, rotated, disabled, scheduled for destruction and deleted. Afterwards one operator
// settles everything, and the HSM holds exactly the keys the statuses claim: no key lost, no
// second key for a version, no rotation lost or repeated, every ring state matching its status.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { CustomObjectsApi, PatchStrategy, setHeaderOptions } from '@kubernetes/client-node';
import pkcs11js from 'pkcs11js';
import { HsmToken } from '../../core/hsm/hsmToken.js';
import { keyObjectId, type RingState } from '../../core/hsm/ringState.js';
import { RingStore } from '../../core/hsm/ringStore.js';
import { createSoftHsmToken, type SoftHsmToken } from '../../core/hsm/softHsmToken.js';
import { keyRingResource, type KeyRing, type KeyRingDesiredVersion, type KeyRingSpec } from '../../core/api/keyRing.js';
import { eventually } from '../../testbed/eventually.js';
import { trackDirectory } from '../../testbed/control-plane/componentProcess.js';
import { startControlPlane, type ControlPlane } from '../../testbed/control-plane/controlPlane.js';
import { approvedDestruction } from './approvedDestruction.js';
import { installCrds } from './crds.js';
import { startOperatorProcess, type OperatorProcess } from './operatorProcess.js';

const namespace = 'default';
/**
 * One identity for every incarnation: a restarted process finds the Lease held by itself and
 * leads at once, as a restarted pod with a stable name would, instead of waiting out the lease.
 */
const identity = 'crash-test';
/** Long enough that a loaded machine's slow renewal (renew deadline: 2/3 of it) does not end a leadership on its own. */
const leaseSeconds = 5;
const kills = 20;
const minRunMs = 50;
const maxRunMs = 1500;
/**
 * Rounds of rotate → disable → schedule destruction per KeyRing, at most: only a safety bound,
 * since the KeyRings that are never deleted go on until the kill loop ends, so that every kill
 * has work to land in.
 */
const maxRounds = 40;
const stepTimeoutMs = 120_000;
const hour = 3600_000;

type DesiredState = KeyRingDesiredVersion['state'];

interface Plan {
  name: string;
  deletionPolicy: 'Retain' | 'Destroy';
  /** Delete the KeyRing after this many rounds (0: at once, without waiting for it); never when undefined. */
  deleteAfterRound?: number;
}

interface Driven extends Plan {
  uid: string;
  /** Every rotation request issued, in order; each distinct. */
  requests: string[];
  /** spec.versions as last patched. */
  desired: Map<number, DesiredState>;
  /** For deleted KeyRings: the settled status just before deletion (none when deleted at once). */
  deleted?: { status?: NonNullable<KeyRing['status']> };
}

const plans: Plan[] = [
  { name: 'crash-0', deletionPolicy: 'Retain' },
  { name: 'crash-1', deletionPolicy: 'Retain' },
  { name: 'crash-2', deletionPolicy: 'Destroy' },
  { name: 'crash-3', deletionPolicy: 'Retain', deleteAfterRound: 3 },
  { name: 'crash-4', deletionPolicy: 'Destroy', deleteAfterRound: 2 },
  { name: 'crash-5', deletionPolicy: 'Destroy', deleteAfterRound: 4 },
  { name: 'crash-6', deletionPolicy: 'Destroy', deleteAfterRound: 0 },
];

const randomInt = (min: number, max: number): number => min + Math.floor(Math.random() * (max - min + 1));

describe('KeyRing operator: SIGKILLed at random points, it loses and duplicates nothing', function () {
  this.timeout(600_000);
  let cp: ControlPlane;
  let softhsm: SoftHsmToken;
  let dir: string;
  let removeDir: (() => void) | undefined;
  let objects: CustomObjectsApi;
  let admin: HsmToken | undefined;
  const processes: OperatorProcess[] = [];

  before(async function () {
    this.timeout(300_000);
    cp = await startControlPlane();
    await installCrds(cp.kubeConfig);
    softhsm = createSoftHsmToken();
    dir = mkdtempSync(join(tmpdir(), 'keyward-operator-crash-'));
    removeDir = trackDirectory(dir);
    objects = cp.kubeConfig.makeApiClient(CustomObjectsApi);
  });
  after(async () => {
    for (const p of processes) p.process.killNow();
    await Promise.all(processes.map((p) => p.process.exitedPromise()));
    admin?.close();
    softhsm?.remove();
    await cp?.stop();
    removeDir?.();
  });

  const startOperator = async (): Promise<OperatorProcess> => {
    const operator = await startOperatorProcess({ hsm: softhsm, kubeconfigPath: cp.kubeconfigPath, dir, identity, leaseSeconds, workers: 4 });
    processes.push(operator);
    return operator;
  };

  const getKeyRing = async (name: string): Promise<KeyRing | undefined> => {
    try {
      return (await objects.getNamespacedCustomObject({ ...keyRingResource, namespace, name })) as KeyRing;
    } catch (err) {
      if ((err as { code?: number }).code === 404) return undefined;
      throw err;
    }
  };

  const patchSpec = (name: string, spec: Partial<KeyRingSpec>): Promise<unknown> =>
    objects.patchNamespacedCustomObject({ ...keyRingResource, namespace, name, body: { spec } }, setHeaderOptions('Content-Type', PatchStrategy.MergePatch));

  const ready = (kr: KeyRing): boolean =>
    kr.status?.conditions?.some((c) => c.type === 'Ready' && c.status === 'True' && c.observedGeneration === kr.metadata.generation) ?? false;
  const settled = (kr: KeyRing): boolean => ready(kr) && kr.status?.observedGeneration === kr.metadata.generation;
  const versionState = (kr: KeyRing, number: number): string | undefined => kr.status?.versions?.find((v) => v.number === number)?.state;

  const statusWhen = (name: string, what: string, check: (kr: KeyRing) => boolean): Promise<KeyRing> =>
    eventually(
      `${name}: ${what}`,
      stepTimeoutMs,
      async () => {
        const kr = await getKeyRing(name);
        return kr && check(kr) ? kr : undefined;
      },
      50,
    );

  /** How many steps are waiting for the operator right now: kills while > 0 hit work in progress. */
  let inFlight = 0;
  const step = async <T>(work: () => Promise<T>): Promise<T> => {
    inFlight += 1;
    try {
      return await work();
    } finally {
      inFlight -= 1;
    }
  };

  /** The admin's side: one KeyRing taken through rounds of rotation, disabling and scheduled destruction. */
  const drive = async (plan: Plan, killsDone: () => boolean): Promise<Driven> => {
    const { name } = plan;
    const created = (await objects.createNamespacedCustomObject({
      ...keyRingResource,
      namespace,
      body: {
        apiVersion: 'keyward.dev/v1alpha1',
        kind: 'KeyRing',
        metadata: { name },
        spec: {
          purpose: 'encryption',
          deletionPolicy: plan.deletionPolicy,
          destroyScheduledDuration: '24h',
          ...(plan.deletionPolicy === 'Destroy' ? { deletionDestroyRequest: approvedDestruction(new Date()) } : {}),
        },
      },
    })) as KeyRing;
    const ring: Driven = { ...plan, uid: created.metadata.uid ?? '', requests: [], desired: new Map() };
    const patchVersions = (): Promise<unknown> =>
      patchSpec(name, {
        versions: [...ring.desired].map(([number, state]) => ({ number, state, ...(state === 'DestroyScheduled' ? { destroyRequest: approvedDestruction(new Date()) } : {}) })),
      });
    const remove = async (): Promise<void> => {
      await objects.deleteNamespacedCustomObject({ ...keyRingResource, namespace, name });
      await step(() => eventually(`${name} deleted (finalizer removed)`, stepTimeoutMs, async () => ((await getKeyRing(name)) ? undefined : true), 50));
    };
    if (plan.deleteAfterRound === 0) {
      // Deleted while the operator may be creating its ring, or before it has seen it at all.
      await sleep(randomInt(0, 3000));
      ring.deleted = {};
      await remove();
      return ring;
    }
    await step(() => statusWhen(name, 'Ready', ready));

    for (let round = 1; round <= maxRounds && !(killsDone() && round > 2); round++) {
      await sleep(randomInt(0, 600));
      const request = `r${round}-${randomBytes(3).toString('hex')}`;
      ring.requests.push(request);
      await patchSpec(name, { rotationRequest: request });
      await step(() => statusWhen(name, `rotation ${request} done`, (k) => k.status?.lastRotationRequest === request));

      // The previous primary (version `round`) is disabled, the one before scheduled for destruction.
      ring.desired.set(round, 'Disabled');
      await patchVersions();
      await step(() => statusWhen(name, `version ${round} Disabled`, (k) => versionState(k, round) === 'Disabled'));
      if (ring.desired.get(round - 1) === 'Disabled') {
        ring.desired.set(round - 1, 'DestroyScheduled');
        await patchVersions();
        await step(() => statusWhen(name, `version ${round - 1} DestroyScheduled`, (k) => versionState(k, round - 1) === 'DestroyScheduled'));
      }
      // Now and then an admin changes their mind: destruction cancelled, or a version enabled again.
      const scheduled = [...ring.desired].filter(([, s]) => s === 'DestroyScheduled').map(([n]) => n);
      const cancel = scheduled[randomInt(0, scheduled.length - 1)];
      if (cancel !== undefined && Math.random() < 0.3) {
        ring.desired.set(cancel, 'Disabled');
        await patchVersions();
        await step(() => statusWhen(name, `destruction of version ${cancel} cancelled`, (k) => versionState(k, cancel) === 'Disabled'));
      } else if (Math.random() < 0.2) {
        ring.desired.set(round, 'Enabled');
        await patchVersions();
        await step(() => statusWhen(name, `version ${round} Enabled again`, (k) => versionState(k, round) === 'Enabled'));
      }

      if (round === plan.deleteAfterRound) {
        const kr = await step(() => statusWhen(name, 'settled before deletion', settled));
        ring.deleted = { status: kr.status ?? {} };
        await remove();
        break;
      }
    }
    return ring;
  };

  it('keeps the HSM and the statuses in agreement through 20 SIGKILLs during create, rotate, disable, schedule and delete', async () => {
    let killLoopDone = false;
    const driving = Promise.all(plans.map((plan) => drive(plan, () => killLoopDone)));
    // Surface a driver failure at once rather than after the kill loop.
    let driveError: Error | undefined;
    void driving.catch((err: unknown) => (driveError = err as Error));

    let killsDuringWork = 0;
    let previous: OperatorProcess | undefined;
    for (let i = 0; i < kills; i++) {
      if (driveError) throw driveError;
      const operator = await startOperator();
      await sleep(randomInt(minRunMs, maxRunMs));
      // Aimed at work in progress: if no step waits on the operator just now, wait briefly for one.
      for (let waitedMs = 0; inFlight === 0 && waitedMs < 6000; waitedMs += 20) await sleep(20);
      if (inFlight > 0) killsDuringWork += 1;
      operator.process.killNow();
      await operator.process.exitedPromise();
      previous = operator;
    }
    killLoopDone = true;
    assert.ok(previous, 'the operator ran');
    const leaderships = (readFileSync(previous.logFile, 'utf8').match(/"became leader"/g) ?? []).length;

    const final = await startOperator();
    const rings = await driving;
    const live = rings.filter((r) => !r.deleted);
    const deleted = rings.filter((r) => r.deleted);
    const statuses = new Map<string, NonNullable<KeyRing['status']>>();
    for (const ring of live) {
      const kr = await statusWhen(ring.name, 'settled with every request applied', (k) => settled(k) && k.status?.lastRotationRequest === k.spec.rotationRequest);
      statuses.set(ring.name, kr.status ?? {});
    }
    // A stable HSM to read: the last operator leaves (gracefully).
    await final.process.stop();

    process.env.SOFTHSM2_CONF = softhsm.configPath;
    admin = HsmToken.open({ modulePath: softhsm.modulePath, tokenLabel: softhsm.label, pin: softhsm.pin });
    const token = admin;
    const store = new RingStore(token);
    const keyObjects = await token.withSession((session) => {
      token.pkcs11.C_FindObjectsInit(session, [{ type: pkcs11js.CKA_CLASS, value: pkcs11js.CKO_SECRET_KEY }]);
      const handles: pkcs11js.Handle[] = [];
      try {
        for (let batch = token.pkcs11.C_FindObjects(session, 100); batch.length > 0; batch = token.pkcs11.C_FindObjects(session, 100)) handles.push(...batch);
      } finally {
        token.pkcs11.C_FindObjectsFinal(session);
      }
      return handles.map((h) => {
        const [id, label, length] = token.pkcs11.C_GetAttributeValue(session, h, [
          { type: pkcs11js.CKA_ID },
          { type: pkcs11js.CKA_LABEL },
          { type: pkcs11js.CKA_VALUE_LEN },
        ]);
        return { id: id?.value?.toString('hex') ?? '', label: label?.value?.toString('utf8') ?? '', valueLength: length?.value?.readUInt8(0) ?? 0 };
      });
    });
    // SoftHSM2 creates a token object in steps (an object file with default attributes, then the
    // template and the key value in one transaction), so a process killed inside C_GenerateKey
    // leaves a secret-key object with no id, no label and no key material. It holds no key and no
    // version refers to it; an HSM that creates objects atomically would not have it.
    const incomplete = keyObjects.filter((k) => k.id === '' && k.label === '' && k.valueLength === 0);
    const keys = keyObjects.filter((k) => !incomplete.includes(k));
    for (const key of keys) assert.equal(key.valueLength, 32, `key object ${key.id || '(no id)'} '${key.label}' holds a 256-bit key`);
    const keyIds = keys.map((k) => k.id);
    const ringStates = new Map<string, RingState>((await store.list()).map((r) => [r.ringId, r]));

    // Every KeyRing that became Ready has exactly one ring; one deleted at once may have none; no other ring exists.
    const required = rings.filter((r) => r.deleteAfterRound !== 0).map((r) => r.uid);
    const optional = rings.filter((r) => r.deleteAfterRound === 0).map((r) => r.uid);
    assert.deepEqual(
      [...ringStates.keys()].filter((id) => !optional.includes(id)).sort(),
      required.sort(),
      'one ring in the HSM per KeyRing, no strays',
    );
    assert.equal(new Set(keyIds).size, keyIds.length, `no second key object for any version: ${keyIds.length} objects, ${new Set(keyIds).size} ids`);

    const expected = new Set<string>();
    const versionsOf = (ring: RingState) => ring.versions.map((v) => ({ number: v.number, state: v.state }));
    for (const ring of live) {
      const status = statuses.get(ring.name) ?? {};
      const state = ringStates.get(ring.uid);
      assert.ok(state, `${ring.name}: ring in the HSM`);
      const rotations = ring.requests.length;
      assert.equal(status.ringId, ring.uid, `${ring.name}: status names its ring`);
      assert.equal(status.primaryVersion, rotations + 1, `${ring.name}: one rotation per distinct request (${rotations} requests)`);
      assert.deepEqual(
        status.versions?.map((v) => v.number),
        Array.from({ length: rotations + 1 }, (_, i) => i + 1),
        `${ring.name}: versions 1..${rotations + 1}, none lost, none repeated`,
      );
      assert.equal(status.lastRotationRequest, ring.requests.at(-1));
      for (const v of status.versions ?? []) {
        const asked: string = v.number === status.primaryVersion ? 'Enabled' : (ring.desired.get(v.number) ?? 'Enabled');
        assert.equal(v.state, asked, `${ring.name}: version ${v.number} in the state last asked for`);
      }
      assert.deepEqual(
        status.versions?.map((v) => ({ number: v.number, state: v.state })),
        versionsOf(state),
        `${ring.name}: the status shows the ring state in the HSM`,
      );
      assert.equal(state.primary, status.primaryVersion, `${ring.name}: primary in the HSM`);
      assert.equal(state.lastRotationRequest, ring.requests.at(-1), `${ring.name}: last request recorded in the HSM`);
      for (const v of status.versions ?? []) {
        assert.equal(v.hsmObjectId, keyObjectId(ring.uid, v.number).toString('hex'));
        if (v.state !== 'Destroyed' && v.hsmObjectId) expected.add(v.hsmObjectId);
      }
    }
    const deletedAtOnce = deleted.filter((r) => r.deleteAfterRound === 0);
    for (const ring of deletedAtOnce) {
      const state = ringStates.get(ring.uid);
      if (!state) continue;
      assert.deepEqual(versionsOf(state), [{ number: 1, state: 'DestroyScheduled' }], `${ring.name}: deleted at once; its version 1 is scheduled for destruction`);
      expected.add(keyObjectId(ring.uid, 1).toString('hex'));
    }
    for (const ring of deleted.filter((r) => r.deleteAfterRound !== 0)) {
      const state = ringStates.get(ring.uid);
      const before = ring.deleted?.status;
      assert.ok(state && before, `${ring.name}: the ring of the deleted KeyRing stays in the HSM`);
      const want = (before.versions ?? []).map((v) => ({
        number: v.number,
        state: ring.deletionPolicy === 'Destroy' && v.state !== 'Destroyed' ? 'DestroyScheduled' : v.state,
      }));
      assert.deepEqual(versionsOf(state), want, `${ring.name}: deletionPolicy ${ring.deletionPolicy} applied to the ring in the HSM`);
      assert.equal(state.lastRotationRequest, ring.requests.at(-1));
      if (ring.deletionPolicy === 'Destroy') {
        for (const v of state.versions) {
          const destroyAt = Date.parse(v.destroyAt ?? '');
          assert.ok(destroyAt > Date.now() + 23 * hour, `${ring.name}: version ${v.number} is destroyed no sooner than the 24h window (${v.destroyAt})`);
        }
      }
      for (const v of state.versions) if (v.state !== 'Destroyed') expected.add(keyObjectId(ring.uid, v.number).toString('hex'));
    }
    assert.deepEqual([...new Set(keyIds)].sort(), [...expected].sort(), 'the HSM holds exactly the keys the statuses and rings claim');
    assert.ok(![...ringStates.values()].some((r) => r.versions.some((v) => v.state === 'PendingGeneration')), 'no version left PendingGeneration');
    assert.deepEqual(await store.orphanKeys(), [], 'no key that no ring accounts for');

    // The run must have hit work in progress, or it proved nothing.
    assert.ok(killsDuringWork >= kills / 4, `only ${killsDuringWork} of ${kills} kills came while work was in progress`);
    const totalRotations = rings.reduce((n, r) => n + r.requests.length, 0);
    console.error(
      `      [crash] ${kills} SIGKILLs (${killsDuringWork} during work, ${leaderships} leaderships logged), ` +
        `${totalRotations} rotations, ${keyIds.length} keys in the HSM for ${rings.length} KeyRings, ` +
        `${incomplete.length} incomplete SoftHSM2 objects from kills inside C_GenerateKey; ` +
        `KeyRing deleted at once: ${deletedAtOnce.map((r) => (ringStates.has(r.uid) ? 'its ring scheduled for destruction' : 'no ring made')).join(', ')}`,
    );
  });
});
