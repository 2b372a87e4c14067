// getopt's messages name the command as util-linux's would: a #! script never sees the
// argv[0] a shell gave it (the kernel hands node only the path), so bin/losetup rebuilds it
// (commandAsInvoked, bin/load-bundle.cjs). Each way a script runs losetup, ours and
// util-linux's side by side, the same stderr byte for byte (the directory aside). No devices.
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { REF_LOSETUP, REPO_ROOT } from '../helpers/env.js';
import { makeTempDir, removeTree } from '../helpers/tmp.js';

const reason = fs.existsSync(REF_LOSETUP) ? undefined : `${REF_LOSETUP} not installed`;

describe.skipIf(reason)(`losetup's argv[0] in getopt messages${reason ? ` (skipped: ${reason})` : ''}`, () => {
  let root: string;
  const dirs = { ours: '', ref: '' };
  beforeAll(() => {
    root = makeTempDir('loopfs-argv0');
    for (const [who, target] of [
      ['ours', path.join(REPO_ROOT, 'bin/losetup')],
      ['ref', REF_LOSETUP],
    ] as const) {
      dirs[who] = path.join(root, who);
      fs.mkdirSync(dirs[who]);
      fs.symlinkSync(target, path.join(dirs[who], 'losetup'));
    }
  });
  afterAll(() => removeTree(root));

  /** stderr of `sh -c CMD` for both, with PATH led by their directory or not, the directory as <DIR>. */
  function both(cmd: (dir: string) => string, inPath: boolean, cwd?: (dir: string) => string): { ours: string; ref: string } {
    const run = (dir: string) => {
      const r = spawnSync('/bin/sh', ['-c', cmd(dir)], {
        cwd: cwd ? cwd(dir) : root,
        env: { PATH: inPath ? `${dir}:/usr/bin:/bin` : '/usr/bin:/bin', LANG: 'C' },
        encoding: 'utf8',
      });
      expect(r.status).toBe(1);
      return r.stderr.split(dir).join('<DIR>');
    };
    return { ours: run(dirs.ours), ref: run(dirs.ref) };
  }

  it('by name through PATH: "losetup: invalid option"', () => {
    const r = both(() => 'losetup -x', true);
    expect(r.ref).toBe("losetup: invalid option -- 'x'\nTry 'losetup --help' for more information.\n");
    expect(r.ours).toBe(r.ref);
  });

  it('by its full path, outside PATH: the path', () => {
    const r = both((dir) => `${dir}/losetup --bogus`, false);
    expect(r.ref).toBe("<DIR>/losetup: unrecognized option '--bogus'\nTry 'losetup --help' for more information.\n");
    expect(r.ours).toBe(r.ref);
  });

  it('by a relative path: that path', () => {
    const r = both(() => './losetup -x', false, (dir) => dir);
    expect(r.ref).toBe("./losetup: invalid option -- 'x'\nTry 'losetup --help' for more information.\n");
    expect(r.ours).toBe(r.ref);
  });
});
