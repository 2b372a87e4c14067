// Self-test of the side-by-side harness: it must pass util-linux against a copy of itself at
// another path (program-path and inode normalisation), and must fail loudly, with a readable diff,
// when the outputs differ.
import { describe, it, expect, afterAll } from 'vitest';
import { chmodSync, copyFileSync, mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { REF_LOSETUP, announceSkip, firstReason, loopSkipReason, refSkipReason } from '../helpers/env.js';
import { makeTempDir, removeTree } from '../helpers/tmp.js';
import { inodeTokens, normalise, removeScenarioRoot, runScenario, type Scenario } from './harness.js';

describe('harness normalisation (pure)', () => {
  it('replaces inode numbers by equal-width tokens and the program path by <PROG>', () => {
    const tok = inodeTokens(new Map([['a.img', 2147812], ['b.img', 10000001]]));
    expect(tok.get('2147812')).toBe('AAAAAAA');
    expect(tok.get('10000001')).toBe('BBBBBBBB');
    const out = normalise(
      '/x/bin/losetup: invalid option\n/dev/loop0: [65024]:2147812 (/d/a.img), offset 21478120\n' +
        '/dev/loop1  10000001 x\n',
      '/x/bin/losetup',
      tok,
    );
    expect(out).toBe('<PROG>: invalid option\n/dev/loop0: [65024]:AAAAAAA (/d/a.img), offset 21478120\n/dev/loop1  BBBBBBBB x\n');
  });
});

const reason = firstReason(loopSkipReason(), refSkipReason());
announceSkip('harness self-test', reason);

describe.skipIf(reason !== undefined)(`harness self-test against util-linux${reason ? ` [SKIPPED: ${reason}]` : ''}`, () => {
  const tmp = makeTempDir('loopfs-sbs-selftest');
  afterAll(() => {
    removeTree(tmp);
    removeScenarioRoot();
  });
  mkdirSync(path.join(tmp, 'bin'));
  const copy = path.join(tmp, 'bin', 'losetup');
  copyFileSync(REF_LOSETUP, copy);
  // A "target" that behaves like util-linux but appends a line to stdout of listing commands.
  const tampered = path.join(tmp, 'bin', 'tampered');
  writeFileSync(tampered, `#!/bin/bash\n( exec -a "$0" ${REF_LOSETUP} "$@" ); rc=$?\n[ "$1" = -a ] && echo extra-line\nexit $rc\n`);
  chmodSync(tampered, 0o755);
  // A "target" that prints a hard-coded program name instead of its own path.
  const wrongProg = path.join(tmp, 'bin', 'wrongprog');
  writeFileSync(wrongProg, `#!/bin/bash\nexec -a /usr/bin/losetup ${REF_LOSETUP} "$@"\n`);
  chmodSync(wrongProg, 0o755);

  const sc: Scenario = {
    name: 'selftest',
    files: { 'a.img': {}, 'b.img': { size: 3000 } },
    steps: [
      { run: ['-f', '--show', '{a.img}'], save: 'dev' },
      { run: ['-f', '--show', '{b.img}'] },
      { run: ['-a'] },
      { run: ['-l', '--output-all', '{dev}'] },
      { run: ['-x'] },
    ],
  };

  it('passes util-linux against a copy of itself at another path', async () => {
    await runScenario(sc, 'selftest', { target: copy, reportDir: '' });
  });

  it('fails with a readable diff when stdout differs', async () => {
    const err = await runScenario(sc, 'selftest', { target: tampered, reportDir: '' }).then(
      () => undefined,
      (e: Error) => e,
    );
    expect(err, 'a differing target must fail the scenario').toBeInstanceOf(Error);
    expect(String(err?.message)).toContain('side-by-side mismatch in "selftest / selftest"');
    // vitest prints a line diff of expected (util-linux) vs actual (target) transcripts
    const { actual, expected } = err as Error & { actual?: string; expected?: string };
    expect(actual).toContain('out| extra-line');
    expect(expected).not.toContain('extra-line');
    expect(actual).toMatch(/\[65024\]:A+ \(/); // inodes normalised in both
    expect(actual).toContain("<PROG>: invalid option -- 'x'");
  });

  it('does not normalise a program path other than the one actually run', async () => {
    const err = await runScenario(sc, 'selftest', { target: wrongProg, reportDir: '' }).then(
      () => undefined,
      (e: Error) => e,
    );
    expect(err).toBeInstanceOf(Error);
    const { actual, expected } = err as Error & { actual?: string; expected?: string };
    expect(actual).toContain("err| /usr/bin/losetup: invalid option -- 'x'");
    expect(expected).toContain("err| <PROG>: invalid option -- 'x'");
  });
});
