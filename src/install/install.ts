/**
 * `loopfs install` / `loopfs uninstall`: put `mount.loop` where mount(8) looks for
 * helpers, `losetup` where the user chooses, and the manual pages, and record every
 * change so that uninstall undoes exactly that and nothing else.
 *
 * Nothing that belongs to the system is ever replaced silently: an existing file at a
 * target is an error, except `/usr/sbin/losetup` with `--replace-losetup`, which is
 * first renamed to a backup that uninstall puts back.
 *
 * `--runtime ENGINE` registers the runtime wrapper with container engines (engines.ts):
 * their configuration files are edited, not replaced, and the record keeps what each
 * file held before, so uninstall gives back exactly that. It may follow an earlier
 * install: the new changes join that install's record.
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
import { packageRoot } from '../package-root.js';
import { execaSync } from 'execa';
import { tmpdir } from 'node:os';
import { hookFileContent, hookFileName } from '../oci/hooks-json.js';
import { STAGES } from '../oci/policy.js';
import { DEFAULT_RUNTIME_CONFIG } from '../oci/runtime/wrapper-config.js';
import {
  containerdEdit,
  containerdRegistration,
  containerdUnblock,
  DEFAULT_CONTAINERD_CONFIG,
  DEFAULT_CONTAINERS_CONF_DIR,
  DEFAULT_DOCKER_CONFIG,
  dockerEdit,
  dockerUnmerge,
  EngineConfigError,
  findRealRuntime,
  PODMAN_DROPIN,
  podmanEdit,
  readText,
  RESTART,
  RUNTIME_NAME,
  runtimeConfigContent,
  type Edit,
  type Engine,
} from './engines.js';

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
  /** Register bin/loopfs-runtime as runtime `loopfs` with these engines. */
  runtimes?: Engine[];
  dockerConfig?: string;
  containerdConfig?: string;
  containersConfDir?: string;
  /** The wrapper's configuration file, written when a runtime is registered and it is missing. */
  runtimeConfig?: string;
}

/** What an engine's entry in the record is about; 'runtime-config' is the wrapper's own file. */
export type Subject = Engine | 'runtime-config';

export type Change =
  | { kind: 'dir'; path: string }
  | { kind: 'symlink'; path: string; target: string }
  | { kind: 'file'; path: string; sha256: string; subject?: Subject }
  | { kind: 'backup'; path: string; backup: string }
  /**
   * An engine's configuration file we edited: `previous` is its content before (base64,
   * byte for byte; null when we created it), `sha256` its content after. `entry` is what we
   * added (docker: the wrapper's path; containerd: the block), for an uninstall after the
   * admin changed the file since.
   */
  | { kind: 'edit'; path: string; subject: Engine; previous: string | null; sha256: string; entry: string; hadRuntimes?: boolean };

export interface InstallRecord {
  version: 1;
  package: string;
  changes: Change[];
}

export class InstallError extends Error {}

export { packageRoot };

function sha256(path: string): string {
  return sha256Of(readFileSync(path));
}

function sha256Of(data: string | Buffer): string {
  return createHash('sha256').update(data).digest('hex');
}

