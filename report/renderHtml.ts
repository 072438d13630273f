// The report as one self-contained HTML page: inline CSS, no script, no external resource. At the
// top, counts by verdict and one coloured row per practice, readable at a glance; the evidence
// below. Everything taken from the cluster is HTML-escaped.
import { verdicts, type ComplianceReport, type Verdict } from './complianceReport.js';

export function escapeHtml(text: string): string {
  return text.replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c] ?? c);
}

const colours: Record<Verdict, { fg: string; bg: string }> = {
  holds: { fg: '#0b5d1e', bg: '#d7f5dd' },
  partial: { fg: '#7a4a00', bg: '#fdebc8' },
  fails: { fg: '#8a1116', bg: '#fbd5d7' },
  'not-built': { fg: '#3b3f5c', bg: '#e2e4f0' },
  unknown: { fg: '#4a4a4a', bg: '#ececec' },
};

const style = `
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto; max-width: 70rem; color: #1d1d1f; padding: 0 1rem; }
h1 { font-size: 1.6rem; margin-bottom: 0.2rem; }
.meta { color: #555; margin-top: 0; }
.counts { display: flex; gap: 0.8rem; margin: 1.2rem 0; flex-wrap: wrap; }
.count { border-radius: 8px; padding: 0.6rem 1rem; min-width: 7rem; }
.count b { display: block; font-size: 1.8rem; line-height: 1.1; }
table { border-collapse: collapse; width: 100%; }
td, th { text-align: left; padding: 0.35rem 0.6rem; border-bottom: 1px solid #fff; }
th { background: #f4f4f6; }
.verdict { font-weight: 600; white-space: nowrap; }
section { margin-top: 1.6rem; border-left: 6px solid; padding-left: 0.9rem; }
section h2 { font-size: 1.1rem; margin: 0 0 0.2rem; }
ul { padding-left: 1.2rem; margin: 0.4rem 0; }
li.ok::marker { content: "✔  "; color: #0b5d1e; }
li.gap::marker { content: "✘  "; color: #8a1116; }
li.info::marker { content: "·  "; color: #777; }
li.gap { color: #8a1116; }
code { font-size: 0.9em; }
`;

export function renderHtml(report: ComplianceReport): string {
  const counts = verdicts
    .map((v) => `<div class="count" style="color:${colours[v].fg};background:${colours[v].bg}"><b>${report.summary[v]}</b>${v}</div>`)
    .join('');
  const rows = report.practices
    .map(
      (p) =>
        `<tr style="background:${colours[p.verdict].bg}"><td><a href="#${p.id}">${escapeHtml(p.title)}</a></td><td>${escapeHtml(p.sources)}</td>` +
        `<td class="verdict" style="color:${colours[p.verdict].fg}">${p.verdict}</td></tr>`,
    )
    .join('\n');
  const sections = report.practices
    .map(
      (p) =>
        `<section id="${p.id}" style="border-color:${colours[p.verdict].fg}"><h2>${escapeHtml(p.title)}</h2>` +
        `<div><code>${p.id}</code> · ${escapeHtml(p.sources)} · <span class="verdict" style="color:${colours[p.verdict].fg}">${p.verdict}</span></div>` +
        `<ul>${p.evidence.map((e) => `<li class="${e.status}">${escapeHtml(e.text)}</li>`).join('')}</ul></section>`,
    )
    .join('\n');
  const cluster = `${escapeHtml(report.cluster.server)}${report.cluster.context ? ` (context ${escapeHtml(report.cluster.context)})` : ''}`;
  return `<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src 'unsafe-inline'">
<title>Keyward compliance report</title>
<style>${style}</style>
</head>
<body>
<h1>Keyward compliance report</h1>
<p class="meta">Cluster ${cluster}, generated ${escapeHtml(report.generatedAt)}</p>
<div class="counts">${counts}</div>
<table>
<thead><tr><th>practice</th><th>sources</th><th>verdict</th></tr></thead>
<tbody>
${rows}
</tbody>
</table>
${sections}
</body>
</html>
`;
}
