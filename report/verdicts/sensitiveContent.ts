// Whether a name or label looks like it carries something secret. Kubernetes names and label
// values are short and restricted (DNS names, 63-character label values), so what fits is a
// credential assignment, a PEM header, or a long run of hex or base64 such as a key or token.
// The answer names the kind only; callers must never echo the text itself.
const rules: [RegExp, string][] = [
  [/-----BEGIN [A-Z ]+-----/, 'a PEM block'],
  [/(password|passwd|passphrase|secret|token|apikey|api[-_]key|pin)[-_.]?[=:]/i, 'a credential assignment'],
  [/[0-9a-f]{32,}/i, 'a long hexadecimal value (key material or a token?)'],
  [/[A-Za-z0-9+/_-]{40,}={0,2}/, 'a long base64 value (key material or a token?)'],
];

export function sensitiveContent(text: string): string | undefined {
  for (const [pattern, kind] of rules) {
    const match = pattern.exec(text);
    // A long run of letters and dashes alone is a name, not base64: require a digit as well.
    if (match && (kind.startsWith('a long base64') ? /\d/.test(match[0]) && /[a-z]/.test(match[0]) && /[A-Z]/.test(match[0]) : true)) return kind;
  }
  return undefined;
}
