// Issue 14: a listing closes each device once it has read it, as util-linux does. `-a` (and
// `-l` with BACK-INO or BACK-MAJ:MIN) opens every device for LOOP_GET_STATUS64; kept open
// until exit, a listing of more devices than free file descriptors lost the ids of the rest
// (printed "[]:", an empty BACK-INO). Checked in an instance under a soft and hard fd limit
// (prlimit) far below the device count: every line equals util-linux's line for the same
// device's host node, with the instance node's name in place of /dev/loopN.
import { execFileSync, spawnSync } from 'node:child_process';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { REF_LOSETUP } from '../helpers/env.js';
import { instanceSkipReason, LOSETUP, Sandbox, skipTitle } from './support.js';

const reason = instanceSkipReason('listing under an fd limit') ?? (spawnSync('prlimit', ['--version']).status === 0 ? undefined : 'no prlimit');

/** Devices in the instance; FD_LIMIT leaves node about a dozen descriptors of its own. */
const DEVICES = 40;
const FD_LIMIT = 30;

describe.skipIf(reason)(skipTitle('listing under an fd limit', reason), () => {
  let sb: Sandbox;
  let dir: string;
  /** instance node -> backing file */
  const nodes = new Map<string, string>();

  beforeAll(async () => {
    sb = new Sandbox('loopfs-listing-fds');
    dir = sb.path('inst');
    await sb.create(dir);
    for (let i = 0; i < DEVICES; i++) {
      const file = sb.file(`img${i}`);
      const r = await sb.losetup(['--instance', dir, '-f', '--show', file]);
      expect(r.exitCode).toBe(0);
      nodes.set(r.stdout.toString().trim(), file);
    }
  }, 120_000);
  afterAll(async () => {
    await sb?.cleanup();
  }, 60_000);

  /** util-linux's -a line for the host node of each instance node, renamed to the instance node. */
  function expectedLines(): string[] {
    return [...nodes.keys()]
      .map((node) => {
        const minor = Number(/loop(\d+)$/.exec(node)![1]);
        const line = execFileSync(REF_LOSETUP, [`/dev/loop${minor}`], { encoding: 'utf8' });
        expect(line.startsWith(`/dev/loop${minor}: `)).toBe(true);
        return `${node}${line.slice(`/dev/loop${minor}`.length)}`.replace(/\n$/, '');
      })
      .sort();
  }

  const limited = (args: string[]) =>
    spawnSync('prlimit', [`--nofile=${FD_LIMIT}:${FD_LIMIT}`, LOSETUP, '--instance', dir, ...args], { env: sb.env, encoding: 'utf8' });

  it('-a prints every device with its ids, each line as util-linux prints it', () => {
    const r = limited(['-a']);
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    const got = r.stdout.split('\n').filter((l) => l !== '').sort();
    expect(got).toEqual(expectedLines());
  });

  it('-l -O NAME,BACK-INO,BACK-FILE prints every backing inode', () => {
    const r = limited(['-l', '-n', '--raw', '-O', 'NAME,BACK-INO,BACK-FILE']);
    expect(r.stderr).toBe('');
    expect(r.status).toBe(0);
    const got = r.stdout.split('\n').filter((l) => l !== '').sort();
    const want = [...nodes]
      .map(([node, file]) => {
        const ino = execFileSync('stat', ['-c', '%i', file], { encoding: 'utf8' }).trim();
        return `${node} ${ino} ${file}`;
      })
      .sort();
    expect(got).toEqual(want);
  });
});
