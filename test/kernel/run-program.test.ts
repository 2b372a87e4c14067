// src/kernel/run-program.ts, the way mount.loop runs mount(8) without node:child_process:
// execvp's PATH search, and runProgram's exit status, signal, collected stderr, stdout on
// the fd given, stdin /dev/null, and its refusals. Real programs (/bin/sh), no devices.
import fs from 'node:fs';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { findInPath, runProgram } from '../../src/kernel/run-program.js';
import { makeTempDir, removeTree } from '../helpers/tmp.js';

describe('run-program', () => {
  let dir: string;
  beforeEach(() => {
    dir = makeTempDir('loopfs-run-program');
  });
  afterEach(() => removeTree(dir));

  it('findInPath takes the first executable regular file, skips the rest, and uses PATH as execvp does', () => {
    for (const d of ['a', 'b', 'c']) fs.mkdirSync(`${dir}/${d}`);
    fs.writeFileSync(`${dir}/a/tool`, '#!/bin/sh\n', { mode: 0o644 }); // not executable
    fs.mkdirSync(`${dir}/b/tool`, { mode: 0o755 }); // a directory
    fs.writeFileSync(`${dir}/c/tool`, '#!/bin/sh\n', { mode: 0o755 });
    expect(findInPath('tool', `${dir}/a:${dir}/b:${dir}/c`)).toBe(`${dir}/c/tool`);
    expect(findInPath('tool', `${dir}/a:${dir}/b`)).toBeNull();
    expect(findInPath('./x/tool', `${dir}/c`)).toBe('./x/tool'); // a slash: no search
    expect(findInPath('sh', undefined)).toBe('/bin/sh'); // glibc's default path
  });

  it('returns the exit status and the whole stderr; stdout goes to the fd given; stdin is /dev/null', () => {
    const outFile = `${dir}/out`;
    const fd = fs.openSync(outFile, 'w');
    try {
      const script = 'read -r line; echo "stdin:[$line]"; echo one >&2; printf "%5000s\\n" x >&2; echo out; exit 3';
      const r = runProgram('/bin/sh', ['sh', '-c', script], { PATH: '/usr/bin:/bin' }, fd);
      expect(r).toEqual({ code: 3, signal: null, stderr: `one\n${' '.repeat(4999)}x\n` });
    } finally {
      fs.closeSync(fd);
    }
    expect(fs.readFileSync(outFile, 'utf8')).toBe('stdin:[]\nout\n');
  });

  it('passes the environment given and reports a signal that ended the program', () => {
    const fd = fs.openSync(`${dir}/out`, 'w');
    try {
      const r = runProgram('/bin/sh', ['sh', '-c', 'echo "$ONLY_THIS" >&2; kill -TERM $$'], { ONLY_THIS: 'v=1' }, fd);
      expect(r).toEqual({ code: null, signal: 15, stderr: 'v=1\n' });
    } finally {
      fs.closeSync(fd);
    }
  });

  it('throws the SysError of execve, with the path, when the program cannot start', () => {
    let err: unknown;
    try {
      runProgram(`${dir}/none`, ['none'], {}, 1);
    } catch (e) {
      err = e;
    }
    expect(err).toMatchObject({ code: 'ENOENT', syscall: 'execve', path: `${dir}/none` });
  });
});
