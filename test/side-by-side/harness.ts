// Side-by-side scenario runner: every scenario runs once with util-linux 2.38.1
// (/usr/sbin/losetup, the reference) and once with the implementation under test
// (bin/losetup, or $LOSETUP_TARGET), each time on fresh, identical files at the *same* paths and
// against the same set of free loop devices. stdout, stderr and exit status of every command must
// be identical, as must the resulting kernel state.
//
// What is normalised, and nothing else:
//  1. The program path. util-linux prints its argv[0] in getopt messages
//     (`/usr/sbin/losetup: invalid option -- 'x'`); ours prints its own path. In the output of the
//     command under test, every occurrence of the exact path the program was started with is
//     replaced by `<PROG>`.
//  2. Inode numbers of the scenario's files (the `-a` form `[65024]:2147812` and the BACK-INO
//     column). Each side gets fresh files, hence new inodes. A naive "replace by <INO>" would break
//     table column widths (BACK-INO is right-aligned and as wide as its widest cell), so instead
//     both sides are made to have inode numbers *of equal digit count*: both file sets are created
//     up front in two staging directories, digit counts are compared file by file (re-creating
//     both sets on a mismatch, which only happens at a power-of-ten boundary), and each staging
//     directory is renamed to the scenario path right before its side runs (rename keeps inodes).
//     Every inode is then replaced by a token of exactly the same width, identical on both sides:
//     the file's letter (A for the 1st file in sorted path order, B for the 2nd, …) repeated to the
//     inode's digit count, e.g. 2147812 -> AAAAAAA. Column widths and padding therefore stay
//     exactly as each program printed them, and a wrong/missing inode in our output still shows.
//     Only whole numbers equal to a known inode are replaced; the suite runs on ext4 where inodes
//     have ≥ 5 digits (checked), so no other number (offset, size, …) can be mistaken for one.
// Device names, paths, the st_dev of the filesystem ([65024], BACK-MAJ:MIN) are NOT normalised:
// both sides see the same paths and the same free devices, because test files run serially and
// each side detaches everything it attached (and waits for the kernel to release it) before the
// other side starts.
import { describe, it, afterAll, expect } from 'vitest';
import {
  chmodSync, closeSync, ftruncateSync, linkSync, lstatSync, mkdirSync, openSync, readdirSync, renameSync, symlinkSync,
  writeFileSync, writeSync,
} from 'node:fs';
import path from 'node:path';
import { REF_LOSETUP, announceSkip, cleanupTargetCopy, firstReason, loopSkipReason, refSkipReason, targetLosetup, targetSkipReason } from '../helpers/env.js';
import { DeviceTracker, boundLoopDevices, formatState, freeLoopDevices, isBound, readLoopState } from '../helpers/devices.js';
import { pinnedEnv, runProgram, type RunResult } from '../helpers/run.js';
import { makeTempDir, removeTree } from '../helpers/tmp.js';

export const MiB = 1024 * 1024;

// ------------------------------------------------------------------------------------------------
// Scenario model

export interface FileSpec {
  /** file size in bytes (sparse); default 10 MiB; ignored for dir/symlink */
  size?: number;
  /** bytes written at offset 0 (the file is then extended to `size` if given) */
  content?: Buffer | string;
  /** write an MBR partition table with two Linux partitions (for partscan scenarios) */
  mbr?: boolean;
  /** create a directory instead of a file */
  dir?: boolean;
  /** create a symlink with this target (taken literally) */
  symlink?: string;
  /** create a hard link to this (earlier) scenario file */
  hardlink?: string;
  mode?: number;
}

/** A context handed to fs steps and cleanups. */
export interface SideContext {
  dir: string;
  vars: Record<string, string>;
  /** absolute path of a scenario file */
  p(rel: string): string;
}

export type Step =
  /** command under test: run with util-linux on one side and with the target on the other */
  | { run: string[]; save?: string }
  /** util-linux on both sides (setting up a fixture); output is recorded too */
  | { fixture: string[]; save?: string }
  /** util-linux on both sides, after the command(s) under test, to observe the resulting state */
  | { observe: string[] }
  /** a filesystem action (delete, grow, …) done by the harness itself */
  | { fs: string; do: (ctx: SideContext) => void | Promise<void> };

