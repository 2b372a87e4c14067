/**
 * The runtime wrapper's configuration file, `$LOOPFS_RUNTIME_CONFIG` (default
 * /etc/loopfs/runtime.json), written by `loopfs install --runtime`:
 *
 *   {"runtime": "/usr/sbin/runc", "env": {"LOOPFS_RUNTIME_DIR": "...", "LOOPFS_LIMITS": "..."}}
 *
 * Both keys are optional and a missing file means the defaults (`runc` on PATH, the
 * wrapper's own environment). Engines do not pass a runtime's environment reliably, so
 * `env` pins the variables that choose loopfs's machine-wide files into the hooks the
 * wrapper adds, and decides the agent's socket path.
 *
 * bin/loopfs-runtime (sh, no node: it runs for every runtime command) reads only
 * `runtime`, with a rule simple enough for the shell (shRuntimeView). Node validates the
 * whole file on every create, including that the shell reads what JSON says, so a file the
 * two would read differently never gets a container created.
 */
import { readFileSync } from 'node:fs';
import { toSysError } from '../../kernel/errors.js';
import { OciError } from '../bundle.js';
import { PINNED_ENV } from '../hooks-json.js';

export const DEFAULT_RUNTIME_CONFIG = '/etc/loopfs/runtime.json';

export function runtimeConfigPath(env: NodeJS.ProcessEnv = process.env): string {
  return env.LOOPFS_RUNTIME_CONFIG || DEFAULT_RUNTIME_CONFIG;
}

export interface WrapperConfig {
  /** The real runtime (absolute path or a name looked up on PATH); null: `runc`. */
  runtime: string | null;
  env: Partial<Record<(typeof PINNED_ENV)[number], string>>;
}

/**
 * What bin/loopfs-runtime reads as the runtime: on the first line containing `"runtime"`,
 * after its first occurrence, optional blanks, `:`, optional blanks and a string without
 * `"` or `\`. Null when that does not match (the shell then runs `runc`). A value inside
 * another JSON string cannot fake the key: its quotes are escaped there.
 */
export function shRuntimeView(text: string): string | null {
  const line = text.split('\n').find((l) => l.includes('"runtime"'));
  if (line === undefined) return null;
  const m = /^[ \t]*:[ \t]*"([^"\\]*)"/.exec(line.slice(line.indexOf('"runtime"') + '"runtime"'.length));
  return m ? m[1] : null;
}

/** One line per problem; `file` names the file in it. */
export function parseWrapperConfig(text: string, file: string): WrapperConfig {
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch {
    throw new OciError(`${file}: not JSON`);
  }
  if (typeof doc !== 'object' || doc === null || Array.isArray(doc)) throw new OciError(`${file}: expected a JSON object`);
  const d = doc as Record<string, unknown>;
  const unknown = Object.keys(d).find((k) => k !== 'runtime' && k !== 'env');
  if (unknown !== undefined) throw new OciError(`${file}: unknown key "${unknown}" (expected "runtime", "env")`);
  let runtime: string | null = null;
  if (d.runtime !== undefined) {
    if (typeof d.runtime !== 'string' || d.runtime === '' || /["\\\n]/.test(d.runtime))
      throw new OciError(`${file}: "runtime" must be a path or command name without quotes or backslashes`);
    runtime = d.runtime;
  }
  if (shRuntimeView(text) !== runtime)
    throw new OciError(`${file}: write "runtime" on one line as "runtime": "PATH" (bin/loopfs-runtime reads it without a JSON parser)`);
  const env: WrapperConfig['env'] = {};
  if (d.env !== undefined) {
    if (typeof d.env !== 'object' || d.env === null || Array.isArray(d.env)) throw new OciError(`${file}: "env" must be an object`);
    for (const [k, v] of Object.entries(d.env)) {
      if (!(PINNED_ENV as readonly string[]).includes(k)) throw new OciError(`${file}: env: unknown variable ${k} (expected ${PINNED_ENV.join(', ')})`);
      if (typeof v !== 'string') throw new OciError(`${file}: env: ${k} must be a string`);
      env[k as keyof WrapperConfig['env']] = v;
    }
  }
  return { runtime, env };
}

/** The file's configuration; the defaults when it does not exist. */
export function readWrapperConfig(env: NodeJS.ProcessEnv = process.env): WrapperConfig {
  const file = runtimeConfigPath(env);
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return { runtime: null, env: {} };
    throw new OciError(`${file}: ${toSysError(e).description}`);
  }
  return parseWrapperConfig(text, file);
}

/** The file as `loopfs install --runtime` should write it (readable by the shell). */
export function formatWrapperConfig(cfg: WrapperConfig): string {
  const doc: Record<string, unknown> = {};
  if (cfg.runtime !== null) doc.runtime = cfg.runtime;
  if (Object.keys(cfg.env).length > 0) doc.env = cfg.env;
  return `${JSON.stringify(doc, null, 2)}\n`;
}

/**
 * The environment the added hooks and the agent's socket path are computed from: the
 * file's `env`, and for a variable it does not name, the wrapper's own environment (as
 * `loopfs install --oci-hooks` pins what is set when it runs).
 */
export function effectiveEnv(cfg: WrapperConfig, env: NodeJS.ProcessEnv = process.env): NodeJS.ProcessEnv {
  const out: NodeJS.ProcessEnv = {};
  for (const k of PINNED_ENV) {
    const v = cfg.env[k] ?? env[k];
    if (v) out[k] = v;
  }
  return out;
}
