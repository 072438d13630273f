// A verdict on one practice and the evidence behind it. `holds` only when the evidence read from
// the cluster shows the practice in force; `unknown` when the cluster cannot show it (nothing to
// look at, no permission to look, or a property only the test suite can prove).
import type { Readout } from '../clusterReader.js';
import type { ClusterSnapshot } from '../clusterSnapshot.js';

export type Verdict = 'holds' | 'partial' | 'fails' | 'not-built' | 'unknown';
export const verdicts: readonly Verdict[] = ['holds', 'partial', 'fails', 'not-built', 'unknown'];

/** One line of evidence: `ok` supports the practice, `gap` works against it, `info` is context. */
export interface Evidence {
  status: 'ok' | 'gap' | 'info';
  text: string;
}

export interface Assessment {
  verdict: Verdict;
  evidence: Evidence[];
}

export type Assessor = (snapshot: ClusterSnapshot, now: Date) => Assessment;

export const ok = (text: string): Evidence => ({ status: 'ok', text });
export const gap = (text: string): Evidence => ({ status: 'gap', text });
export const info = (text: string): Evidence => ({ status: 'info', text });

/** `unknown`, saying what could not be read and why. */
export function unreadable(readout: Exclude<Readout<unknown>, { state: 'read' }>, what: string): Assessment {
  const why = { absent: 'not served by this cluster', forbidden: 'not permitted', failed: 'the read failed' }[readout.state];
  return { verdict: 'unknown', evidence: [gap(`cannot read ${what} (${why}): ${readout.reason}`)] };
}

/** The usual rule: holds when nothing works against the practice, fails when something does. */
export function fromEvidence(evidence: Evidence[], whenGap: Verdict = 'fails'): Assessment {
  return { verdict: evidence.some((e) => e.status === 'gap') ? whenGap : 'holds', evidence };
}

/** Whether a time has passed. */
export const isPast = (time: string | undefined, now: Date): boolean => time !== undefined && Date.parse(time) <= now.getTime();

export const ageText = (ms: number): string => {
  const hours = ms / 3_600_000;
  return hours >= 48 ? `${Math.floor(hours / 24)} days` : `${Math.max(0, Math.floor(hours))} h`;
};
