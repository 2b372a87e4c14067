/**
 * `loopfs install` / `loopfs uninstall`: put `mount.loop` where mount(8) looks for
 * helpers, `losetup` where the user chooses, and the manual pages, and record every
 * change so that uninstall undoes exactly that and nothing else.
 *
 * Nothing that belongs to the system is ever replaced silently: an existing file at a
 * target is an error, except `/usr/sbin/losetup` with `--replace-losetup`, which is
 * first renamed to a backup that uninstall puts back.
 */
import {
  copyFileSync,
  existsSync,
  lstatSync,
  mkdirSync,
  readFileSync,
  readdirSync,
  readlinkSync,
  rmdirSync,
  renameSync,
  rmSync,
  symlinkSync,
  writeFileSync,
} from 'node:fs';
import { createHash } from 'node:crypto';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { hookFileContent, hookFileName } from '../oci/hooks-json.js';
import { STAGES } from '../oci/policy.js';

/** mount(8) searches /sbin:/sbin/fs.d:/sbin/fs for helpers; /sbin is /usr/sbin on Debian. */
export const HELPER_DIR = '/sbin';
export const SYSTEM_LOSETUP = '/usr/sbin/losetup';

export interface InstallOptions {
  prefix: string; // man pages go to PREFIX/share/man/man8, losetup to PREFIX/sbin by default
  helperDir: string;
  losetupDir: string | null; // null: do not install losetup
  replaceLosetup: boolean;
  record: string;
  /** Write the OCI hook files (oci/hooks-json.ts) into this directory; null or absent: none. */
  ociHooksDir?: string | null;
}

export type Change =
  | { kind: 'dir'; path: string }
  | { kind: 'symlink'; path: string; target: string }
  | { kind: 'file'; path: string; sha256: string }
  | { kind: 'backup'; path: string; backup: string };

export interface InstallRecord {
  version: 1;
  package: string;
  changes: Change[];
}

export class InstallError extends Error {}

/** The package root (where bin/, man/ live), from this module's location in dist/. */
export function packageRoot(): string {
  return resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
}

function sha256(path: string): string {
  return createHash('sha256').update(readFileSync(path)).digest('hex');
}

/** Directories created by the current step (mkdirs() records the topmost new one). */
const createdDirs: string[] = [];

function mkdirs(dir: string): void {
  const first = mkdirSync(dir, { recursive: true });
  if (first) createdDirs.push(first);
}

function occupied(path: string): boolean {
  try {
    lstatSync(path);
    return true;
  } catch {
    return false;
  }
}

export function defaultRecord(env: NodeJS.ProcessEnv = process.env): string {
  return env.LOOPFS_INSTALL_RECORD || '/var/lib/loopfs/install.json';
}

export function readRecord(path: string): InstallRecord | null {
  try {
    return JSON.parse(readFileSync(path, 'utf8')) as InstallRecord;
  } catch {
    return null;
  }
}

function writeRecord(path: string, rec: InstallRecord): void {
  mkdirSync(dirname(path), { recursive: true });
  const tmp = `${path}.${process.pid}.tmp`;
  writeFileSync(tmp, `${JSON.stringify(rec, null, 2)}\n`);
  renameSync(tmp, path);
}

/**
 * Plan first, then apply: every conflict is found before anything is touched, so a
 * refused install changes nothing. A failure while applying undoes what was applied.
 */
