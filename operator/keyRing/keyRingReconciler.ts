// Reconciles one KeyRing into its ring in the HSM: creation, scheduled and requested rotation,
// the desired states of versions, destruction when its time has come, and deletion by policy.
// Level-based and idempotent: the HSM holds what has been done (ring ids are the KeyRing's uid,
// rotation requests are recorded with the rotation), so a reconcile that dies anywhere and runs
// again never makes a second key for a version nor repeats a rotation.
import { KeywardError } from '../../core/errors.js';
import type { Logger } from '../../core/observability/logger.js';
import type { RingState, RingVersion, VersionState } from '../../core/hsm/ringState.js';
import type { RingStore } from '../../core/hsm/ringStore.js';
import { parseDuration } from '../api/duration.js';
import type { KeyRing, KeyRingDesiredVersion } from '../api/keyRing.js';
import type { OperatorMetrics } from '../operatorMetrics.js';
import type { Reconcile } from '../runtime/controllerLoop.js';
import { keyRingFinalizer, type KeyRingClient } from './keyRingClient.js';
import { keyRingStatus, nextRotationTime, withConditions, type ConditionInput } from './keyRingStatus.js';

export interface KeyRingReconcilerDeps {
  store: RingStore;
  client: KeyRingClient;
  /** The informer's cache of KeyRings. */
  keyRings: { get(name: string, namespace?: string): KeyRing | undefined };
  tokenLabel: string;
  metrics: OperatorMetrics;
  log: Logger;
  /** Called after an HSM failure, so the next attempt reconnects (and re-initialises the module). */
  recoverHsm: () => void;
  now?: () => Date;
}

const defaultDestroyWindow = '720h';
/** Look again at least this often, so missed events and clock jumps heal. */
const maxRequeueMs = 60 * 60 * 1000;

export function keyRingReconciler(deps: KeyRingReconcilerDeps): Reconcile {
  const now = deps.now ?? (() => new Date());
  return async (key) => {
    const [namespace = '', name = ''] = key.split('/');
    const keyRing = deps.keyRings.get(name, namespace);
    if (!keyRing) return;
    const end = deps.metrics.reconcileDuration.startTimer();
    try {
      const result = keyRing.metadata.deletionTimestamp ? await finalize(deps, keyRing, now()) : await reconcileRing(deps, keyRing, now());
      end({ result: 'success' });
      return result;
    } catch (err) {
      end({ result: 'error' });
      deps.metrics.reconcileErrors.inc({ reason: failureReason(err) });
      throw err;
    }
  };
}

