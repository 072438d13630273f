// What the apiserver answered when it refused a request: the HTTP code and the message kubectl prints.
import assert from 'node:assert/strict';
import { ApiException, type V1Status } from '@kubernetes/client-node';

export async function apiRefusal(request: Promise<unknown>): Promise<{ code: number; message: string }> {
  const err = await request.then(
    () => assert.fail('the apiserver accepted the request'),
    (e: unknown) => e,
  );
  assert.ok(err instanceof ApiException, `an API error, not ${String(err)}`);
  const status = (typeof err.body === 'string' ? JSON.parse(err.body) : err.body) as V1Status;
  return { code: err.code, message: status.message ?? '' };
}