export interface Scenario {
  name: string;
  /** files to create, keyed by path relative to the scenario dir (placeholder `{key}`) */
  files?: Record<string, FileSpec>;
  /** number of free devices to reserve: {freedev}, {freedev2}, …, the highest-numbered free ones */
  freeDevices?: number;
  steps: Step[];
  /** extra environment for every command of the scenario (both sides) */
  env?: Record<string, string>;
  /**
   * The documented, intended differences of loopfs from util-linux (the -V suffix, the
   * --instance lines of -h), applied to util-linux's transcript before comparing. Exact
   * string edits only: anything else still has to match byte for byte.
   */
  intendedDifferences?: (refText: string) => string;
  /** extra cleanup after the devices have been detached (e.g. unmounting a bind mount) */
  cleanup?: (ctx: SideContext) => void | Promise<void>;
}

/** Per-command time limit. util-linux's longest legitimate wait is its EBUSY/EAGAIN retry loop
 *  (64 × 200 ms); a hanging implementation is killed and shows up as "TIMED OUT" in the diff. */
export const COMMAND_TIMEOUT_MS = 20_000;

/** The util-linux observer used after each side: the resulting kernel state of each device. */
export const OBSERVE_COLUMNS = 'NAME,OFFSET,SIZELIMIT,RO,DIO,LOG-SEC,PARTSCAN,AUTOCLEAR,BACK-FILE';

// ------------------------------------------------------------------------------------------------
// Files

/** An MBR with two Linux (0x83) primary partitions: LBA 2048..+2048 and 4096..end. */
export function mbrImage(size: number): Buffer {
  const b = Buffer.alloc(512);
  const total = Math.floor(size / 512);
  const entry = (i: number, start: number, count: number) => {
    const o = 446 + 16 * i;
    b[o] = 0x00;
    b[o + 1] = 0xfe; b[o + 2] = 0xff; b[o + 3] = 0xff; // CHS: "use LBA"
    b[o + 4] = 0x83;
    b[o + 5] = 0xfe; b[o + 6] = 0xff; b[o + 7] = 0xff;
    b.writeUInt32LE(start, o + 8);
    b.writeUInt32LE(count, o + 12);
  };
  entry(0, 2048, 2048);
  entry(1, 4096, total - 4096);
  b[510] = 0x55;
  b[511] = 0xaa;
  return b;
}

function createFiles(root: string, files: Record<string, FileSpec>): void {
  mkdirSync(root, { recursive: true });
  for (const [rel, spec] of Object.entries(files)) {
    const p = path.join(root, rel);
    mkdirSync(path.dirname(p), { recursive: true });
    if (spec.dir) {
      mkdirSync(p, { recursive: true });
    } else if (spec.symlink !== undefined) {
      symlinkSync(spec.symlink, p);
    } else if (spec.hardlink !== undefined) {
      linkSync(path.join(root, spec.hardlink), p);
    } else {
      const given = spec.content === undefined ? undefined : Buffer.from(spec.content);
      const size = spec.size ?? given?.length ?? 10 * MiB;
      const content = spec.mbr ? mbrImage(size) : given;
      const fd = openSync(p, 'w');
      try {
        if (content) writeSync(fd, content, 0, content.length, 0);
        ftruncateSync(fd, size);
      } finally {
        closeSync(fd);
      }
    }
    if (spec.mode !== undefined) chmodSync(p, spec.mode);
  }
}

/** relpath -> inode of every regular file below root (sorted by path). */
function fileInodes(root: string): Map<string, number> {
  const out = new Map<string, number>();
  const walk = (d: string) => {
    for (const e of readdirSync(d).sort()) {
      const p = path.join(d, e);
      const st = lstatSync(p);
      if (st.isDirectory()) walk(p);
      else if (st.isFile()) out.set(path.relative(root, p), st.ino);
    }
  };
  walk(root);
  return new Map([...out.entries()].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)));
}

// ------------------------------------------------------------------------------------------------
// Normalisation (exported for the harness self-test)

/** Equal-width inode tokens: file #i (sorted path order) -> letter i repeated to the digit count. */
export function inodeTokens(inodes: Map<string, number>): Map<string, string> {
  const tokens = new Map<string, string>();
  let i = 0;
  for (const [rel, ino] of inodes) {
    if (i >= 26) throw new Error(`harness: more than 26 files in a scenario (${rel})`);
    const s = String(ino);
    tokens.set(s, String.fromCharCode(65 + i).repeat(s.length));
    i++;
  }
  return tokens;
}

export function normalise(text: string, progPath: string | undefined, inodeToken: Map<string, string>): string {
  let t = text;
  if (progPath) t = t.split(progPath).join('<PROG>');
  return t.replace(/\d+/g, (m) => inodeToken.get(m) ?? m);
}

// ------------------------------------------------------------------------------------------------
// Transcript rendering: what the diff shows

