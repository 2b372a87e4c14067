/**
 * The runtime wrapper's edit of a bundle's config.json, for containers that opt in:
 *
 *  - the opt-in is written as annotations (the hook and, at poststop, runc's state read
 *    them from there): `io.loopfs.instance=true` itself, or, for engines that cannot set
 *    annotations (Docker 20.10), `LOOPFS_OCI=1`, `LOOPFS_OCI_POOL=N`, `LOOPFS_OCI_MAX=N`
 *    in process.env. An annotation the engine set wins over the variable;
 *  - the `loopfs oci-hook` createRuntime and poststop hooks (hooks-json.ts), unless a
 *    loopfs hook is already there (podman merges hooks.d files before the runtime runs);
 *  - /sys/dev/block unmasked: util-linux reads the devices' attributes there;
 *  - the seccomp agent (seccomp-edit.ts).
 *
 * Every other field stays as it was. A container that did not opt in is not edited at all.
 */
import { OciError } from '../bundle.js';
import { hookCommand, isLoopfsHook } from '../hooks-json.js';
import { ANNOTATION_INSTANCE, ANNOTATION_MAX, ANNOTATION_POOL, STAGES, enabled, policyOf } from '../policy.js';
import { withAgent } from '../seccomp-edit.js';

export const ENV_OPT_IN = 'LOOPFS_OCI';
const ENV_ANNOTATIONS: Array<[string, string]> = [
  ['LOOPFS_OCI_POOL', ANNOTATION_POOL],
  ['LOOPFS_OCI_MAX', ANNOTATION_MAX],
];
/** What the engine masks and util-linux needs (sysfs attributes of the block devices). */
export const UNMASKED = '/sys/dev/block';

export interface EditContext {
  /** The variables pinned into the hooks; they also decide the agent's socket path. */
  env: NodeJS.ProcessEnv;
  packageRoot: string;
  nodePath: string;
  /** For the seccomp verdict (tests): process.arch, os.release() by default. */
  arch?: string;
  release?: string;
}

type Doc = Record<string, unknown>;

function isObject(v: unknown): v is Doc {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function annotationsOf(doc: Doc): Record<string, string> {
  if (doc.annotations === undefined || doc.annotations === null) return {};
  if (!isObject(doc.annotations) || !Object.values(doc.annotations).every((v) => typeof v === 'string'))
    throw new OciError('config.json annotations: expected an object of strings');
  return doc.annotations as Record<string, string>;
}

/** process.env as a map; the first `=` splits (as execve's consumers read it). */
function processEnvOf(doc: Doc): Record<string, string> {
  const proc = doc.process;
  if (proc === undefined || proc === null) return {};
  if (!isObject(proc)) throw new OciError('config.json process: expected an object');
  if (proc.env === undefined || proc.env === null) return {};
  if (!Array.isArray(proc.env) || !proc.env.every((e) => typeof e === 'string')) throw new OciError('config.json process.env: expected a list of strings');
  const out: Record<string, string> = {};
  for (const e of proc.env as string[]) {
    const i = e.indexOf('=');
    if (i > 0 && !(e.slice(0, i) in out)) out[e.slice(0, i)] = e.slice(i + 1);
  }
  return out;
}

/**
 * The annotations to add for the opt-in ({} when the annotations already say it), or null
 * when the container did not opt in. Checked as the hook will check them, so a bad value
 * fails the create with one line instead of the hook failing later.
 */
export function optInAnnotations(doc: Doc): Record<string, string> | null {
  const ann = annotationsOf(doc);
  if (ANNOTATION_INSTANCE in ann) {
    if (!enabled(ann)) return null;
    policyOf(ann);
    return {};
  }
  const env = processEnvOf(doc);
  if (!enabled({ [ANNOTATION_INSTANCE]: env[ENV_OPT_IN] ?? '' })) return null;
  const add: Record<string, string> = { [ANNOTATION_INSTANCE]: 'true' };
  for (const [v, a] of ENV_ANNOTATIONS) if (env[v] !== undefined && !(a in ann)) add[a] = env[v];
  try {
    policyOf({ ...ann, ...add });
  } catch (e) {
    throw new OciError(`config.json process.env ${ENV_OPT_IN}*: ${(e as Error).message}`);
  }
  return add;
}

function hooksWithLoopfs(hooks: unknown, ctx: EditContext): Doc {
  if (hooks !== undefined && hooks !== null && !isObject(hooks)) throw new OciError('config.json hooks: expected an object');
  const out: Doc = { ...(hooks ?? {}) };
  for (const stage of STAGES) {
    const list = out[stage] ?? [];
    if (!Array.isArray(list)) throw new OciError(`config.json hooks.${stage}: expected a list`);
    out[stage] = list.some((h) => isLoopfsHook(h, stage)) ? list : [...list, hookCommand(stage, ctx.packageRoot, ctx.nodePath, ctx.env)];
  }
  return out;
}

/** The edited document, or null when the container did not opt in (leave the bundle alone). */
export function editConfig(doc: unknown, ctx: EditContext): Doc | null {
  if (!isObject(doc)) throw new OciError('config.json: expected a JSON object');
  const add = optInAnnotations(doc);
  if (add === null) return null;
  const out: Doc = { ...doc };
  if (Object.keys(add).length > 0) out.annotations = { ...annotationsOf(doc), ...add };
  out.hooks = hooksWithLoopfs(doc.hooks, ctx);
  if (doc.linux !== undefined && doc.linux !== null && !isObject(doc.linux)) throw new OciError('config.json linux: expected an object');
  const linux: Doc = { ...((doc.linux as Doc | undefined) ?? {}) };
  if (linux.maskedPaths !== undefined && linux.maskedPaths !== null) {
    if (!Array.isArray(linux.maskedPaths)) throw new OciError('config.json linux.maskedPaths: expected a list');
    linux.maskedPaths = linux.maskedPaths.filter((p) => p !== UNMASKED);
  }
  linux.seccomp = withAgent(linux.seccomp, ctx.env, 'config.json linux.seccomp', ctx.arch, ctx.release);
  out.linux = linux;
  return out;
}
