// The progress line of `instance destroy` and `gc`: drawn on stderr when it is a terminal (a real
// pty, made by util-linux `script`), never in scripts (stderr a pipe), where the output is exactly
// what it was without progress.
import { execFileSync } from 'node:child_process';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { Progress, PROGRESS_THRESHOLD } from '../../src/cli/progress.js';
import { instanceSkipReason, LOOPFS, Sandbox, skipTitle, text } from '../instance/support.js';

describe('Progress', () => {
  const sink = (isTTY: boolean) => {
    const out: string[] = [];
    return { out, stream: { isTTY, write: (s: string) => out.push(s) } };
  };

  it('offers no callback when the stream is not a terminal', () => {
    expect(new Progress('x', sink(false).stream).callback).toBeUndefined();
  });

  it('stays silent below the threshold, draws and erases above it', () => {
    const small = sink(true);
    const p1 = new Progress('gc', small.stream, 0);
    for (let i = 0; i <= PROGRESS_THRESHOLD - 1; i++) p1.callback!('devices', i, PROGRESS_THRESHOLD - 1);
    p1.end();
    expect(small.out).toEqual([]);

    const big = sink(true);
    const p2 = new Progress('gc', big.stream, 0);
    for (let i = 0; i <= 8; i++) p2.callback!('devices', i, 8);
    p2.end();
    expect(big.out[0]).toBe('\r\x1b[Kgc: devices [....................] 0/8');
    expect(big.out.at(-2)).toBe('\r\x1b[Kgc: devices [####################] 8/8');
    expect(big.out.at(-1)).toBe('\r\x1b[K');
  });
});

const reason = instanceSkipReason('progress tests');

describe.skipIf(reason)(skipTitle('progress of instance destroy and gc', reason), () => {
  let sb: Sandbox;
  beforeEach(() => {
    sb = new Sandbox('loopfs-progress');
  });
  afterEach(async () => {
    await sb.cleanup();
  });

  /** An instance with `n` bound devices. */
  async function instanceWith(dir: string, n: number): Promise<string> {
    const st = await sb.create(dir);
    for (let i = 0; i < n; i++) {
      const r = await sb.losetup(['--instance', dir, '-f', sb.file(`f${i}.img`)]);
      expect([r.exitCode, text(r.stderr)]).toEqual([0, '']);
    }
    return st.id;
  }

  /** Run loopfs on a pty; returns everything the terminal showed (stdout and stderr). */
  const onPty = (args: string[]) =>
    execFileSync('script', ['-qec', [LOOPFS, ...args].join(' '), '/dev/null'], { env: { ...sb.env, TERM: 'xterm' }, encoding: 'utf8' });

  it('instance destroy: progress on a terminal, nothing extra in a pipe', async () => {
    const n = PROGRESS_THRESHOLD + 1;
    const a = sb.path('a');
    const idA = await instanceWith(a, n);
    const piped = await sb.loopfs(['instance', 'destroy', a]);
    expect(text(piped.stderr)).toBe('');
    expect(text(piped.stdout)).toBe(`destroyed instance ${idA}: ${n} device(s) removed\n`);

    const b = sb.path('b');
    const idB = await instanceWith(b, n);
    const shown = onPty(['instance', 'destroy', b]);
    expect(shown).toContain(`destroy: devices [`);
    expect(shown).toContain(`] ${n}/${n}`);
    // the line is erased before the result, which stands alone on its line
    expect(shown).toMatch(new RegExp(`\\r\\x1b\\[Kdestroyed instance ${idB}: ${n} device\\(s\\) removed\\r?\\n$`));
    expect(sb.bound()).toEqual([]);
  });

  it('gc: progress over many instances on a terminal, none in a pipe', async () => {
    for (let i = 0; i < PROGRESS_THRESHOLD; i++) await sb.create(sb.path(`i${i}`));
    const piped = await sb.loopfs(['gc']);
    expect(text(piped.stderr)).toBe('');
    expect(text(piped.stdout)).toBe(`${PROGRESS_THRESHOLD} instance(s) checked, 0 fix(es), 0 pending\n`);
    const shown = onPty(['gc']);
    expect(shown).toContain(`gc: instances [`);
    expect(shown).toContain(`${PROGRESS_THRESHOLD}/${PROGRESS_THRESHOLD}`);
    expect(shown).toMatch(/\r\x1b\[K5 instance\(s\) checked, 0 fix\(es\), 0 pending\r?\n$/);
  });
});
