// Issue 7, crash safety of `loopfs run`: CMD (a container looping over `mount -o loop`, read,
// `umount` as its user-namespace root) is SIGKILLed at random points, ≥ 100 times. Each time
// the supervisor must end what CMD left running and exit with 128+9, and nothing may remain:
// no process of the run, no mount in the host namespace, no instance device still bound
// (autoclear frees them once the container's mount namespace is gone).
//
// Three workers run in parallel, each with its own instance, activated /dev, image and mount
// point, so that a device in use can only belong to that worker's run. The third one runs
// with --fuse (when fuse2fs is installed): no FUSE driver may outlive its run either.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { waitUnbound } from '../helpers/devices.js';
import { fuseDriversUnder, installed, LOOPFS, RunSandbox, runSkipReason } from './support.js';
import { sleep } from '../broker/support.js';

const reason = runSkipReason('loopfs run kill tests');
const WORKERS = 3;
const KILLS = 102;

/** Processes whose command line contains `marker`. */
function processesWith(marker: string): number[] {
  const out: number[] = [];
  for (const e of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(e) || Number(e) === process.pid) continue;
    try {
      if (fs.readFileSync(`/proc/${e}/cmdline`, 'utf8').includes(marker)) out.push(Number(e));
    } catch {
      /* gone */
    }
  }
  return out;
}

/** Children of pid (every thread's /proc/PID/task/TID/children). */
function childrenOf(pid: number): number[] {
  const out: number[] = [];
  try {
    for (const tid of fs.readdirSync(`/proc/${pid}/task`)) {
      for (const c of fs.readFileSync(`/proc/${pid}/task/${tid}/children`, 'utf8').split(' ')) if (c.trim()) out.push(Number(c));
    }
  } catch {
    /* gone */
  }
  return out;
}

describe.skipIf(reason)(reason ? `loopfs run kill (skipped: ${reason})` : 'loopfs run kill', () => {
  let sb: RunSandbox;

  beforeAll(() => {
    sb = new RunSandbox('loopfs-run-kill');
  });

  afterAll(async () => {
    await sb?.teardown();
  });

  it(`SIGKILL of CMD at ${KILLS} random points leaves no process, mount or bound device behind`, async () => {
    const failures: string[] = [];
    const outcomes = { killedCmd: 0, beforeExec: 0, mountedBeforeKill: 0, fuseRuns: 0 };

    async function worker(w: number, iterations: number): Promise<void> {
      const [dir, dev] = await sb.activated(`inst${w}`, 2);
      const img = path.join(sb.files, `w${w}.img`);
      fs.copyFileSync(sb.image, img);
      sb.giveToUser(img);
      const mnt = sb.userDir(`mnt${w}`);
      const out = sb.userDir(`out${w}`);
      const fuse = w === 2 && installed('fuse2fs');
      if (fuse) outcomes.fuseRuns += iterations;
      for (let i = 0; i < iterations; i++) {
        const marker = `loopfs-kill-marker-${w}-${i}-${process.pid}`;
        const script = [
          `: ${marker}`,
          'n=0',
          'while :; do',
          '  /usr/bin/mount -o loop "$IMG" "$MNT" && n=$((n+1)) && echo "$n" > "$OUT/mounted"',
          '  cat "$MNT/hello.txt" > "$OUT/read" 2>&1',
          '  /usr/bin/umount "$MNT"',
          'done',
        ].join('\n');
        fs.rmSync(path.join(out, 'mounted'), { force: true });
        const child = spawn(LOOPFS, sb.runArgv(dir, dev, script, fuse ? ['--fuse'] : []), {
          env: { ...sb.env, RUN_DEV: dev, IMG: img, MNT: mnt, OUT: out },
          cwd: sb.root,
          stdio: ['ignore', 'ignore', 'pipe'],
        });
        let stderr = '';
        child.stderr!.on('data', (b: Buffer) => (stderr += b.toString()));
        const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
          child.on('exit', (code, signal) => resolve({ code, signal })),
        );
        // CMD is the run's only child; kill it a random time after it appears
        let cmd: number | undefined;
        const end = Date.now() + 20_000;
        while (cmd === undefined && Date.now() < end && child.exitCode === null) {
          cmd = childrenOf(child.pid!)[0];
          if (cmd === undefined) await sleep(10);
        }
        if (cmd === undefined) {
          child.kill('SIGKILL');
          failures.push(`w${w}#${i}: CMD never appeared: ${stderr}`);
          await exited;
          continue;
        }
        await sleep(Math.floor(Math.random() * 1200));
        if (fs.existsSync(path.join(out, 'mounted'))) outcomes.mountedBeforeKill++;
        try {
          process.kill(cmd, 'SIGKILL');
        } catch {
          /* gone */
        }
        const t = setTimeout(() => child.kill('SIGKILL'), 20_000);
        const how = await exited;
        clearTimeout(t);
        if (how.code === 137) outcomes.killedCmd++;
        else if (how.code === 1 && /^loopfs: /.test(stderr)) outcomes.beforeExec++; // killed between fork and exec
        else failures.push(`w${w}#${i}: loopfs run ended with ${JSON.stringify(how)}: ${stderr}`);
        const left = processesWith(marker);
        if (left.length) failures.push(`w${w}#${i}: processes left: ${left.join(' ')}`);
        const drivers = fuseDriversUnder(dir);
        if (drivers.length) failures.push(`w${w}#${i}: FUSE drivers left: ${drivers.join(' ')}`);
        for (const m of sb.held(dir)) {
          if (!(await waitUnbound(`loop${m}`, 10_000))) failures.push(`w${w}#${i}: loop${m} still bound after the run`);
        }
      }
    }

    const per = Math.ceil(KILLS / WORKERS);
    await Promise.all(Array.from({ length: WORKERS }, (_, w) => worker(w, per)));
    expect(failures).toEqual([]);
    expect(outcomes.killedCmd + outcomes.beforeExec).toBe(per * WORKERS);
    expect(outcomes.mountedBeforeKill, `kills that landed after at least one intercepted mount: ${JSON.stringify(outcomes)}`).toBeGreaterThan(10);
    expect(sb.hostMounts(), 'nothing mounted in the host namespace').toEqual([]);
    console.log(`[run-kill] ${JSON.stringify(outcomes)}`);
  }, 600_000);
});