/** Replace a file's content atomically, keeping its mode (engines read these files at any time). */
function replaceFile(path: string, data: string | Buffer): void {
  let mode = 0o644;
  try {
    mode = lstatSync(path).mode & 0o7777;
  } catch {
    /* a new file */
  }
  const tmp = `${path}.loopfs-${process.pid}.tmp`;
  try {
    writeFileSync(tmp, data, { mode });
    renameSync(tmp, path);
  } catch (e) {
    rmSync(tmp, { force: true });
    throw e;
  }
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
    // ENOENT (or a parent we cannot search): nothing there to keep
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
    // no record (ENOENT) or not JSON: nothing was installed by us there
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
export interface InstallResult {
  record: InstallRecord;
  /** The changes this run made (an install on top of an earlier one adds to its record). */
  added: Change[];
  /** Lines for the user: runtimes already registered, snippets to add by hand, restarts. */
  notes: string[];
}

export function install(opts: InstallOptions): InstallResult {
  const earlier = readRecord(opts.record);
  const runtimes = opts.runtimes ?? [];
  if (earlier && (runtimes.length === 0 || opts.replaceLosetup || opts.ociHooksDir)) {
    throw new InstallError(`already installed (see ${opts.record}); run 'loopfs uninstall' first`);
  }
  const root = packageRoot();
  const plan: Array<() => Change> = [];
  const notes: string[] = [];
  if (earlier) {
    planRuntimes(opts, root, earlier, plan, notes);
    return apply(opts.record, earlier, plan, notes);
  }

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

  planRuntimes(opts, root, null, plan, notes);
  return apply(opts.record, { version: 1, package: root, changes: [] }, plan, notes);
}

function apply(record: string, rec: InstallRecord, plan: Array<() => Change>, notes: string[]): InstallResult {
  const kept = rec.changes.length;
  const restore = rec.changes.length > 0 ? structuredClone(rec) : null;
  try {
    for (const step of plan) {
      const before = rec.changes.length;
      const change = step();
      // directories the step had to create come first, so that undo removes them last
      rec.changes.splice(before, 0, ...createdDirs.splice(0).map((path): Change => ({ kind: 'dir', path })));
      rec.changes.push(change);
      writeRecord(record, rec); // after each step: a crash leaves an exact record
    }
  } catch (e) {
    createdDirs.splice(0); // a failed step's own directories stay with its error; not ours to record
    undo(rec.changes.slice(kept));
    if (restore) writeRecord(record, restore);
    else rmSync(record, { force: true });
    throw e;
  }
  return { record: rec, added: rec.changes.slice(kept), notes };
}

/**
 * Plan the runtime registrations: for each engine not in the earlier record, the edit of
 * its file (nothing when the runtime is registered there already), and the wrapper's
 * configuration file when it is missing. Conflicts throw before anything is applied.
 */
function planRuntimes(opts: InstallOptions, root: string, earlier: InstallRecord | null, plan: Array<() => Change>, notes: string[]): void {
  const runtimes = opts.runtimes ?? [];
  if (runtimes.length === 0) return;
  const planned = plan.length;
  const wrapper = join(root, 'bin', 'loopfs-runtime');
  const recorded = new Set(earlier?.changes.map((c) => ('subject' in c ? c.subject : undefined)));
  const guard = <T>(f: () => T): T => {
    try {
      return f();
    } catch (e) {
      if (e instanceof EngineConfigError) throw new InstallError(e.message);
      throw e;
    }
  };

  const editStep = (engine: Engine, path: string, before: string | null, edit: Edit, entry: string, hadRuntimes?: boolean) => {
    if ('registered' in edit) {
      notes.push(`${engine}: runtime ${RUNTIME_NAME} is already registered in ${path}`);
      return;
    }
    const previous = before === null ? null : readFileSync(path).toString('base64');
    plan.push(() => {
      // the file must still be what we planned against: an engine or admin may write it meanwhile
      const now = readText(path);
      if (now !== before) throw new InstallError(`${path} changed while installing; nothing was changed`);
      mkdirs(dirname(path));
      replaceFile(path, edit.content);
      return { kind: 'edit', path, subject: engine, previous, sha256: sha256(path), entry, ...(hadRuntimes === undefined ? {} : { hadRuntimes }) };
    });
    notes.push(`${engine}: ${RESTART[engine]}`);
  };

  for (const engine of runtimes) {
    if (recorded.has(engine)) {
      notes.push(`${engine}: runtime ${RUNTIME_NAME} is already registered (see ${opts.record})`);
      continue;
    }
    if (engine === 'docker') {
      const path = resolve(opts.dockerConfig ?? DEFAULT_DOCKER_CONFIG);
      const before = guard(() => readText(path));
      const edit = guard(() => dockerEdit(before, path, wrapper));
      const hadRuntimes = before !== null && before.trim() !== '' && (JSON.parse(before) as Record<string, unknown>).runtimes !== undefined;
      editStep(engine, path, before, edit, wrapper, hadRuntimes);
    } else if (engine === 'containerd') {
      const path = resolve(opts.containerdConfig ?? DEFAULT_CONTAINERD_CONFIG);
      const before = guard(() => readText(path));
      const edit = guard(() => containerdEdit(before, path, wrapper));
      if ('manual' in edit) {
        notes.push(`containerd: ${edit.manual}`, ...edit.snippet.trimEnd().split('\n'));
        continue;
      }
      if ('content' in edit) guard(() => checkContainerdLoads(path, edit.content, wrapper));
      editStep(engine, path, before, edit, 'block' in edit ? (edit.block ?? '') : '');
    } else {
      const path = resolve(opts.containersConfDir ?? DEFAULT_CONTAINERS_CONF_DIR, PODMAN_DROPIN);
      const before = guard(() => readText(path));
      const edit = guard(() => podmanEdit(before, path, wrapper));
      if ('registered' in edit) {
        notes.push(`${engine}: runtime ${RUNTIME_NAME} is already registered in ${path}`);
        continue;
      }
      plan.push(() => {
        if (occupied(path)) throw new InstallError(`${path} exists; not replacing it`);
        mkdirs(dirname(path));
        writeFileSync(path, edit.content, { mode: 0o644, flag: 'wx' });
        return { kind: 'file', path, sha256: sha256(path), subject: engine };
      });
      notes.push(`${engine}: ${RESTART[engine]}`);
    }
  }

  if (plan.length === planned || recorded.has('runtime-config')) return;
  const config = resolve(opts.runtimeConfig ?? DEFAULT_RUNTIME_CONFIG);
  if (occupied(config)) {
    notes.push(`${config} exists; kept as it is`);
    return;
  }
  const content = runtimeConfigContent(findRealRuntime(wrapper), process.env);
  plan.push(() => {
    mkdirs(dirname(config));
    writeFileSync(config, content, { mode: 0o644, flag: 'wx' });
    return { kind: 'file', path: config, sha256: sha256(config), subject: 'runtime-config' };
  });
}

/**
 * Where containerd is installed, have it load the edited config before it is written
 * (`containerd --config COPY config dump`): a file it cannot parse, or one where our
 * runtime does not come out, is refused with nothing changed.
 */
function checkContainerdLoads(path: string, content: string, wrapper: string): void {
  const copy = join(tmpdir(), `loopfs-containerd-${process.pid}.toml`);
  writeFileSync(copy, content, { mode: 0o600 });
  try {
    const r = execaSync('containerd', ['--config', copy, 'config', 'dump'], { reject: false, timeout: 20_000 });
    if (r.code === 'ENOENT') return; // not installed here: nothing to ask
    const loaded = r.exitCode === 0 ? containerdRegistration(r.stdout) : null;
    if (loaded !== wrapper) {
      const why = r.timedOut ? 'timed out after 20 s' : ((r.stderr || r.stdout || '').trim().split('\n').pop() ?? '');
      throw new InstallError(`${path}: containerd does not load it with the runtime added${why ? ` (${why})` : ''}; not changing it`);
    }
  } finally {
    rmSync(copy, { force: true });
  }
}

/** Undo changes in reverse order; only what is still exactly what we made. */
function undo(changes: Change[], notes: string[] = []): string[] {
  const skipped: string[] = [];
  for (const c of [...changes].reverse()) {
    switch (c.kind) {
      case 'dir':
        // only what is empty again: the user may have put files there since
        try {
          rmdirTree(c.path);
        } catch {
          // ENOTEMPTY (files the user added since) or already gone: left alone, and said
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
      case 'edit':
        undoEdit(c, skipped, notes);
        break;
    }
  }
  return skipped;
}

/**
 * Give an engine's file back: byte for byte what it was when it is still what we wrote;
 * otherwise (edited since) only our entry comes out, the admin's edits stay.
 */
function undoEdit(c: Extract<Change, { kind: 'edit' }>, skipped: string[], notes: string[]): void {
  const now = occupied(c.path) ? readFileSync(c.path) : null;
  if (now === null) {
    skipped.push(`${c.path} (gone since install; nothing to restore)`);
    return;
  }
  if (sha256Of(now) === c.sha256) {
    if (c.previous === null) rmSync(c.path);
    else replaceFile(c.path, Buffer.from(c.previous, 'base64'));
  } else {
    const text = now.toString('utf8');
    const without = c.subject === 'docker' ? dockerUnmerge(text, c.entry, c.hadRuntimes ?? false) : containerdUnblock(text, c.entry);
    if (without === null) {
      skipped.push(`${c.path} (changed since install and runtime ${RUNTIME_NAME} is no longer ours there; left alone)`);
      return;
    }
    replaceFile(c.path, without);
    notes.push(`${c.path}: changed since install; removed only runtime ${RUNTIME_NAME}`);
  }
  // a reload makes dockerd drop runtimes only where daemon.json still names some (dockerd 20.10)
  if (c.subject === 'docker') notes.push(`docker: ${c.hadRuntimes ? 'reload' : 'restart'} dockerd to drop runtime ${RUNTIME_NAME}: systemctl ${c.hadRuntimes ? 'reload' : 'restart'} docker`);
  else notes.push(`containerd: restart containerd to drop runtime ${RUNTIME_NAME}: systemctl restart containerd`);
}

export function uninstall(record: string): { removed: Change[]; skipped: string[]; notes: string[] } {
  const rec = readRecord(record);
  if (!rec) throw new InstallError(`not installed (no ${record})`);
  const notes: string[] = [];
  const skipped = undo(rec.changes, notes);
  rmSync(record, { force: true });
  return { removed: rec.changes, skipped, notes };
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