async function reconcileRing(deps: KeyRingReconcilerDeps, keyRing: KeyRing, now: Date): Promise<{ requeueAfterMs: number }> {
  const { store, client, metrics } = deps;
  const { name = '', namespace = '', uid = '' } = keyRing.metadata;
  const spec = keyRing.spec;
  if (!keyRing.metadata.finalizers?.includes(keyRingFinalizer)) await client.setFinalizer(keyRing, true);

  let ring: RingState;
  const rotationPeriodMs = spec.rotationPeriod ? parseDuration(spec.rotationPeriod) : undefined;
  const refused: string[] = [];
  try {
    const existing = await metrics.hsm('get', () => store.get({ ringId: uid }));
    ring = await metrics.hsm('create', () => store.create({ ringId: uid, name, namespace }));
    if (!existing) await client.event(keyRing, 'Normal', 'Created', `version 1 generated in HSM token ${deps.tokenLabel}: key id ${ring.versions[0]?.keyId}`);

    if (spec.rotationRequest !== undefined && spec.rotationRequest !== ring.lastRotationRequest) {
      ring = await metrics.hsm('rotate', () => store.rotate({ ringId: uid }, { request: spec.rotationRequest }));
      await announceRotation(deps, keyRing, ring, 'on request');
    }
    const due = nextRotationTime(ring, rotationPeriodMs);
    if (due && due.getTime() <= now.getTime()) {
      ring = await metrics.hsm('rotate', () => store.rotate({ ringId: uid }));
      await announceRotation(deps, keyRing, ring, `on schedule (every ${spec.rotationPeriod})`);
    }

    const destroyWindowMs = parseDuration(spec.destroyScheduledDuration ?? defaultDestroyWindow);
    for (const desired of [...(spec.versions ?? [])].sort((a, b) => a.number - b.number)) {
      const outcome = await applyDesiredState(deps, keyRing, ring, desired, new Date(now.getTime() + destroyWindowMs));
      if (typeof outcome === 'string') refused.push(outcome);
      else ring = outcome;
    }

    for (const { version } of await metrics.hsm('destroy', () => store.destroyDue(now, uid))) {
      await client.event(keyRing, 'Normal', 'Destroyed', `version ${version}: key material destroyed in HSM token ${deps.tokenLabel}`);
    }
    ring = await metrics.hsm('get', () => store.require({ ringId: uid }));
  } catch (err) {
    deps.recoverHsm();
    await reportFailure(deps, keyRing, err, now);
    throw err;
  }

  const conditions: ConditionInput[] = [
    { type: 'Ready', status: 'True', reason: 'KeyAvailable', message: `version ${ring.primary} is primary in HSM token ${deps.tokenLabel}` },
    refused.length === 0
      ? { type: 'VersionRequestsApplied', status: 'True', reason: 'Applied', message: 'spec.versions is in effect' }
      : { type: 'VersionRequestsApplied', status: 'False', reason: 'TransitionRefused', message: refused.join('; ') },
  ];
  await client.applyStatus(keyRing, keyRingStatus(keyRing, ring, { tokenLabel: deps.tokenLabel, rotationPeriodMs, conditions, now }));
  const next = nextRotationTime(ring, rotationPeriodMs);
  if (next) metrics.secondsToRotation.set({ namespace, name }, (next.getTime() - now.getTime()) / 1000);
  return { requeueAfterMs: requeueAfter(ring, next, now) };
}

async function announceRotation(deps: KeyRingReconcilerDeps, keyRing: KeyRing, ring: RingState, why: string): Promise<void> {
  const primary = ring.versions.find((v) => v.number === ring.primary);
  await deps.client.event(keyRing, 'Normal', 'Rotated', `version ${ring.primary} is now primary (${why}): key id ${primary?.keyId}`);
}

/** The steps from one state to another that an admin may ask for; a string says why not. */
function stepsTo(version: RingVersion, target: KeyRingDesiredVersion['state'], primary: number): VersionState[] | string {
  if (version.state === target || (version.state === 'Destroyed' && target === 'DestroyScheduled')) return [];
  if (version.state === 'Destroyed' || version.state === 'PendingGeneration') return `version ${version.number} is ${version.state}; it cannot become ${target}`;
  if (version.number === primary) return `version ${version.number} is the primary and stays Enabled; rotate first`;
  switch (`${version.state}>${target}`) {
    case 'Enabled>Disabled':
    case 'Disabled>Enabled':
    case 'Disabled>DestroyScheduled':
    case 'DestroyScheduled>Disabled':
      return [target];
    case 'DestroyScheduled>Enabled':
      return ['Disabled', 'Enabled'];
    default:
      return `version ${version.number} is Enabled; disable it first and watch for failures before scheduling its destruction`;
  }
}

const stateEvents: Record<string, string> = {
  Disabled: 'VersionDisabled',
  Enabled: 'VersionEnabled',
  DestroyScheduled: 'DestroyScheduled',
};

