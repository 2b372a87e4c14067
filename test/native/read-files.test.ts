// readFiles (native/read_files.cc) on files of our own: contents exactly as stored, a file of
// any size up to maxBytes whole from its first short read, and with READ_FILES_NO_FOLLOW
// (an instance's state files) nothing but a regular file read: a symlink in a file's own
// name, a FIFO (without blocking) and a directory are null, as a missing file is.
import fs from 'node:fs';
import path from 'node:path';
import { execFileSync } from 'node:child_process';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { native } from '../../src/kernel/native.js';
import { makeTempDir, removeTree } from '../helpers/tmp.js';

describe('readFiles', () => {
  let dir: string;
  beforeEach(() => {
    dir = makeTempDir('read-files');
  });
  afterEach(() => removeTree(dir));

  const setup = (): void => {
    fs.writeFileSync(path.join(dir, 'plain'), '{"state":"held"}\n');
    fs.writeFileSync(path.join(dir, 'bytes'), Buffer.from([0x00, 0xff, 0x0a, 0xc3, 0xa9]));
    fs.writeFileSync(path.join(dir, 'big'), 'x'.repeat(10000));
    fs.writeFileSync(path.join(dir, 'empty'), '');
    fs.writeFileSync(path.join(dir, 'target'), 'followed\n');
    fs.symlinkSync(path.join(dir, 'target'), path.join(dir, 'link'));
    fs.mkdirSync(path.join(dir, 'sub'));
    execFileSync('mkfifo', [path.join(dir, 'fifo')]);
  };
  const NAMES = ['plain', 'bytes', 'big', 'empty', 'link', 'sub', 'fifo', 'missing'];

  it('reads each file whole as latin1 (one char per byte), null when it cannot be read', () => {
    setup();
    const n = native();
    // the FIFO is left out: without READ_FILES_NO_FOLLOW its open() would wait for a writer
    const names = NAMES.filter((x) => x !== 'fifo');
    expect(n.readFiles([dir], names, 16384)).toEqual([
      '{"state":"held"}\n',
      '\u0000\u00ff\n\u00c3\u00a9',
      'x'.repeat(10000),
      '',
      'followed\n',
      null,
      null,
    ]);
  });

  it('with READ_FILES_NO_FOLLOW reads only regular files: a symlink, FIFO or directory is null', () => {
    setup();
    const n = native();
    const values = n.readFiles([dir], NAMES, 16384, n.constants.READ_FILES_NO_FOLLOW);
    expect(values).toEqual(['{"state":"held"}\n', '\u0000\u00ff\n\u00c3\u00a9', 'x'.repeat(10000), '', null, null, null, null]);
  });

  it('with READ_FILES_NO_FOLLOW through a /proc/self/fd link to a pinned directory reads that directory', () => {
    setup();
    const n = native();
    const fd = n.open(dir, n.constants.O_RDONLY | n.constants.O_DIRECTORY);
    try {
      // the directory is renamed away and another put in its place: the pinned one is read
      fs.renameSync(dir, `${dir}.moved`);
      fs.mkdirSync(dir);
      fs.writeFileSync(path.join(dir, 'plain'), 'impostor\n');
      expect(n.readFiles([`/proc/self/fd/${fd}`], ['plain', 'link'], 64, n.constants.READ_FILES_NO_FOLLOW)).toEqual(['{"state":"held"}\n', null]);
    } finally {
      n.close(fd);
      removeTree(`${dir}.moved`);
    }
  });

  it('with both flags a gate that is not a regular file leaves its directory unread', () => {
    setup();
    const n = native();
    const c = n.constants;
    const both = c.READ_FILES_FIRST_GATES | c.READ_FILES_NO_FOLLOW;
    expect(n.readFiles([dir], ['link', 'plain'], 64, both)).toEqual([null, null]);
    expect(n.readFiles([dir], ['plain', 'link', 'empty'], 64, both)).toEqual(['{"state":"held"}\n', null, '']);
  });

  it('refuses unknown flags', () => {
    expect(() => native().readFiles([dir], ['x'], 64, 4)).toThrow(/flags/);
  });
  it('a batch big enough for several threads keeps every value in its row and column, gated rows included', () => {
    const n = native();
    // 600 directories: above twice the per-thread threshold, so the rows are shared out
    const dirs: string[] = [];
    for (let i = 0; i < 600; i++) {
      const d = path.join(dir, `d${i}`);
      fs.mkdirSync(d);
      // every third directory lacks its gate: its other names must come back null unread
      if (i % 3 !== 0) fs.writeFileSync(path.join(d, 'gate'), `g${i}\n`);
      fs.writeFileSync(path.join(d, 'a'), `a${i}`);
      fs.writeFileSync(path.join(d, 'b'), 'b'.repeat(i));
      dirs.push(d);
    }
    const got = n.readFiles(dirs, ['gate', 'a', 'b'], 4096, n.constants.READ_FILES_FIRST_GATES);
    const want = dirs.flatMap((_, i) => (i % 3 === 0 ? [null, null, null] : [`g${i}\n`, `a${i}`, 'b'.repeat(i)]));
    expect(got).toEqual(want);
    expect(n.readFiles(dirs, ['a'], 4096)).toEqual(dirs.map((_, i) => `a${i}`));
  });
});
