import assert from 'node:assert/strict';
import type { RingState } from '../core/hsm/ringState.js';
import type { KeyRing } from '../core/api/keyRing.js';
import { createLogger } from '../core/observability/logger.js';
import { keyRingReconciler, type KeyRingReconcilerDeps } from './keyRing/keyRingReconciler.js';
import { OperatorMetrics } from './operatorMetrics.js';

const hour = 3600_000;
const t0 = Date.parse('2026-11-23T12:00:00Z');

/** A ring whose primary (version 2) was created at `primaryAt`. */
const ringState = (primaryAt: number): RingState =>
  ({
    schema: 1,
    ringId: 'r1',
    primary: 2,
    versions: [
      { number: 1, state: 'Disabled', keyId: 'k1', createdAt: new Date(primaryAt - 24 * hour).toISOString(), stateChangedAt: new Date(primaryAt).toISOString() },
      { number: 2, state: 'Enabled', keyId: 'k2', createdAt: new Date(primaryAt).toISOString(), stateChangedAt: new Date(primaryAt).toISOString() },
    ],
  }) as unknown as RingState;

/** The value of one sample line, e.g. `keyward_operator_leader`; undefined when absent. */
async function sample(metrics: OperatorMetrics, series: string): Promise<number | undefined> {
  const line = (await metrics.registry.metrics()).split('\n').find((l) => l.startsWith(`${series} `));
  return line === undefined ? undefined : Number(line.slice(series.length + 1));
}

describe('operator metrics', () => {
  it('computes seconds overdue when scraped, from the last rotation and the period, even with no reconcile since', async () => {
    let now = t0 + 25 * hour;
    const metrics = new OperatorMetrics(() => new Date(now));
    metrics.observeKeyRing({ namespace: 'shop', keyring: 'orders' }, { ready: true, rotationPeriodMs: 24 * hour, ring: ringState(t0) });
    metrics.observeKeyRing({ namespace: 'shop', keyring: 'fresh' }, { ready: true, rotationPeriodMs: 24 * hour, ring: ringState(now - hour) });
    const overdue = 'keyward_keyring_rotation_overdue_seconds{namespace="shop",keyring="orders"}';
    assert.equal(await sample(metrics, overdue), 3600);
    assert.equal(await sample(metrics, 'keyward_keyring_rotation_overdue_seconds{namespace="shop",keyring="fresh"}'), 0, 'not due yet');
    assert.equal(await sample(metrics, 'keyward_keyring_last_rotation_timestamp_seconds{namespace="shop",keyring="orders"}'), t0 / 1000);
    assert.equal(await sample(metrics, 'keyward_keyring_rotation_period_seconds{namespace="shop",keyring="orders"}'), 24 * 3600);

    // The HSM fails: reconciles learn nothing new, yet the overdue time keeps growing.
    metrics.observeKeyRing({ namespace: 'shop', keyring: 'orders' }, { ready: false, rotationPeriodMs: 24 * hour });
    now += 10 * 60_000;
    assert.equal(await sample(metrics, overdue), 3600 + 600);
    assert.equal(await sample(metrics, 'keyward_keyring_ready{namespace="shop",keyring="orders"}'), 0);
    assert.equal(await sample(metrics, 'keyward_keyring_versions{namespace="shop",keyring="orders",state="Enabled"}'), 1, 'the versions last seen stay');
  });

  it('takes the last rotation from the KeyRing status when the HSM failed before any reconcile succeeded', async () => {
    const metrics = new OperatorMetrics(() => new Date(t0 + 30 * hour));
    metrics.observeKeyRing({ namespace: 'shop', keyring: 'orders' }, { ready: false, rotationPeriodMs: 24 * hour, lastRotation: new Date(t0) });
    assert.equal(await sample(metrics, 'keyward_keyring_rotation_overdue_seconds{namespace="shop",keyring="orders"}'), 6 * 3600);
  });

  it('removes a deleted KeyRing\'s series when its reconcile finds it gone, and only its own', async () => {
    const metrics = new OperatorMetrics(() => new Date(t0));
    metrics.observeKeyRing({ namespace: 'shop', keyring: 'orders' }, { ready: true, rotationPeriodMs: 24 * hour, ring: ringState(t0) });
    metrics.observeKeyRing({ namespace: 'shop', keyring: 'kept' }, { ready: true, ring: ringState(t0) });
    const reconcile = keyRingReconciler({ keyRings: { get: (): KeyRing | undefined => undefined }, metrics, log: createLogger('test', 'silent') } as unknown as KeyRingReconcilerDeps);
    await reconcile('shop/orders');
    const text = await metrics.registry.metrics();
    assert.doesNotMatch(text, /^keyward_keyring_(?!destructions)\w+\{[^}]*keyring="orders"/m, 'no gauge of the deleted KeyRing');
    assert.match(text, /^keyward_keyring_ready\{namespace="shop",keyring="kept"\} 1$/m);
    assert.match(text, /^keyward_keyring_last_rotation_timestamp_seconds\{namespace="shop",keyring="kept"\}/m);
    assert.doesNotMatch(text, /keyward_keyring_rotation_period_seconds\{[^}]*keyring="kept"/, 'no period, no series');
  });

  it('counts version states per KeyRing and starts its destruction counter at 0', async () => {
    const metrics = new OperatorMetrics(() => new Date(t0));
    metrics.observeKeyRing({ namespace: 'shop', keyring: 'orders' }, { ready: true, ring: ringState(t0) });
    assert.equal(await sample(metrics, 'keyward_keyring_versions{namespace="shop",keyring="orders",state="Disabled"}'), 1);
    assert.equal(await sample(metrics, 'keyward_keyring_versions{namespace="shop",keyring="orders",state="Destroyed"}'), 0);
    assert.equal(await sample(metrics, 'keyward_keyring_destructions_scheduled_total{namespace="shop",keyring="orders"}'), 0);
  });

  it('serves Node\'s standard metrics under their own names with component="operator"', async () => {
    const text = await new OperatorMetrics().registry.metrics();
    assert.match(text, /^process_cpu_user_seconds_total\{component="operator"\} /m);
    assert.match(text, /^nodejs_heap_size_used_bytes\{component="operator"\} /m);
    assert.doesNotMatch(text, /^keyward_\w*(process|nodejs)_/m, 'no prefixed copies');
  });

  it('counts failed HSM operations by PKCS#11 code name, looking through causes', async () => {
    const metrics = new OperatorMetrics();
    const failure = new Error('HSM token is unavailable', { cause: new Error('CKR_DEVICE_ERROR:48') });
    await assert.rejects(metrics.hsm('rotate', () => Promise.reject(failure)));
    assert.equal(await sample(metrics, 'keyward_hsm_errors_total{operation="rotate",code="CKR_DEVICE_ERROR"}'), 1);
  });
});
