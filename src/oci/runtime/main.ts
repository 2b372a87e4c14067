/**
 * The node half of bin/loopfs-runtime, run only for `create` and `run`:
 *
 *   node dist/oci/runtime-main.js CONFIG I ARGV...
 *
 * ARGV is the runtime's argv as the engine gave it, I the 1-based position of the
 * subcommand in it and CONFIG the bundle's config.json (the shell parsed both). This edits
 * the bundle's config.json for a container that opted in (edit.ts) and exits 0; the shell
 * then execs the real runtime with ARGV unchanged. On any failure: one line on stderr
 * (also in the runtime's --log file, where containerd and dockerd read a runtime's
 * errors), exit 1, the bundle as it was, and the shell does not run the real runtime.
 */
import { appendFileSync, readFileSync } from 'node:fs';
import { resolve } from 'node:path';
import { packageRoot } from '../../package-root.js';
import { toSysError } from '../../kernel/errors.js';
import { OciError } from '../bundle.js';
import { parseExact } from '../exact-json.js';
import { editConfig } from './edit.js';
import { replaceFile } from './replace-file.js';
import { effectiveEnv, readWrapperConfig } from './wrapper-config.js';

/** The value of option `name` (-name, --name, --name=V) in `args`; the last one wins, as for Go's flag package. */
function optionValue(args: string[], name: string, valued: Set<string>): string | undefined {
  let found: string | undefined;
  for (let i = 0; i < args.length; i++) {
    const m = /^--?([^=]+)(=(.*))?$/s.exec(args[i]);
    if (!m) continue;
    const [, opt, eq, val] = m;
    if (opt === name) found = eq !== undefined ? val : args[++i];
    else if (eq === undefined && valued.has(opt)) i++;
  }
  return found;
}

/** runc's and crun's global options that take a value. */
const GLOBAL_VALUED = new Set(['root', 'log', 'log-format', 'criu', 'rootless', 'cgroup-manager']);

export interface RuntimeCall {
  /** config.json of the bundle, as the shell found it from --bundle (and crun's --config). */
  config: string;
  /** The runtime's global options, before the subcommand. */
  global: string[];
}

/** `CONFIG I ARGV...` from bin/loopfs-runtime: I is the subcommand's 1-based position in ARGV. */
export function splitCall(argv: string[]): RuntimeCall {
  const [config, pos, ...rest] = argv;
  const i = Number(pos);
  if (!config || !Number.isInteger(i) || i < 1 || i > rest.length) throw new OciError('internal: bad arguments from bin/loopfs-runtime');
  return { config: resolve(config), global: rest.slice(0, i - 1) };
}


export function editBundle(call: RuntimeCall, env: NodeJS.ProcessEnv = process.env): 'edited' | 'untouched' {
  const cfg = readWrapperConfig(env);
  const path = call.config;
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (e) {
    throw new OciError(`${path}: ${toSysError(e).description}`);
  }
  let json;
  try {
    json = parseExact(text);
  } catch {
    throw new OciError(`${path}: not JSON`);
  }
  let edited;
  try {
    edited = editConfig(json.doc, { env: effectiveEnv(cfg, env), packageRoot: packageRoot(), nodePath: process.execPath });
  } catch (e) {
    throw e instanceof OciError ? new OciError(`${path}: ${e.message.replace(/^config\.json:? ?/, '')}`) : e;
  }
  // not opted in, or edited already (an engine creating from the same bundle again)
  if (edited === null) return 'untouched';
  const out = json.stringify(edited);
  if (out === json.stringify(json.doc)) return 'untouched';
  replaceFile(path, out);
  return 'edited';
}

/** runc's --log/--log-format, where engines look for a failed runtime's message. */
function logError(global: string[], line: string): void {
  const log = optionValue(global, 'log', GLOBAL_VALUED);
  if (!log) return;
  const format = optionValue(global, 'log-format', GLOBAL_VALUED);
  const entry = format === 'json' ? JSON.stringify({ level: 'error', msg: line, time: new Date().toISOString() }) : line;
  try {
    appendFileSync(log, `${entry}\n`);
  } catch {
    // stderr has the message already
  }
}

export function runtimeMain(argv: string[], env: NodeJS.ProcessEnv = process.env): number {
  let call: RuntimeCall | undefined;
  try {
    call = splitCall(argv);
    editBundle(call, env);
    return 0;
  } catch (e) {
    const line = `loopfs-runtime: ${e instanceof Error ? e.message : String(e)}`;
    process.stderr.write(`${line}\n`);
    if (call) logError(call.global, line);
    return 1;
  }
}
