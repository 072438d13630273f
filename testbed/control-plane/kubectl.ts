// kubectl as a function: arguments in, standard output back, kubectl's own message on failure.
import { execFile } from 'node:child_process';

export type Kubectl = (args: string[], input?: string) => Promise<string>;

/** Runs `binary` with `kubeconfig` (or the caller's KUBECONFIG when none is given). */
export function kubectlRunner(binary: string, kubeconfig?: string): Kubectl {
  const env = kubeconfig ? { ...process.env, KUBECONFIG: kubeconfig } : process.env;
  return (args, input) =>
    new Promise((resolve, reject) => {
      const child = execFile(binary, args, { env, maxBuffer: 64 * 1024 * 1024 }, (err, stdout, stderr) => {
        if (err) reject(new Error(`kubectl ${args.join(' ')}: ${stderr.trim() || err.message}`));
        else resolve(stdout);
      });
      // kubectl may exit before reading its input; its own error is the one to report.
      child.stdin?.on('error', () => undefined);
      child.stdin?.end(input ?? '');
    });
}
