/**
 * Registering the runtime wrapper (bin/loopfs-runtime) as the runtime `loopfs` with the
 * container engines, for `loopfs install --runtime`, and reading the registrations back,
 * for `loopfs doctor`. Each engine has one function that decides what its configuration
 * should become (nothing when the runtime is registered already) and one that finds the
 * registration; install.ts applies the edits and records them for uninstall.
 *
 *  - Docker: `runtimes.loopfs.path` in daemon.json, merged into whatever is there.
 *  - containerd: a runtime in the CRI plugin of config.toml (config version 2), as a
 *    marked block at the end of the file. Not a drop-in: containerd 1.6 (verified on
 *    1.6.20) lets an `imports` file replace the *whole* section of every plugin it names,
 *    so a drop-in naming the CRI plugin drops the host's own CRI settings (Debian's
 *    `cni.bin_dir` falls back to /opt/cni/bin). And configuring any runtime replaces the
 *    built-in runtime map, so where the file configures none, the block also declares
 *    `runc`, the default runtime, without which the CRI plugin refuses to load.
 *  - podman: a drop-in `containers.conf.d/loopfs.conf` with `[engine.runtimes]`, which
 *    podman 4.3 merges with the other files (runc and crun stay known).
 *
 * The parsers here read only what they need (the runtime's entry); they never rewrite a
 * file they cannot read: an edit is a JSON merge (docker) or an appended block (containerd).
 */
import { accessSync, constants, existsSync, readdirSync, readFileSync, realpathSync, statSync } from 'node:fs';
import { delimiter, join } from 'node:path';
import { PINNED_ENV } from '../oci/hooks-json.js';
import { formatWrapperConfig } from '../oci/runtime/wrapper-config.js';

export const ENGINES = ['docker', 'containerd', 'podman'] as const;
export type Engine = (typeof ENGINES)[number];

/** The name the engines know the wrapper by (`docker run --runtime loopfs`, RuntimeClass handler). */
export const RUNTIME_NAME = 'loopfs';

export const DEFAULT_DOCKER_CONFIG = '/etc/docker/daemon.json';
export const DEFAULT_CONTAINERD_CONFIG = '/etc/containerd/config.toml';
export const DEFAULT_CONTAINERS_CONF_DIR = '/etc/containers/containers.conf.d';
export const PODMAN_DROPIN = 'loopfs.conf';

/** Where podman reads containers.conf and its drop-ins (rootful and rootless), in its order. */
export const PODMAN_CONF_FILES = ['/usr/share/containers/containers.conf', '/etc/containers/containers.conf'];
export const PODMAN_CONF_DIRS = ['/usr/share/containers/containers.conf.d', DEFAULT_CONTAINERS_CONF_DIR];

/** The restart each engine needs before it knows a new runtime. */
export const RESTART: Record<Engine, string> = {
  // runtimes is one of the options dockerd reloads on SIGHUP
  docker: 'reload dockerd to use it: systemctl reload docker (or kill -HUP $(pidof dockerd))',
  containerd: 'restart containerd to use it: systemctl restart containerd',
  podman: 'podman reads it at its next command: no restart needed',
};

export class EngineConfigError extends Error {}

/** `--runtime docker --runtime containerd,podman` -> the engines, each once, in the given order. */
export function parseEngines(values: readonly string[]): Engine[] {
  const out: Engine[] = [];
  for (const v of values.flatMap((s) => s.split(','))) {
    const name = v.trim();
    if (!(ENGINES as readonly string[]).includes(name)) {
      throw new EngineConfigError(`unknown container engine '${name}' (expected ${ENGINES.join(', ')})`);
    }
    if (!out.includes(name as Engine)) out.push(name as Engine);
  }
  return out;
}

