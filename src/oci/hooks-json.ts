/**
 * The OCI hook configuration files (containers/common `hooks.d` format, version 1.0.0)
 * that `loopfs install --oci-hooks DIR` writes, and the check `loopfs doctor` uses.
 *
 * One file per stage, each running `node …/bin/loopfs oci-hook STAGE` only for containers
 * annotated io.loopfs.instance=true. The node binary and the package path are absolute
 * (hooks run with the runtime's environment, which may have no usable PATH for node); the
 * environment is fixed in the file, so the hook finds the same runtime directory whoever
 * starts the container.
 */
import { existsSync, readFileSync } from 'node:fs';
import { basename, join } from 'node:path';
import { ANNOTATION_INSTANCE, STAGES, type Stage } from './policy.js';

/** Where podman and CRI-O look for hooks by default. */
export const DEFAULT_HOOKS_DIRS = ['/usr/share/containers/oci/hooks.d', '/etc/containers/oci/hooks.d'];

export const hookFileName = (stage: Stage): string => `loopfs-${stage}.json`;

const HOOK_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin';
/** Variables that choose loopfs's machine-wide files; copied into the hook when set at install. */
export const PINNED_ENV = ['LOOPFS_RUNTIME_DIR', 'LOOPFS_LIMITS'] as const;

/** An OCI hook entry (config.json `hooks.STAGE[]`, and `hook` of a hooks.d file). */
export interface HookCommand {
  path: string;
  args: string[];
  env: string[];
}

/**
 * The hook loopfs runs at `stage`: the one definition behind the hooks.d files written by
 * `loopfs install --oci-hooks` and the hooks the runtime wrapper adds to config.json.
 */
export function hookCommand(stage: Stage, packageRoot: string, nodePath: string, env: NodeJS.ProcessEnv): HookCommand {
  // oclif reads plugin data from $HOME, which in a rootless runtime's user namespace is
  // root's (EACCES warning on stderr, which runtimes show as the hook's error): none
  const hookEnv = [`PATH=${HOOK_PATH}`, 'LOOPFS_DATA_DIR=/nonexistent', ...PINNED_ENV.filter((k) => env[k]).map((k) => `${k}=${env[k]}`)];
  return { path: nodePath, args: ['node', join(packageRoot, 'bin', 'loopfs'), 'oci-hook', stage], env: hookEnv };
}

/**
 * Whether `hook` (a config.json hook entry) is a loopfs hook for `stage`, from any
 * installation: the wrapper must not add a second one where the engine already merged
 * the hooks.d file (podman), or the container would get two instances.
 */
export function isLoopfsHook(hook: unknown, stage: Stage): boolean {
  if (typeof hook !== 'object' || hook === null) return false;
  const args = (hook as { args?: unknown }).args;
  return Array.isArray(args) && typeof args[1] === 'string' && basename(args[1]) === 'loopfs' && args[2] === 'oci-hook' && args[3] === stage;
}

export function hookFileContent(stage: Stage, packageRoot: string, nodePath: string, env: NodeJS.ProcessEnv): string {
  const doc = {
    version: '1.0.0',
    hook: hookCommand(stage, packageRoot, nodePath, env),
    when: { annotations: { [`^${ANNOTATION_INSTANCE.replace(/\./g, '\\.')}$`]: '(?i)^(true|1|yes|on)$' } },
    stages: [stage],
  };
  return `${JSON.stringify(doc, null, 2)}\n`;
}

export interface HookInstallStatus {
  dir: string;
  /** Stages whose file is present and runs an existing loopfs. */
  stages: Stage[];
  /** Stages whose file is missing, unreadable or points to a loopfs that is gone. */
  broken: Stage[];
}

/**
 * Whether the loopfs OCI hook is installed in each of `dirs` (default: podman's): for
 * `loopfs doctor`. Installed means both stage files are there, parse, and name a node and
 * a bin/loopfs that exist.
 */
export function ociHookStatus(dirs: string[] = DEFAULT_HOOKS_DIRS): HookInstallStatus[] {
  return dirs.map((dir) => {
    const stages: Stage[] = [];
    const broken: Stage[] = [];
    for (const stage of STAGES) {
      let ok = false;
      try {
        const doc = JSON.parse(readFileSync(join(dir, hookFileName(stage)), 'utf8')) as {
          hook?: { path?: string; args?: string[] };
          stages?: string[];
        };
        const args = doc.hook?.args ?? [];
        ok =
          doc.stages?.includes(stage) === true &&
          typeof doc.hook?.path === 'string' &&
          existsSync(doc.hook.path) &&
          typeof args[1] === 'string' &&
          existsSync(args[1]) &&
          args[2] === 'oci-hook';
      } catch {
        // a hook file that is not what we wrote (not JSON, missing fields): counted as broken
        ok = false;
      }
      (ok ? stages : broken).push(stage);
    }
    return { dir, stages, broken };
  });
}

/** True when some directory has a complete, working loopfs OCI hook. */
export function ociHookInstalled(dirs: string[] = DEFAULT_HOOKS_DIRS): boolean {
  return ociHookStatus(dirs).some((s) => s.broken.length === 0);
}
