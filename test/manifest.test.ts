/**
 * oclif.manifest.json is generated (`npm run manifest`) and committed so that `loopfs`
 * does not scan its command directory at start-up. This test regenerates it into a
 * scratch copy of the package and fails when the committed one is stale.
 */
import { execFileSync } from 'node:child_process';
import { cpSync, mkdtempSync, readFileSync, rmSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { describe, expect, it } from 'vitest';

const root = resolve(__dirname, '..');

describe('oclif.manifest.json', () => {
  it('matches the commands in dist/commands', () => {
    const scratch = mkdtempSync(join(tmpdir(), 'loopfs-manifest-'));
    try {
      cpSync(join(root, 'package.json'), join(scratch, 'package.json'));
      cpSync(join(root, 'dist'), join(scratch, 'dist'), { recursive: true });
      symlinkSync(join(root, 'node_modules'), join(scratch, 'node_modules'));
      execFileSync(join(root, 'node_modules/.bin/oclif'), ['manifest', scratch], { cwd: scratch, stdio: 'pipe' });
      const fresh = JSON.parse(readFileSync(join(scratch, 'oclif.manifest.json'), 'utf8'));
      const committed = JSON.parse(readFileSync(join(root, 'oclif.manifest.json'), 'utf8'));
      expect(committed).toEqual(fresh);
    } finally {
      rmSync(scratch, { recursive: true, force: true });
    }
  }, 120_000);
});
