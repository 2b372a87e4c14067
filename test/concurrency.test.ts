// 64 concurrent `losetup -f --show FILE` on 64 distinct files: every one must succeed, get its
// own device, and that device must be bound to its file. Only the devices attached here are
// detached afterwards (found by their backing files in this test's private directory).
import { describe, it, expect, afterAll } from 'vitest';
import { closeSync, ftruncateSync, openSync } from 'node:fs';
import path from 'node:path';
import { announceSkip, cleanupTargetCopy, firstReason, loopSkipReason, refSkipReason, targetLosetup, targetSkipReason } from './helpers/env.js';
import { DeviceTracker, readLoopState } from './helpers/devices.js';
import { pinnedEnv, runProgram } from './helpers/run.js';
import { makeTempDir, removeTree } from './helpers/tmp.js';

const N = 64;
const target = targetLosetup();
// util-linux is needed for cleanup (detach never depends on the code under test).
const reason = firstReason(loopSkipReason(), refSkipReason(), targetSkipReason(target));
announceSkip('concurrency', reason);

describe.skipIf(reason !== undefined)(`concurrency${reason ? ` [SKIPPED: ${reason}]` : ''}`, () => {
  afterAll(() => cleanupTargetCopy());

  it(`${N} concurrent -f --show on ${N} distinct files`, { timeout: 180_000 }, async () => {
    const dir = makeTempDir('loopfs-concurrency');
    const tracker = new DeviceTracker();
    tracker.ownDir(dir);
    try {
      const files = Array.from({ length: N }, (_, i) => {
        const f = path.join(dir, `img${String(i).padStart(2, '0')}`);
        const fd = openSync(f, 'w');
        ftruncateSync(fd, 1024 * 1024);
        closeSync(fd);
        return f;
      });
      const env = pinnedEnv();
      // All spawned in the same tick; none is awaited before the last one has started.
      const runs = files.map((f) => runProgram(target, ['-f', '--show', f], { cwd: dir, env, timeoutMs: 120_000 }));
      const results = await Promise.all(runs);

      const report = results.map((r, i) => ({
        file: path.basename(files[i]),
        rc: r.exitCode,
        stdout: r.stdout.toString(),
        stderr: r.stderr.toString(),
      }));
      const failed = report.filter((r) => r.rc !== 0 || r.stderr !== '');
      expect(failed, 'every losetup -f --show must exit 0 with empty stderr').toEqual([]);

      const names = report.map((r) => r.stdout.trim());
      for (const r of report) expect(r.stdout, `${r.file}: stdout must be exactly one device line`).toMatch(/^\/dev\/loop\d+\n$/);
      const dupes = names.filter((n, i) => names.indexOf(n) !== i);
      expect(dupes, 'device names must be distinct').toEqual([]);

      const mismatched = names
        .map((dev, i) => ({ dev, file: files[i], bound: readLoopState(dev)?.backingFile }))
        .filter((m) => m.bound !== m.file);
      expect(mismatched, "each device's /sys/block/loopN/loop/backing_file must be its own file").toEqual([]);
    } finally {
      // Detach exactly the devices bound to this test's files (whatever the command printed).
      try {
        await tracker.detachAll();
      } finally {
        removeTree(dir);
      }
    }
  });
});
