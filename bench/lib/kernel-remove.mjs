// The kernel's share of giving devices back, for the benches that compare against it
// (scale.mjs, gc.mjs): `count` fresh indexes made above every device (LOOP_CTL_ADD, ours
// alone) and removed again as destroy, -D and gc remove them (LoopControl.removeMany).
// Returns ms per device of the removal. Every index it made is gone when it returns.
import { readdirSync } from 'node:fs';

/** `LoopControl`: the class of dist/kernel/loop-control.js (the caller imports the build). */
export function kernelRemoveMs(LoopControl, count) {
  const ctl = LoopControl.open();
  const made = [];
  try {
    let next = Math.max(-1, ...readdirSync('/sys/block').filter((x) => /^loop\d+$/.test(x)).map((x) => Number(x.slice(4)))) + 1000;
    while (made.length < count) {
      try {
        ctl.add(next);
        made.push(next);
      } catch (e) {
        if (e?.code !== 'EEXIST') throw e; // taken meanwhile: the next one; else a kernel limit
      }
      next++;
    }
    const t0 = process.hrtime.bigint();
    const outcome = ctl.removeMany(made);
    const ms = Number(process.hrtime.bigint() - t0) / 1e6;
    // a fresh unbound index that somebody opened meanwhile: one more try, one by one
    for (const [i, o] of outcome.entries()) if (o === 'busy') LoopControl.removeIndex(made[i]);
    made.length = 0;
    return ms / count;
  } finally {
    for (const m of made) LoopControl.removeIndex(m);
    ctl.close();
  }
}
