/**
 * A progress line on stderr for operations that touch many devices (`instance destroy`,
 * `gc`): only on a terminal, and only when there is enough to wait for. Scripts (stderr
 * not a TTY) get nothing extra, ever. The line is redrawn in place and erased at the end,
 * so the command's own output is the same with or without it.
 */
import type { ProgressFn } from '../instance/progress.js';

/** Fewer items than this finish before anybody would look at a progress line. */
export const PROGRESS_THRESHOLD = 5;

export interface ProgressStream {
  isTTY?: boolean;
  write(s: string): unknown;
}

export class Progress {
  private shown = false;
  private lastDraw = 0;

  constructor(
    private readonly label: string,
    private readonly stream: ProgressStream = process.stderr,
    private readonly minIntervalMs = 50,
  ) {}

  /** The callback destroy and gc (instance/destroy.ts, gc.ts) take; a no-op where no progress is wanted. */
  get callback(): ProgressFn | undefined {
    if (this.stream.isTTY !== true) return undefined;
    return (step, done, total) => this.update(step, done, total);
  }

  private update(step: string, done: number, total: number): void {
    if (total < PROGRESS_THRESHOLD) return;
    const now = Date.now();
    // redraw at most every minIntervalMs, but always show the final count of a step
    if (done < total && this.shown && now - this.lastDraw < this.minIntervalMs) return;
    this.lastDraw = now;
    this.shown = true;
    const width = 20;
    const filled = Math.round((done / total) * width);
    this.stream.write(`\r\x1b[K${this.label}: ${step} [${'#'.repeat(filled)}${'.'.repeat(width - filled)}] ${done}/${total}`);
  }

  /** Erase the line (call in finally: an error message must start on a clean line). */
  end(): void {
    if (this.shown) this.stream.write('\r\x1b[K');
    this.shown = false;
  }
}
