// Status conditions as every Keyward resource writes them: observedGeneration on each, and a
// lastTransitionTime that moves only when the status does.
import type { Condition } from './schema.js';

export interface ConditionInput {
  type: string;
  status: 'True' | 'False' | 'Unknown';
  reason: string;
  message: string;
}

/** Conditions keep their lastTransitionTime while their status does not change. */
export function withConditions(previous: Condition[] | undefined, next: ConditionInput[], generation: number, now: Date): Condition[] {
  return next.map((condition) => {
    const before = previous?.find((p) => p.type === condition.type);
    const lastTransitionTime = before && before.status === condition.status ? before.lastTransitionTime : now.toISOString();
    return { ...condition, observedGeneration: generation, lastTransitionTime };
  });
}