function renderStream(tag: string, text: string): string[] {
  if (text === '') return [];
  const body = text.endsWith('\n') ? text.slice(0, -1) : text;
  const lines = body.split('\n').map((l) => {
    let s = l.replace(/[\x00-\x09\x0b-\x1f\x7f]/g, (c) => `<0x${c.charCodeAt(0).toString(16).padStart(2, '0')}>`);
    if (/[ \t]$/.test(l)) s += '$'; // make trailing blanks visible (cat -A style)
    return `  ${tag}| ${s}`;
  });
  if (!text.endsWith('\n')) lines.push(`  ${tag}\\ (no newline at end)`);
  return lines;
}

function quoteArg(a: string): string {
  if (/^[A-Za-z0-9_@%+=:,./{}-]+$/.test(a)) return a;
  if (/[\x00-\x1f\x7f]/.test(a)) return `$${JSON.stringify(a).replace(/^"|"$/g, "'")}`;
  return `'${a.replace(/'/g, `'\\''`)}'`;
}

// ------------------------------------------------------------------------------------------------
// Running

interface SideResult {
  transcript: string;
  /** fixture commands that failed (a broken scenario when it happens with util-linux) */
  fixtureFailures: string[];
  /** exact normalised bytes of every command (latin1 string), for a byte-exact comparison */
  raw: string[];
  vars: Record<string, string>;
}

const PLACEHOLDER = /\{([^{}]+)\}/g;

function resolveArg(arg: string, vars: Record<string, string>): string {
  return arg.replace(PLACEHOLDER, (_m, key: string) => {
    const [name, mod] = key.split(/:(?=name$)/);
    const v = vars[name];
    if (v === undefined) throw new Error(`harness: unknown placeholder {${key}} in '${arg}'`);
    return mod === 'name' ? path.basename(v) : v;
  });
}

let ROOT: string | undefined;
function root(): string {
  if (!ROOT) ROOT = makeTempDir('loopfs-sbs');
  return ROOT;
}
let counter = 0;

/** Remove the per-run directory that holds all scenario directories (call from afterAll). */
export function removeScenarioRoot(): void {
  if (ROOT) removeTree(ROOT);
  ROOT = undefined;
}

function slugify(s: string): string {
  return s.toLowerCase().replace(/[^a-z0-9]+/g, '-').replace(/^-|-$/g, '').slice(0, 40);
}

interface Side {
  label: string;
  /** program used for `run` steps */
  prog: string;
  stage: string;
  tokens: Map<string, string>;
}

async function runSide(sc: Scenario, side: Side, dir: string, reserved: Record<string, string>): Promise<SideResult> {
  const env = pinnedEnv(sc.env);
  const vars: Record<string, string> = { dir, ...reserved };
  for (const rel of Object.keys(sc.files ?? {})) vars[rel] = path.join(dir, rel);
  const ctx: SideContext = { dir, vars, p: (rel) => path.join(dir, rel) };
  const lines: string[] = [];
  const raw: string[] = [];
  const fixtureFailures: string[] = [];
  const tracker = new DeviceTracker();
  tracker.ownDir(dir);

  const foreign = () =>
    boundLoopDevices()
      .filter((s) => !tracker.owned().some((o) => o.dev === s.dev))
      .map((s) => `${s.name}=${s.backingFile}`)
      .join(' ');

  renameSync(side.stage, dir);
  const foreignBefore = foreign();
  for (const [k, v] of Object.entries(reserved)) {
    if (isBound(v)) lines.push(`!! environment: reserved {${k}} ${v} is not free when this side starts`);
  }

  const record = (kind: string, template: string[], r: RunResult, prog: string | undefined) => {
    const out = normalise(r.stdout.toString('utf8'), prog, side.tokens);
    const err = normalise(r.stderr.toString('utf8'), prog, side.tokens);
    lines.push(`$ [${kind}] losetup ${template.map(quoteArg).join(' ')}`);
    lines.push(`  rc=${r.exitCode}${r.signal ? ` signal=${r.signal}` : ''}${r.timedOut ? ' TIMED OUT' : ''}`);
    lines.push(...renderStream('out', out), ...renderStream('err', err));
    raw.push(normalise(r.stdout.toString('latin1'), prog, side.tokens), normalise(r.stderr.toString('latin1'), prog, side.tokens), String(r.exitCode));
  };

  const ownedState = () =>
    tracker.owned().sort((a, b) => a.minor - b.minor).map((s) => `  state| ${normalise(formatState(s), undefined, side.tokens)}`);

  try {
    for (const step of sc.steps) {
      if ('fs' in step) {
        lines.push(`[fs] ${step.fs}`);
        await step.do(ctx);
        continue;
      }
      const template = 'run' in step ? step.run : 'fixture' in step ? step.fixture : step.observe;
      const kind = 'run' in step ? 'run' : 'fixture' in step ? 'fixture' : 'observe';
      const argv = template.map((a) => resolveArg(a, vars));
      const prog = kind === 'run' ? side.prog : REF_LOSETUP;
      const before = new Set(boundLoopDevices().map((s) => s.dev));
      const stateBefore = ownedState().join('\n');
      const r = await runProgram(prog, argv, { cwd: dir, env, timeoutMs: COMMAND_TIMEOUT_MS });
      if (kind === 'fixture' && r.exitCode !== 0) fixtureFailures.push(`${template.join(' ')}: rc ${r.exitCode} ${r.stderr}`);
      // A device bound during this command that is named on its command line, or bound to a file
      // named there (e.g. `{freedev} /dev/null`, outside the scenario dir), was attached by this
      // command: track it for cleanup. (Devices backed under the scenario dir are tracked anyway.)
      const named = new Set(argv.map((a) => path.resolve(dir, a)));
      for (const s of boundLoopDevices()) {
        if (!before.has(s.dev) && (named.has(s.dev) || named.has(s.backingFile))) tracker.add(s.dev, s.backingFile);
      }
      record(kind, template, r, kind === 'run' ? side.prog : undefined);
      if ('save' in step && step.save) {
        const v = r.stdout.toString('utf8').split('\n')[0].trim();
        vars[step.save] = v;
        if (v.startsWith('/dev/')) {
          const st = readLoopState(v);
          if (st && !before.has(st.dev)) tracker.add(st.dev, st.backingFile);
        }
      }
      // Kernel state of this scenario's devices (read from sysfs by the harness), shown after a
      // command under test whenever that command changed it.
      if (kind === 'run') {
        const after = ownedState();
        if (after.join('\n') !== stateBefore) lines.push(...(after.length ? after : ['  state| (no device bound to this scenario)']));
      }
    }
    // Final observation of the resulting kernel state, by util-linux for both sides.
    const owned = tracker.owned().sort((a, b) => a.minor - b.minor);
    if (owned.length === 0) lines.push('[end] no loop device bound to this scenario');
    for (const s of owned) {
      const r = await runProgram(REF_LOSETUP, ['-l', '-O', OBSERVE_COLUMNS, s.dev], { cwd: dir, env, timeoutMs: COMMAND_TIMEOUT_MS });
      record('end', ['-l', '-O', OBSERVE_COLUMNS, s.dev], r, undefined);
    }
  } finally {
    let cleanupError: unknown;
    try {
      await tracker.detachAll();
    } catch (e) {
      cleanupError = e;
    }
    try {
      await sc.cleanup?.(ctx);
    } catch (e) {
      cleanupError ??= e;
    }
    try {
      removeTree(dir);
    } catch (e) {
      cleanupError ??= e;
    }
    if (cleanupError) throw cleanupError;
  }
  const foreignAfter = foreign();
  if (foreignAfter !== foreignBefore) {
    lines.push(`!! foreign loop-device activity during this side: before [${foreignBefore}] after [${foreignAfter}]`);
  }
  return { transcript: lines.join('\n') + '\n', raw, vars, fixtureFailures };
}

/** Build both staging trees with pairwise equal inode digit counts (see header comment). */
function stage(sc: Scenario, base: string): { refStage: string; tgtStage: string; refTok: Map<string, string>; tgtTok: Map<string, string> } {
  const refStage = `${base}.stage-ref`;
  const tgtStage = `${base}.stage-target`;
  for (let attempt = 0; attempt < 5; attempt++) {
    removeTree(refStage);
    removeTree(tgtStage);
    createFiles(refStage, sc.files ?? {});
    createFiles(tgtStage, sc.files ?? {});
    const a = fileInodes(refStage);
    const b = fileInodes(tgtStage);
    const same = [...a.keys()].every((k) => String(a.get(k)).length === String(b.get(k)).length);
    if (!same) continue;
    for (const ino of [...a.values(), ...b.values()]) {
      if (String(ino).length < 5) {
        throw new Error(`harness: inode ${ino} has fewer than 5 digits; run on a filesystem with large inode numbers (ext4)`);
      }
    }
    return { refStage, tgtStage, refTok: inodeTokens(a), tgtTok: inodeTokens(b) };
  }
  throw new Error('harness: could not create file sets with equal inode digit counts');
}

export interface CompareOptions {
  /** program for the target side; default: the implementation under test */
  target?: string;
  /** where to write transcripts (default: $SBS_REPORT_DIR, if set) */
  reportDir?: string;
}

/**
 * Run one scenario on both sides and assert identical transcripts. Throws an assertion error with
 * a line diff (- util-linux, + target) when anything differs.
 */
export async function runScenario(sc: Scenario, theme = 'adhoc', opts: CompareOptions = {}): Promise<void> {
  const target = opts.target ?? targetLosetup();
  const slug = `${slugify(theme)}-${String(++counter).padStart(3, '0')}-${slugify(sc.name)}`;
  const dir = path.join(root(), slug);
  const { refStage, tgtStage, refTok, tgtTok } = stage(sc, dir);
  try {
    // Reserve explicit free devices before either side runs: the highest-numbered free ones, so that
    // `-f` (lowest free) in the same scenario does not pick them.
    const free = freeLoopDevices();
    const n = sc.freeDevices ?? 0;
    if (free.length < n + 2) throw new Error(`harness: need ${n + 2} free loop devices, have ${free.length}`);
    const reserved: Record<string, string> = {};
    for (let i = 0; i < n; i++) reserved[i === 0 ? 'freedev' : `freedev${i + 1}`] = `/dev/${free[free.length - 1 - i]}`;

    const ref = await runSide(sc, { label: 'util-linux', prog: REF_LOSETUP, stage: refStage, tokens: refTok }, dir, reserved);
    if (sc.intendedDifferences && target !== REF_LOSETUP && !/util-linux-copy/.test(target)) {
      ref.transcript = sc.intendedDifferences(ref.transcript);
      ref.raw = ref.raw.map((t) => sc.intendedDifferences!(t));
    }
    if (ref.fixtureFailures.length) {
      throw new Error(`harness: scenario "${sc.name}" is broken, a fixture failed with util-linux:\n${ref.fixtureFailures.join('\n')}`);
    }
    const tgt = await runSide(sc, { label: 'target', prog: target, stage: tgtStage, tokens: tgtTok }, dir, reserved);

    const reportDir = opts.reportDir ?? process.env.SBS_REPORT_DIR;
    const differ = ref.transcript !== tgt.transcript || ref.raw.join('\0') !== tgt.raw.join('\0');
    if (reportDir) {
      mkdirSync(reportDir, { recursive: true });
      const head = `# ${theme} / ${sc.name}\n# dir: ${dir}\n`;
      writeFileSync(path.join(reportDir, `${slug}.ref.txt`), head + ref.transcript);
      writeFileSync(path.join(reportDir, `${slug}.target.txt`), head + tgt.transcript);
      if (differ) writeFileSync(path.join(reportDir, `${slug}.DIFFERS`), '');
    }
    const header =
      `side-by-side mismatch in "${theme} / ${sc.name}" (scenario dir ${dir})\n` +
      `  Expected = util-linux ${REF_LOSETUP}, Received = ${target}\n` +
      `  (<PROG> = program path; inode numbers shown as equal-width letter tokens; '$' marks trailing blanks)`;
    expect(tgt.transcript, header).toBe(ref.transcript);
    if (ref.raw.join('\0') !== tgt.raw.join('\0')) {
      // Transcripts decode as UTF-8; this catches differences hidden by that (invalid bytes).
      expect(JSON.stringify(tgt.raw, null, 1), `${header}\n  (byte-level difference)`).toBe(JSON.stringify(ref.raw, null, 1));
    }
  } finally {
    removeTree(refStage);
    removeTree(tgtStage);
  }
}

/** Why the side-by-side suite cannot run here, or undefined. */
export function sideBySideSkipReason(target = targetLosetup()): string | undefined {
  return firstReason(loopSkipReason(), refSkipReason(), targetSkipReason(target));
}

/** Register a themed group of scenarios as a vitest describe block. */
export function sideBySide(theme: string, scenarios: Scenario[]): void {
  const reason = sideBySideSkipReason();
  announceSkip(`side-by-side ${theme}`, reason);
  const title = reason ? `side-by-side: ${theme} [SKIPPED: ${reason}]` : `side-by-side: ${theme}`;
  describe.skipIf(reason !== undefined)(title, () => {
    afterAll(() => {
      removeScenarioRoot();
      cleanupTargetCopy();
    });
    for (const sc of scenarios) {
      it(sc.name, { timeout: 180_000 }, async () => {
        await runScenario(sc, theme);
      });
    }
  });
}

/** Number of commands under test in a list of scenarios. */
export function countRuns(scenarios: Scenario[]): number {
  return scenarios.reduce((n, sc) => n + sc.steps.filter((s) => 'run' in s).length, 0);
}

