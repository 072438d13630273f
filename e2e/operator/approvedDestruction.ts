// Destruction stamps as Keyward admission writes them once a second person has approved, for
// tests that exercise the operator without the webhook (admission has its own tests).
import type { DestroyRequest } from '../../core/api/keyRing.js';

export const approvedDestruction = (at: Date): DestroyRequest => ({
  requestedBy: 'test-requester',
  requestedAt: at.toISOString(),
  approvedBy: 'test-approver',
  approvedAt: at.toISOString(),
});