async function applyDesiredState(
  deps: KeyRingReconcilerDeps,
  keyRing: KeyRing,
  ring: RingState,
  desired: KeyRingDesiredVersion,
  destroyAt: Date,
): Promise<RingState | string> {
  const version = ring.versions.find((v) => v.number === desired.number);
  if (!version) return `version ${desired.number} does not exist`;
  const steps = stepsTo(version, desired.state, ring.primary);
  if (typeof steps === 'string') return steps;
  let current = ring;
  for (const state of steps) {
    const cancelling = version.state === 'DestroyScheduled' && state === 'Disabled';
    current = await deps.metrics.hsm('setVersionState', () => deps.store.setVersionState({ ringId: ring.ringId }, desired.number, state, { destroyAt }));
    const message =
      state === 'DestroyScheduled' ? `version ${desired.number}: key material will be destroyed at ${destroyAt.toISOString()}` : `version ${desired.number} is now ${state}`;
    await deps.client.event(keyRing, 'Normal', cancelling ? 'DestroyCancelled' : (stateEvents[state] ?? state), message);
  }
  return current;
}

/** Deletion: Retain leaves the keys; Destroy schedules every version, never destroying at once. */
async function finalize(deps: KeyRingReconcilerDeps, keyRing: KeyRing, now: Date): Promise<void> {
  if (!keyRing.metadata.finalizers?.includes(keyRingFinalizer)) return;
  const uid = keyRing.metadata.uid ?? '';
  if (keyRing.spec.deletionPolicy === 'Destroy') {
    const destroyAt = new Date(now.getTime() + parseDuration(keyRing.spec.destroyScheduledDuration ?? defaultDestroyWindow));
    try {
      if (await deps.store.get({ ringId: uid })) {
        await deps.metrics.hsm('scheduleRingDestruction', () => deps.store.scheduleRingDestruction({ ringId: uid }, destroyAt));
      }
    } catch (err) {
      deps.recoverHsm();
      await reportFailure(deps, keyRing, err, now);
      throw err;
    }
    await deps.client.event(keyRing, 'Normal', 'DestroyScheduled', `KeyRing deleted with deletionPolicy Destroy: every version is destroyed at ${destroyAt.toISOString()}`);
  } else {
    await deps.client.event(keyRing, 'Normal', 'KeysRetained', `KeyRing deleted with deletionPolicy Retain: its keys stay in HSM token ${deps.tokenLabel}`);
  }
  await deps.client.setFinalizer(keyRing, false);
}

/** Ready=False with a reason the admin can act on; the caller retries with backoff. */
async function reportFailure(deps: KeyRingReconcilerDeps, keyRing: KeyRing, err: unknown, now: Date): Promise<void> {
  const reason = failureReason(err);
  const message = err instanceof KeywardError ? err.message : `HSM operation failed: ${(err as Error).message}`;
  deps.log.warn({ keyRing: `${keyRing.metadata.namespace}/${keyRing.metadata.name}`, reason, err: message }, 'KeyRing not ready');
  const previous = keyRing.status;
  try {
    await deps.client.applyStatus(keyRing, {
      ...previous,
      observedGeneration: keyRing.metadata.generation ?? 0,
      conditions: [
        ...(previous?.conditions ?? []).filter((c) => c.type !== 'Ready'),
        ...withConditions(previous?.conditions, [{ type: 'Ready', status: 'False', reason, message }], keyRing.metadata.generation ?? 0, now),
      ],
    });
    await deps.client.event(keyRing, 'Warning', reason, message);
  } catch (statusErr) {
    deps.log.warn({ err: (statusErr as Error).message }, 'could not record the failure on the KeyRing');
  }
}

function failureReason(err: unknown): string {
  if (!(err instanceof KeywardError)) return 'HsmError';
  switch (err.code) {
    case 'Unavailable':
      return 'HsmUnavailable';
    case 'PermissionDenied':
      return 'HsmLoginFailed';
    case 'FailedPrecondition':
      return 'LifecycleRefused';
    default:
      return 'HsmError';
  }
}

/** When to look again: the next rotation or destruction, at most an hour away. */
function requeueAfter(ring: RingState, nextRotation: Date | undefined, now: Date): number {
  const times = ring.versions.filter((v) => v.state === 'DestroyScheduled' && v.destroyAt).map((v) => Date.parse(v.destroyAt ?? ''));
  if (nextRotation) times.push(nextRotation.getTime());
  const soonest = Math.min(now.getTime() + maxRequeueMs, ...times);
  return Math.max(1000, soonest - now.getTime());
}
