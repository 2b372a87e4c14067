// Issue 16, the short profile of the chaos soak (test/chaos/driver.ts): every path at once for
// a bounded time (90 s by default) with random SIGKILLs of clients, `loopfs serve`, the
// `activate --watch` watcher and, with podman, the OCI broker, hooks, conmon and container
// inits; then each fault; then `loopfs gc` and every leak count, which must all be 0.
//
// It takes the machine for about two minutes (LOOPFS_CHAOS=0 leaves it out). bench/soak.mjs runs the
// same file for the long profile with LOOPFS_CHAOS_SECONDS and LOOPFS_CHAOS_REPORT (a JSON file
// the report is written to).
import fs from 'node:fs';
import { describe, expect, it } from 'vitest';
import { announceSkip, firstReason } from '../helpers/env.js';
import { brokerSkipReason } from '../broker/support.js';
import { podmanSkipReason } from '../oci/support.js';
import { soak } from './driver.js';

const seconds = Number(process.env.LOOPFS_CHAOS_SECONDS ?? 90);
const seed = Number(process.env.LOOPFS_CHAOS_SEED ?? Date.now() % 1_000_000);
// on by default (the suite runs its files one after another, so nothing else runs beside it);
// LOOPFS_CHAOS=0 leaves it out of a run
const optIn = process.env.LOOPFS_CHAOS === '0' ? 'left out: LOOPFS_CHAOS=0' : undefined;
const reason = firstReason(optIn, optIn ? undefined : brokerSkipReason('chaos soak'));
announceSkip('chaos soak', reason);
// podman is one more path when it can run here; the rest of the soak runs without it
const podman = !reason && process.env.LOOPFS_CHAOS_PODMAN !== '0' && podmanSkipReason('chaos soak: podman paths') === undefined;

describe.skipIf(reason !== undefined)('chaos soak (short profile)', () => {
  it(`${seconds} s of every path under random SIGKILLs, then each fault: every failure is one line, nothing leaks`, async () => {
    const report = await soak({
      seconds,
      seed,
      podman,
      restartMs: Number(process.env.LOOPFS_CHAOS_RESTART_MS ?? 300),
      killEveryMs: Number(process.env.LOOPFS_CHAOS_KILL_EVERY_MS ?? 400),
      // the short run ends before a node daemon's heap has reached its working size: its RSS
      // is reported, not judged (driver.ts growth()); the long profile judges it
      rssWarmupSeconds: Number(process.env.LOOPFS_CHAOS_RSS_WARMUP_SECONDS ?? 300),
      viewWorkers: Number(process.env.LOOPFS_CHAOS_VIEW_WORKERS ?? 1),
      log: (l) => console.log(l),
    });
    const out = process.env.LOOPFS_CHAOS_REPORT;
    if (out) fs.writeFileSync(out, `${JSON.stringify(report, null, 2)}\n`);
    console.log(`[chaos] seed ${seed}: ${JSON.stringify({ ops: report.ops, kills: report.kills, failures: report.failures }, null, 1)}`);
    for (const f of report.faults) console.log(`[chaos] fault ${f.name}: ${f.notes.join(' | ')}`);
    console.log(`[chaos] growth ${JSON.stringify(report.growth)}`);
    console.log(`[chaos] leaks ${JSON.stringify(Object.fromEntries(Object.entries(report.leaks).filter(([, v]) => v.length)))}`);
    for (const b of report.badFailures) console.log(`[chaos] bad failure: ${b}`);
    for (const [lost, events] of Object.entries(report.lostTrace)) console.log(`[chaos] ${lost}:\n  ${events.join('\n  ')}`);

    // it really ran: work done on every path, kills that hit something
    expect(report.ops, 'operations done').toBeGreaterThan(0);
    for (const p of ['local attach', 'broker attach', 'broker mount', 'view attach', ...(podman ? ['podman rootful attach', 'podman rootless attach'] : [])]) {
      expect(report.latency[p]?.ops ?? 0, `successful operations on path '${p}'`).toBeGreaterThan(0);
    }
    expect(report.kills.client ?? 0, 'clients killed').toBeGreaterThan(0);
    expect(report.kills['loopfs serve'] ?? 0, 'loopfs serve killed').toBeGreaterThan(0);
    expect(report.kills['activate --watch'] ?? 0, 'watcher killed').toBeGreaterThan(0);
    expect(Object.values(report.restarts).reduce((a, b) => a + b, 0), 'daemons restarted').toBeGreaterThan(0);

    // every failure of our tools: one line, non-zero; nothing hung
    expect(report.badFailures).toEqual([]);
    // every fault survived as it must be
    expect(report.faults.map((f) => ({ fault: f.name, problems: f.problems }))).toEqual(report.faults.map((f) => ({ fault: f.name, problems: [] })));
    // and after gc nothing is left
    const leaks = Object.fromEntries(Object.entries(report.leaks).filter(([, v]) => v.length > 0));
    expect(leaks).toEqual({});
  }, (seconds + 240) * 1000);
});
