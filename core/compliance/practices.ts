// The key-management practices Keyward follows, from the NSA/CISA information sheet "Use Secure
// Cloud Key Management Practices" and the Cloud Security Alliance's "Recommendations for Using a
// Customer Controlled Key Store". One list for the compliance report (`keyward report`, evidence
// from a live cluster) and for docs/compliance.md (evidence from the test suite).

export interface Practice {
  /** Stable id: tests name it as `[practice:<id>]` in their titles. */
  id: string;
  title: string;
  /** The guidance it comes from. */
  sources: string;
}

export const practices: readonly Practice[] = [
  { id: 'no-plaintext-export', title: 'Keys generated in an HSM are never exported in plain text', sources: 'NSA' },
  { id: 'key-location', title: 'Know where each key is stored and how it is protected', sources: 'NSA' },
  { id: 'implicit-deny', title: 'Key policies with implicit deny', sources: 'NSA, CSA 4.1.1' },
  { id: 'operations-by-name', title: 'Each operation granted by name, no wildcards', sources: 'NSA' },
  { id: 'policy-lag', title: 'The lag between a policy change and its effect is bounded', sources: 'NSA' },
  { id: 'separation-of-duties', title: 'Separation of duties: managing keys is not using keys', sources: 'NSA, CSA 4.1.3' },
  { id: 'roles', title: 'Roles: Administrator, time-bound Break-glass, Auditor, Read-only, Encrypt/Decrypt, Write-only', sources: 'CSA 4.1.3' },
  { id: 'least-privilege', title: 'Least privilege and just-in-time access', sources: 'CSA 3.1.2' },
  { id: 'two-person-integrity', title: 'Two-person integrity for destruction', sources: 'CSA 3.2, 5.2' },
  { id: 'rotation', title: 'Scheduled and on-demand rotation', sources: 'CSA 3.1.2, 5.1' },
  { id: 'soft-delete', title: 'Destruction is scheduled, cancellable, then irreversible', sources: 'NSA, CSA 3.1.2, 5.1' },
  { id: 'verified-retirement', title: 'A key is verified unused before it is destroyed', sources: 'NSA' },
  { id: 'audit', title: 'Every use audited: where, how, by whom', sources: 'NSA, CSA 4.2' },
  { id: 'no-sensitive-metadata', title: 'No sensitive data in key labels or metric labels', sources: 'NSA' },
  { id: 'inventory-labels', title: 'Labels for inventory and incident response', sources: 'CSA 3.1.2' },
  { id: 'backup-escrow', title: 'Backup and restore under escrow, never in plain text', sources: 'CSA 3.1.2, 5.2' },
  { id: 'bring-your-own-key', title: 'Import of customer key material wrapped under an HSM key', sources: 'NSA, CSA' },
  { id: 'monitoring', title: 'Monitoring, dashboards and alerting', sources: 'CSA 3.2, 5.2' },
  { id: 'secure-transport', title: 'Restricted local sockets, TLS off the node', sources: 'CSA 3.1.2' },
  { id: 'approved-generation', title: 'Key material and IVs from the HSM generator (SP 800-90A)', sources: 'NSA' },
  { id: 'cnsa', title: 'CNSA 1.0 algorithms, algorithm ids in every ciphertext', sources: 'NSA' },
  { id: 'continuity', title: 'The data plane keeps serving through an HSM or apiserver outage and recovers', sources: 'CSA 4.2' },
  { id: 'latency', title: 'Data-plane latency measured, far below 50 ms', sources: 'CSA 4.1.4' },
];
