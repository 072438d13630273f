// The report as Markdown: a summary table, then a section per practice with its evidence. Text
// from the cluster is escaped so a name cannot break the table or turn into a link or markup.
import { verdicts, type ComplianceReport, type Evidence } from './complianceReport.js';

/** Escapes Markdown's inline syntax, table pipes and HTML tags, and keeps the text on one line. */
export function escapeMarkdown(text: string): string {
  return text
    .replace(/[\r\n]+/g, ' ')
    .replace(/[\\`*_[\]|<>~]/g, (c) => `\\${c}`)
    .replace(/^([-+#=]|\d+\.)/, '\\$1');
}

const mark: Record<Evidence['status'], string> = { ok: '✔', gap: '✘', info: '·' };

export function renderMarkdown(report: ComplianceReport): string {
  const lines: string[] = [
    '# Keyward compliance report',
    '',
    `Cluster ${escapeMarkdown(report.cluster.server)}${report.cluster.context ? ` (context ${escapeMarkdown(report.cluster.context)})` : ''}, generated ${report.generatedAt}.`,
    '',
    verdicts.map((v) => `**${report.summary[v]}** ${v}`).join(' · '),
    '',
    '| practice | sources | verdict |',
    '|---|---|---|',
    ...report.practices.map((p) => `| [${escapeMarkdown(p.title)}](#${p.id}) | ${escapeMarkdown(p.sources)} | **${p.verdict}** |`),
  ];
  for (const practice of report.practices) {
    lines.push('', `## ${escapeMarkdown(practice.title)}`, '', `<a id="${practice.id}"></a>Practice \`${practice.id}\` (${escapeMarkdown(practice.sources)}): **${practice.verdict}**`, '');
    for (const evidence of practice.evidence) lines.push(`- ${mark[evidence.status]} ${escapeMarkdown(evidence.text)}`);
  }
  return `${lines.join('\n')}\n`;
}
