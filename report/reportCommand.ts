// `keyward report` (and, later, `kubectl keyward report`): read the cluster, decide the verdicts,
// render them in the format asked for, to a file or standard output.
import { writeFileSync } from 'node:fs';
import { KeywardError } from '../core/errors.js';
import { clusterReader, type ClusterReader } from './clusterReader.js';
import { readSnapshot } from './clusterSnapshot.js';
import { buildReport, type ComplianceReport } from './complianceReport.js';
import { renderHtml } from './renderHtml.js';
import { renderMarkdown } from './renderMarkdown.js';

export const reportFormats = ['markdown', 'json', 'html'] as const;
export type ReportFormat = (typeof reportFormats)[number];

export interface ReportOptions {
  kubeconfig?: string;
  context?: string;
  format: ReportFormat;
  /** Written here (mode 0644) instead of standard output. */
  outputFile?: string;
  /** For tests and callers with their own client: read through this instead of a kubeconfig. */
  reader?: ClusterReader;
  now?: () => Date;
}

export function renderReport(report: ComplianceReport, format: ReportFormat): string {
  switch (format) {
    case 'json':
      return `${JSON.stringify(report, null, 2)}\n`;
    case 'html':
      return renderHtml(report);
    case 'markdown':
      return renderMarkdown(report);
  }
}

export function parseFormat(value: string): ReportFormat {
  const format = reportFormats.find((f) => f === value || (f === 'markdown' && value === 'md'));
  if (!format) throw new KeywardError('InvalidArgument', `-o must be one of ${reportFormats.join(', ')}, not '${value}'`);
  return format;
}

/** Reads the cluster and writes the report; returns it for callers that look at the verdicts. */
export async function runReport(options: ReportOptions): Promise<ComplianceReport> {
  const reader = options.reader ?? clusterReader({ kubeconfig: options.kubeconfig, context: options.context });
  const report = buildReport(await readSnapshot(reader), (options.now ?? (() => new Date()))());
  const text = renderReport(report, options.format);
  if (options.outputFile) writeFileSync(options.outputFile, text, { mode: 0o644 });
  else process.stdout.write(text);
  return report;
}
