// The compliance report: for each key-management practice (core/compliance/practices.ts) a
// verdict and the evidence for it, decided from one snapshot of the cluster. Building it is a pure
// function of the snapshot and the time, so tests can give it any cluster they can describe.
import { practices } from '../core/compliance/practices.js';
import type { ClusterSnapshot } from './clusterSnapshot.js';
import { assessors } from './verdicts/assessors.js';
import type { Evidence, Verdict } from './verdicts/assessment.js';

export type { Evidence, Verdict } from './verdicts/assessment.js';
export { verdicts } from './verdicts/assessment.js';

export interface PracticeResult {
  id: string;
  title: string;
  sources: string;
  verdict: Verdict;
  evidence: Evidence[];
}

/** The JSON output, field for field; `schemaVersion` changes only when a field changes meaning. */
export interface ComplianceReport {
  schemaVersion: 1;
  generatedAt: string;
  cluster: { server: string; context?: string };
  summary: Record<Verdict, number>;
  practices: PracticeResult[];
}

export function buildReport(snapshot: ClusterSnapshot, now: Date): ComplianceReport {
  const results = practices.map((practice): PracticeResult => {
    const assess = assessors[practice.id];
    const { verdict, evidence } = assess
      ? assess(snapshot, now)
      : { verdict: 'unknown' as const, evidence: [{ status: 'info' as const, text: 'this version of the report has no check for this practice' }] };
    return { id: practice.id, title: practice.title, sources: practice.sources, verdict, evidence };
  });
  const summary: Record<Verdict, number> = { holds: 0, partial: 0, fails: 0, 'not-built': 0, unknown: 0 };
  for (const result of results) summary[result.verdict] += 1;
  return {
    schemaVersion: 1,
    generatedAt: now.toISOString(),
    cluster: { server: snapshot.server, ...(snapshot.context ? { context: snapshot.context } : {}) },
    summary,
    practices: results,
  };
}
