// setfsids: the calling thread's filesystem ids, and only that thread's. The oci-broker
// writes a rootless container's /dev as the container's user on its main thread while its
// instance workers keep reading root's 0700 state (a process-wide seteuid there made a
// worker fail with EACCES). Checked against the kernel: who may open a root-only file, who
// owns what is created, from the main thread and from a worker thread at the same time.
import fs from 'node:fs';
import path from 'node:path';
import { Worker } from 'node:worker_threads';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { native } from '../../src/kernel/native.js';
import { announceSkip } from '../helpers/env.js';
import { makeTempDir, removeTree } from '../helpers/tmp.js';

const NOBODY = 65534;
const skip = process.getuid?.() === 0 ? undefined : `needs root (running as uid ${process.getuid?.()})`;
announceSkip('setfsids', skip);

/**
 * A worker thread of this process, started now (a thread inherits the credentials of the
 * thread that creates it, so it is started before any switch, as a daemon's workers are):
 * read(file) answers 'ok' or the error code of its own attempt.
 */
async function startReader(): Promise<{ read(file: string): Promise<string>; stop(): Promise<number> }> {
  const code = `
    const { parentPort } = require('node:worker_threads');
    const fs = require('node:fs');
    parentPort.postMessage('ready');
    parentPort.on('message', (file) => {
      try { fs.readFileSync(file); parentPort.postMessage('ok'); }
      catch (e) { parentPort.postMessage(e.code); }
    });`;
  const w = new Worker(code, { eval: true });
  const next = () =>
    new Promise<string>((resolve, reject) => {
      w.once('message', resolve);
      w.once('error', reject);
    });
  expect(await next()).toBe('ready');
  return {
    read: (file) => {
      const answer = next();
      w.postMessage(file);
      return answer;
    },
    stop: () => w.terminate(),
  };
}

function readCode(file: string): string {
  try {
    fs.readFileSync(file);
    return 'ok';
  } catch (e) {
    return (e as NodeJS.ErrnoException).code ?? String(e);
  }
}

describe.skipIf(skip)('native setfsids', () => {
  let dir: string;
  let secret: string;
  let shared: string;
  beforeEach(() => {
    dir = makeTempDir('loopfs-fsids-');
    fs.chmodSync(dir, 0o755);
    secret = path.join(dir, 'secret');
    fs.writeFileSync(secret, 'root only\n', { mode: 0o600 });
    shared = path.join(dir, 'nobody');
    fs.mkdirSync(shared, { mode: 0o700 });
    fs.chownSync(shared, NOBODY, NOBODY);
  });
  afterEach(() => {
    // whatever a failed assertion left, the thread is root again before the next test
    native().setfsids(0, 0);
    removeTree(dir);
  });

  it('acts as the user on this thread only: a worker thread keeps root access meanwhile', async () => {
    const n = native();
    expect(readCode(secret)).toBe('ok');
    const reader = await startReader();
    const prev = n.setfsids(NOBODY, NOBODY);
    try {
      expect(prev).toEqual([0, 0]);
      expect(readCode(secret)).toBe('EACCES');
      expect(await reader.read(secret)).toBe('ok');
      // what this thread creates is the user's
      fs.writeFileSync(path.join(shared, 'made'), 'x');
      fs.symlinkSync('target', path.join(shared, 'link'));
    } finally {
      expect(n.setfsids(prev[0], prev[1])).toEqual([NOBODY, NOBODY]);
      await reader.stop();
    }
    expect(readCode(secret)).toBe('ok');
    for (const name of ['made', 'link']) {
      const st = fs.lstatSync(path.join(shared, name));
      expect([st.uid, st.gid]).toEqual([NOBODY, NOBODY]);
    }
    // and what it creates afterwards is root's again
    fs.writeFileSync(path.join(dir, 'after'), 'y');
    const st = fs.statSync(path.join(dir, 'after'));
    expect([st.uid, st.gid]).toEqual([0, 0]);
  });

  it('refuses ids that are not numbers in range', () => {
    const n = native();
    expect(() => n.setfsids(-1, 0)).toThrow();
    expect(() => n.setfsids(0, Number.NaN)).toThrow();
    expect(n.setfsids(0, 0)).toEqual([0, 0]);
  });
});