export function install(opts: InstallOptions): InstallRecord {
  if (readRecord(opts.record)) throw new InstallError(`already installed (see ${opts.record}); run 'loopfs uninstall' first`);
  const root = packageRoot();
  const plan: Array<() => Change> = [];

  const link = (path: string, target: string) => {
    if (occupied(path)) throw new InstallError(`${path} exists; not replacing it`);
    plan.push(() => {
      mkdirs(dirname(path));
      symlinkSync(target, path);
      return { kind: 'symlink', path, target };
    });
  };

  link(join(opts.helperDir, 'mount.loop'), join(root, 'bin', 'mount.loop'));

  if (opts.replaceLosetup) {
    const backup = `${SYSTEM_LOSETUP}.util-linux`;
    if (!existsSync(SYSTEM_LOSETUP)) throw new InstallError(`${SYSTEM_LOSETUP} does not exist; nothing to replace`);
    if (occupied(backup)) throw new InstallError(`${backup} exists; not overwriting a backup`);
    plan.push(() => {
      renameSync(SYSTEM_LOSETUP, backup);
      return { kind: 'backup', path: SYSTEM_LOSETUP, backup };
    });
    plan.push(() => {
      symlinkSync(join(root, 'bin', 'losetup'), SYSTEM_LOSETUP);
      return { kind: 'symlink', path: SYSTEM_LOSETUP, target: join(root, 'bin', 'losetup') };
    });
  } else if (opts.losetupDir) {
    const target = join(opts.losetupDir, 'losetup');
    if (resolve(target) === SYSTEM_LOSETUP || resolve(target) === '/sbin/losetup') {
      throw new InstallError(`${target} is util-linux's; use --replace-losetup to replace it (with a backup)`);
    }
    link(target, join(root, 'bin', 'losetup'));
  }

  const manDir = join(opts.prefix, 'share', 'man', 'man8');
  for (const page of ['losetup.8', 'mount.loop.8', 'loopfs.8']) {
    const src = join(root, 'man', page);
    if (!existsSync(src)) continue;
    const dst = join(manDir, page);
    if (occupied(dst)) throw new InstallError(`${dst} exists; not replacing it`);
    plan.push(() => {
      mkdirs(manDir);
      copyFileSync(src, dst);
      return { kind: 'file', path: dst, sha256: sha256(dst) };
    });
  }

  if (opts.ociHooksDir) {
    const hooksDir = resolve(opts.ociHooksDir);
    for (const stage of STAGES) {
      const dst = join(hooksDir, hookFileName(stage));
      if (occupied(dst)) throw new InstallError(`${dst} exists; not replacing it`);
      plan.push(() => {
        mkdirs(hooksDir);
        writeFileSync(dst, hookFileContent(stage, root, process.execPath, process.env), { mode: 0o644 });
        return { kind: 'file', path: dst, sha256: sha256(dst) };
      });
    }
  }

  const rec: InstallRecord = { version: 1, package: root, changes: [] };
  try {
    for (const step of plan) {
      const before = rec.changes.length;
      const change = step();
      // directories the step had to create come first, so that undo removes them last
      rec.changes.splice(before, 0, ...createdDirs.splice(0).map((path): Change => ({ kind: 'dir', path })));
      rec.changes.push(change);
      writeRecord(opts.record, rec); // after each step: a crash leaves an exact record
    }
  } catch (e) {
    undo(rec.changes);
    rmSync(opts.record, { force: true });
    throw e;
  }
  return rec;
}

/** Undo changes in reverse order; only what is still exactly what we made. */
function undo(changes: Change[]): string[] {
  const skipped: string[] = [];
  for (const c of [...changes].reverse()) {
    switch (c.kind) {
      case 'dir':
        // only what is empty again: the user may have put files there since
        try {
          rmdirTree(c.path);
        } catch {
          skipped.push(`${c.path} (not empty; left alone)`);
        }
        break;
      case 'symlink': {
        let ours = false;
        try {
          ours = lstatSync(c.path).isSymbolicLink() && readlinkSync(c.path) === c.target;
        } catch {
          /* gone already */
        }
        if (ours) rmSync(c.path);
        else if (occupied(c.path)) skipped.push(`${c.path} (changed since install; left alone)`);
        break;
      }
      case 'file':
        if (occupied(c.path) && sha256(c.path) === c.sha256) rmSync(c.path);
        else if (occupied(c.path)) skipped.push(`${c.path} (changed since install; left alone)`);
        break;
      case 'backup':
        if (!occupied(c.path) && occupied(c.backup)) renameSync(c.backup, c.path);
        else skipped.push(`${c.backup} (could not be restored to ${c.path})`);
        break;
    }
  }
  return skipped;
}

export function uninstall(record: string): { removed: Change[]; skipped: string[] } {
  const rec = readRecord(record);
  if (!rec) throw new InstallError(`not installed (no ${record})`);
  const skipped = undo(rec.changes);
  rmSync(record, { force: true });
  return { removed: rec.changes, skipped };
}

/** Remove a directory tree that contains only (empty) directories. */
function rmdirTree(dir: string): void {
  if (!occupied(dir)) return;
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    if (!e.isDirectory()) throw new Error(`${dir} is not empty`);
    rmdirTree(join(dir, e.name));
  }
  rmdirSync(dir);
}
