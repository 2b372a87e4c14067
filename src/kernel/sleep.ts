/** Synchronous sleep: the CLI is single-purpose and blocking keeps retry loops simple. */
const cell = new Int32Array(new SharedArrayBuffer(4));

export function sleepMs(ms: number): void {
  if (ms > 0) Atomics.wait(cell, 0, 0, ms);
}

/** A random delay in [lo, hi) ms: jitter so that racing processes stop colliding. */
export function jitterMs(lo: number, hi: number): number {
  return lo + Math.floor(Math.random() * (hi - lo));
}
