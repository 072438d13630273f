// What a component started, undone in reverse order: by stop(), or by a start that failed
// half-way, so a component lists each of its parts once.
export class Teardown {
  private readonly steps: (() => unknown)[] = [];
  private running: Promise<void> | undefined;

  /** Registers the undoing of something just started. */
  add(step: () => unknown): void {
    this.steps.push(step);
  }

  /** Runs every step, newest first, once; later calls wait for the same run. */
  run(): Promise<void> {
    return (this.running ??= (async () => {
      for (const step of this.steps.reverse()) await step();
    })());
  }
}
