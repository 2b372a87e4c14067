// src/kernel/process.ts against the kernel: the user namespace we run in (here, and in a
// new one made by unshare), and the process behind a pidfd (alive, exited, not a pidfd).
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { native } from '../../src/kernel/native.js';
import { inInitialUserNamespace, ownUserNamespaceIno, pidOfPidfd } from '../../src/kernel/process.js';
import { REPO_ROOT } from '../helpers/env.js';

const DIST = path.join(REPO_ROOT, 'dist', 'kernel', 'process.js');
const canUnshare = spawnSync('unshare', ['-r', 'true']).status === 0;

describe('process facts', () => {
  it('here: the answer agrees with the uid map (the initial namespace maps every uid to itself)', () => {
    const identity = /^\s*0\s+0\s+4294967295\s*$/.test(fs.readFileSync('/proc/self/uid_map', 'utf8'));
    expect(inInitialUserNamespace()).toBe(identity);
    expect(ownUserNamespaceIno()).toBe(fs.statSync('/proc/self/ns/user', { bigint: true }).ino);
  });

  it.skipIf(!canUnshare || !fs.existsSync(DIST))('in a user namespace of its own (unshare -r, mapping root): false', () => {
    const r = spawnSync('unshare', ['-r', process.execPath, '--input-type=module', '-e', `import { inInitialUserNamespace } from ${JSON.stringify(DIST)}; console.log(inInitialUserNamespace())`], {
      encoding: 'utf8',
    });
    expect([r.status, r.stdout, r.stderr]).toEqual([0, 'false\n', '']);
  });

  it('pidOfPidfd: the live process, -1 once it has exited, null for an fd that is no pidfd', async () => {
    const n = native();
    const child = spawn('sleep', ['30'], { stdio: 'ignore' });
    const pidfd = n.pidfdOpen(child.pid!);
    const file = n.open('/proc/self/status', n.constants.O_RDONLY);
    try {
      expect(pidOfPidfd(pidfd)).toBe(child.pid);
      const exited = new Promise((r) => child.once('exit', r));
      child.kill('SIGKILL');
      await exited;
      expect(pidOfPidfd(pidfd)).toBe(-1);
      expect(pidOfPidfd(file)).toBeNull();
    } finally {
      n.close(pidfd);
      n.close(file);
      child.kill('SIGKILL');
    }
  });
});