export function readText(path: string): string | null {
  try {
    return readFileSync(path, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw new EngineConfigError(`${path}: ${(e as Error).message}`);
  }
}

/** An edit to an engine's file: its whole new content (containerd: and the block added), or: already registered there. */
export type Edit = { content: string; block?: string } | { registered: string };

// ---- Docker ---------------------------------------------------------------------------

type JsonObject = Record<string, unknown>;
const isObject = (v: unknown): v is JsonObject => typeof v === 'object' && v !== null && !Array.isArray(v);

function parseDaemonJson(text: string, path: string): JsonObject {
  // dockerd accepts an empty file as "no options"
  if (text.trim() === '') return {};
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch (e) {
    throw new EngineConfigError(`${path}: not valid JSON (${(e as Error).message}); not changing it`);
  }
  if (!isObject(doc)) throw new EngineConfigError(`${path}: not a JSON object; not changing it`);
  return doc;
}

/** The indentation the file already uses (a tab, or its first indented line's spaces); 2 spaces by default. */
function jsonIndent(text: string): string {
  const m = /\n([ \t]+)\S/.exec(text);
  return m ? m[1] : '  ';
}

export function dockerEdit(text: string | null, path: string, wrapper: string): Edit {
  const doc = text === null ? {} : parseDaemonJson(text, path);
  const runtimes = doc.runtimes;
  if (runtimes !== undefined && !isObject(runtimes)) throw new EngineConfigError(`${path}: "runtimes" is not an object; not changing it`);
  const ours = runtimes?.[RUNTIME_NAME];
  if (ours !== undefined) {
    const p = isObject(ours) ? ours.path : undefined;
    if (p === wrapper) return { registered: path };
    throw new EngineConfigError(`${path}: runtime "${RUNTIME_NAME}" is already registered as ${JSON.stringify(ours)}; not replacing it`);
  }
  doc.runtimes = { ...(runtimes ?? {}), [RUNTIME_NAME]: { path: wrapper } };
  return { content: `${JSON.stringify(doc, null, text === null ? '  ' : jsonIndent(text))}\n` };
}

/**
 * daemon.json without our runtime, for an uninstall after the admin edited the file: the
 * entry goes, and `runtimes` too when it held only ours before. Null: nothing of ours there.
 */
export function dockerUnmerge(text: string, wrapper: string, hadRuntimes: boolean): string | null {
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch {
    // not JSON (SyntaxError): a config we do not understand has no runtime of ours
    return null;
  }
  if (!isObject(doc) || !isObject(doc.runtimes)) return null;
  const ours = doc.runtimes[RUNTIME_NAME];
  if (!isObject(ours) || ours.path !== wrapper || Object.keys(ours).length !== 1) return null;
  delete doc.runtimes[RUNTIME_NAME];
  if (!hadRuntimes && Object.keys(doc.runtimes).length === 0) delete doc.runtimes;
  return `${JSON.stringify(doc, null, jsonIndent(text))}\n`;
}

/** The path daemon.json registers for runtime loopfs, or null. */
export function dockerRegistration(text: string): string | null {
  try {
    const doc = JSON.parse(text) as unknown;
    const ours = isObject(doc) && isObject(doc.runtimes) ? doc.runtimes[RUNTIME_NAME] : undefined;
    return isObject(ours) && typeof ours.path === 'string' ? ours.path : null;
  } catch {
    // unreadable or not JSON: no runtime of ours is registered there
    return null;
  }
}

// ---- containerd -----------------------------------------------------------------------

const CRI_V2 = 'io.containerd.grpc.v1.cri';
export const CONTAINERD_BEGIN = '# BEGIN loopfs: the runtime loopfs (loopfs install --runtime containerd; loopfs uninstall removes this block)';
export const CONTAINERD_END = '# END loopfs';

/** A table header `[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.NAME...]`, any quoting and spacing. */
function runtimeHeaders(text: string): Array<{ name: string; rest: string; at: number }> {
  const re = /^[ \t]*\[[ \t]*plugins[ \t]*\.[ \t]*(["']?)io\.containerd\.grpc\.v1\.cri\1[ \t]*\.[ \t]*containerd[ \t]*\.[ \t]*runtimes[ \t]*\.[ \t]*(["']?)([A-Za-z0-9_.-]+?)\2((?:[ \t]*\.[ \t]*[A-Za-z0-9_"'-]+)*)[ \t]*\][ \t]*(?:#.*)?$/gm;
  const out: Array<{ name: string; rest: string; at: number }> = [];
  for (let m = re.exec(text); m; m = re.exec(text)) out.push({ name: m[3], rest: m[4].replace(/[ \t"']/g, ''), at: m.index + m[0].length });
  return out;
}

/** The config's `version` (containerd: no key means 1). */
export function containerdConfigVersion(text: string): number {
  const m = /^[ \t]*version[ \t]*=[ \t]*(\d+)[ \t]*(?:#.*)?$/m.exec(text);
  return m ? Number(m[1]) : 1;
}

/** The CRI plugin's table in each config version containerd has had (1.x: 1 and 2; 2.x: 3). */
const CRI_TABLE: Record<number, string> = {
  1: 'plugins.cri',
  2: `plugins."${CRI_V2}"`,
  3: 'plugins."io.containerd.cri.v1.runtime"',
};

/** The runtime entry, with `runc` as well when `withRunc`. */
export function containerdSnippet(wrapper: string, withRunc: boolean, version = 2): string {
  const t = `${CRI_TABLE[version] ?? CRI_TABLE[2]}.containerd.runtimes`;
  const lines: string[] = [];
  if (withRunc) {
    lines.push(
      "# configuring any runtime replaces containerd's built-in list: keep the default one",
      `[${t}.runc]`,
      '  runtime_type = "io.containerd.runc.v2"',
      '',
    );
  }
  lines.push(
    `[${t}.${RUNTIME_NAME}]`,
    '  runtime_type = "io.containerd.runc.v2"',
    '  pod_annotations = ["io.loopfs.*"]',
    `  [${t}.${RUNTIME_NAME}.options]`,
    `    BinaryName = ${JSON.stringify(wrapper)}`,
  );
  return `${lines.join('\n')}\n`;
}

export type ContainerdEdit = Edit | { manual: string; snippet: string };

/**
 * config.toml with our block appended; for a config that is not version 2 (the form this
 * edit knows), the snippet to add by hand instead.
 */
export function containerdEdit(text: string | null, path: string, wrapper: string): ContainerdEdit {
  const version = text === null ? 2 : containerdConfigVersion(text);
  if (version !== 2) {
    return {
      manual: `${path} is a version ${version} containerd config; add this to it (the runc entry only if it configures no runtime yet), then restart containerd:`,
      snippet: containerdSnippet(wrapper, true, version),
    };
  }
  const headers = text === null ? [] : runtimeHeaders(text);
  if (headers.some((h) => h.name === RUNTIME_NAME)) {
    const registered = containerdRegistration(text ?? '');
    if (registered === wrapper) return { registered: path };
    throw new EngineConfigError(`${path}: runtime "${RUNTIME_NAME}" is already configured${registered ? ` with BinaryName ${registered}` : ''}; not replacing it`);
  }
  const block = containerdBlock(wrapper, headers.length === 0);
  if (text === null) return { content: `version = 2\n\n${block}`, block };
  return { content: `${text}${text === '' || text.endsWith('\n') ? '' : '\n'}\n${block}`, block };
}

export function containerdBlock(wrapper: string, withRunc: boolean): string {
  return `${CONTAINERD_BEGIN}\n${containerdSnippet(wrapper, withRunc)}${CONTAINERD_END}\n`;
}

/** The BinaryName of runtime loopfs in a containerd config, or null. */
export function containerdRegistration(text: string): string | null {
  const opts = runtimeHeaders(text).find((h) => h.name === RUNTIME_NAME && h.rest === '.options');
  if (!opts) return null;
  const body = text.slice(opts.at).split(/^[ \t]*\[/m)[0];
  const m = /^[ \t]*BinaryName[ \t]*=[ \t]*"([^"\\]*)"/m.exec(body);
  return m ? m[1] : null;
}

/** The config without our block (an uninstall after the admin edited the file); null: the block is not there intact. */
export function containerdUnblock(text: string, block: string): string | null {
  const at = text.indexOf(`\n${block}`);
  if (at < 0) return null;
  return text.slice(0, at) + text.slice(at + 1 + block.length);
}

// ---- podman ---------------------------------------------------------------------------

export function podmanDropin(wrapper: string): string {
  return [
    '# the runtime loopfs (loopfs install --runtime podman; loopfs uninstall removes this file)',
    '[engine.runtimes]',
    `${RUNTIME_NAME} = [${JSON.stringify(wrapper)}]`,
    '',
  ].join('\n');
}

export function podmanEdit(text: string | null, path: string, wrapper: string): Edit {
  if (text === null) return { content: podmanDropin(wrapper) };
  if (text === podmanDropin(wrapper)) return { registered: path };
  throw new EngineConfigError(`${path} exists; not replacing it`);
}

/** The first path of runtime loopfs in `[engine.runtimes]` of a containers.conf file, or null. */
export function podmanRegistration(text: string): string | null {
  let table = '';
  for (const line of text.split('\n')) {
    const h = /^[ \t]*\[[ \t]*([^\]]+?)[ \t]*\][ \t]*(?:#.*)?$/.exec(line);
    if (h) {
      table = h[1].replace(/[ \t"']/g, '');
      continue;
    }
    if (table !== 'engine.runtimes') continue;
    const m = /^[ \t]*["']?loopfs["']?[ \t]*=[ \t]*\[[ \t]*"([^"\\]*)"/.exec(line);
    if (m) return m[1];
  }
  return null;
}

/** The containers.conf files podman reads: the main files, then each drop-in directory's *.conf in name order. */
export function podmanConfFiles(dirs: readonly string[] = PODMAN_CONF_DIRS, files: readonly string[] = PODMAN_CONF_FILES): string[] {
  const out = files.filter((f) => existsSync(f));
  for (const d of dirs) {
    let names: string[] = [];
    try {
      names = readdirSync(d).filter((n) => n.endsWith('.conf')).sort();
    } catch {
      /* no such directory */
    }
    out.push(...names.map((n) => join(d, n)));
  }
  return out;
}

// ---- the wrapper's own configuration ----------------------------------------------------

function executable(path: string): boolean {
  try {
    accessSync(path, constants.X_OK);
    return statSync(path).isFile();
  } catch {
    // absent (ENOENT) or not executable (EACCES): not an installed program
    return false;
  }
}

/** Where to look for a command: PATH, then the usual directories (a non-login root shell may lack the sbin ones). */
function searchDirs(env: NodeJS.ProcessEnv): string[] {
  const dirs = [...(env.PATH ?? '').split(delimiter), '/usr/local/sbin', '/usr/local/bin', '/usr/sbin', '/usr/bin', '/sbin', '/bin'];
  return [...new Set(dirs.filter((d) => d.startsWith('/')))];
}

/** The executables named `name` on the search path, in order. */
export function findExecutables(name: string, env: NodeJS.ProcessEnv = process.env): string[] {
  return searchDirs(env).map((d) => join(d, name)).filter(executable);
}

/** The real runtime the wrapper should run: the first `runc` found, never loopfs's own wrapper. Null when none. */
export function findRealRuntime(wrapper: string, env: NodeJS.ProcessEnv = process.env): string | null {
  let ownReal = wrapper;
  try {
    ownReal = realpathSync(wrapper);
  } catch {
    /* not there */
  }
  for (const p of findExecutables('runc', env)) {
    try {
      if (realpathSync(p) !== ownReal) return p;
    } catch {
      /* a dangling link */
    }
  }
  return null;
}

/** runtime.json as install writes it: the runc found now, and the variables set now that choose loopfs's files. */
export function runtimeConfigContent(realRuntime: string | null, env: NodeJS.ProcessEnv = process.env): string {
  const pinned: Record<string, string> = {};
  for (const k of PINNED_ENV) if (env[k]) pinned[k] = env[k] as string;
  return formatWrapperConfig({ runtime: realRuntime, env: pinned });
}
