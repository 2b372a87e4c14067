/**
 * Putting loopfs's seccomp agent into an engine's filter: the one edit shared by the
 * runtime wrapper (linux.seccomp of a bundle's config.json) and `loopfs seccomp-profile`
 * (a containers/common or moby profile file, whose rules may carry `includes`/`excludes`
 * that the engine resolves per container).
 *
 * The edit (see agent-contract.ts for what is trapped and why):
 *  - the engine's own verdict on mount(2) is computed from the ORIGINAL filter and written
 *    as listenerMetadata, so the agent refuses exactly what the engine refused;
 *  - the trapped syscalls are taken out of every engine rule (a rule naming nothing else
 *    goes), so no engine rule can shadow ours; every other rule and field stays as it was;
 *  - one rule sends NOTIFIED_SYSCALLS to the agent, and each other call the agent can judge
 *    (JUDGED_SYSCALLS: umount2, so a container without CAP_SYS_ADMIN can unmount what the
 *    agent mounted for it) where the engine's verdict on it is its verdict on mount(2) (the
 *    agent gives such calls the mount verdict); one rule answers ENOSYS_SYSCALLS with ENOSYS;
 *  - listenerPath is the agent's socket. A filter that already has a listener belongs to
 *    another agent: refused (a filter has one listener), unless it is loopfs's own (same
 *    socket, loopfs metadata), which is kept as it is: the edit is idempotent.
 */
import { readFileSync } from 'node:fs';
import { release as osRelease } from 'node:os';
import { ENOSYS, ENOSYS_SYSCALLS, JUDGED_SYSCALLS, NOTIFIED_SYSCALLS, formatMetadata, parseMetadata, seccompSocketPath, type EngineVerdict } from './agent-contract.js';
import { toSysError } from '../kernel/errors.js';
import { OciError } from './bundle.js';
import { parseExact } from './exact-json.js';
import { capabilityNumber } from './capabilities.js';

export const EPERM = 1;

/** A rule as config.json and profile files write it; unknown fields are kept as they are. */
export interface SeccompRule {
  names?: string[];
  /** moby's older single-name form */
  name?: string;
  action: string;
  errnoRet?: number;
  args?: unknown[] | null;
  includes?: Conditions;
  excludes?: Conditions;
  [k: string]: unknown;
}

interface Conditions {
  caps?: string[];
  arches?: string[];
  minKernel?: string;
}

export interface SeccompFilter {
  defaultAction: string;
  defaultErrnoRet?: number;
  syscalls?: SeccompRule[] | null;
  listenerPath?: string;
  listenerMetadata?: string;
  [k: string]: unknown;
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** Checks the fields this module reads; `what` names the filter in messages. */
export function checkFilter(v: unknown, what: string): SeccompFilter {
  if (!isObject(v)) throw new OciError(`${what}: expected an object`);
  if (typeof v.defaultAction !== 'string') throw new OciError(`${what}: no defaultAction`);
  if (v.defaultErrnoRet !== undefined && !Number.isInteger(v.defaultErrnoRet)) throw new OciError(`${what}.defaultErrnoRet: expected an integer`);
  if (v.syscalls !== undefined && v.syscalls !== null) {
    if (!Array.isArray(v.syscalls)) throw new OciError(`${what}.syscalls: expected a list`);
    v.syscalls.forEach((r, i) => {
      const at = `${what}.syscalls[${i}]`;
      if (!isObject(r) || typeof r.action !== 'string') throw new OciError(`${at}: expected a rule with an action`);
      if (r.names !== undefined && r.names !== null && !(Array.isArray(r.names) && r.names.every((n) => typeof n === 'string')))
        throw new OciError(`${at}.names: expected a list of names`);
      if (r.name !== undefined && typeof r.name !== 'string') throw new OciError(`${at}.name: expected a string`);
      if (r.errnoRet !== undefined && !Number.isInteger(r.errnoRet)) throw new OciError(`${at}.errnoRet: expected an integer`);
      if (r.args !== undefined && r.args !== null && !Array.isArray(r.args)) throw new OciError(`${at}.args: expected a list`);
      for (const k of ['includes', 'excludes'] as const) {
        const c = r[k];
        if (c === undefined || c === null) continue;
        if (!isObject(c)) throw new OciError(`${at}.${k}: expected an object`);
        for (const l of ['caps', 'arches'] as const)
          if (c[l] !== undefined && c[l] !== null && !(Array.isArray(c[l]) && (c[l] as unknown[]).every((n) => typeof n === 'string')))
            throw new OciError(`${at}.${k}.${l}: expected a list of names`);
      }
    });
  }
  return v as SeccompFilter;
}

const namesOf = (r: SeccompRule): string[] => [...(r.names ?? []), ...(r.name !== undefined ? [r.name] : [])];

/** What an action does to a mount(2) it decides; anything that is not "run it" refuses. */
function actionVerdict(action: string, errnoRet: number | undefined): EngineVerdict {
  switch (action) {
    case 'SCMP_ACT_ALLOW':
    case 'SCMP_ACT_LOG':
      return { kind: 'allow' };
    case 'SCMP_ACT_ERRNO':
      // runc and crun answer EPERM when no errno is given
      return { kind: 'errno', errno: errnoRet ?? EPERM };
    default:
      // KILL, TRAP, TRACE...: the metadata can only continue or refuse, so refuse
      return { kind: 'errno', errno: EPERM };
  }
}

const refusalErrno = (v: EngineVerdict): number | null => (v.kind === 'errno' ? v.errno : null);

// Go's GOARCH, which moby and containers/common match `includes.arches` against.
const GOARCH: Record<string, string> = { x64: 'amd64', arm64: 'arm64', arm: 'arm', ia32: '386', ppc64: 'ppc64le', s390x: 's390x', riscv64: 'riscv64' };

function kernelAtLeast(min: string, release: string): boolean {
  const parse = (s: string) => (s.match(/^(\d+)\.(\d+)/) ?? []).slice(1).map(Number);
  const [a, b] = parse(release);
  const [x, y] = parse(min);
  if (x === undefined || a === undefined) return true;
  return a > x || (a === x && b >= (y ?? 0));
}

/** Whether a profile rule's arch/kernel conditions hold here (caps are decided per world). */
function appliesHere(r: SeccompRule, arch: string, release: string): boolean {
  const goarch = GOARCH[arch] ?? arch;
  if (r.includes?.arches?.length && !r.includes.arches.includes(goarch)) return false;
  if (r.excludes?.arches?.includes(goarch)) return false;
  if (r.includes?.minKernel && !kernelAtLeast(r.includes.minKernel, release)) return false;
  return true;
}

/**
 * The engine's verdict on a mount(2) (or another `syscall`) that nothing else decides, from
 * its original filter.
 *
 * A resolved filter (config.json) has no conditions: the first rule naming it decides,
 * else the default action. A profile's rules may depend on the container's capabilities
 * (`includes.caps`: every cap held; `excludes.caps`: none held), so the verdict is worked
 * out for every combination of the caps those rules name: the same everywhere is that
 * verdict; "allowed exactly with one cap" is `{kind:'cap'}`; anything else refuses
 * (the metadata can only tighten). A rule with argument filters on mount allows some
 * calls and not others, which the metadata cannot say: it refuses too.
 */
export function engineMountVerdict(filter: SeccompFilter, arch: string = process.arch, release: string = osRelease(), syscall = 'mount'): EngineVerdict {
  const rules = (filter.syscalls ?? []).filter((r) => namesOf(r).includes(syscall) && appliesHere(r, arch, release));
  const fallback = actionVerdict(filter.defaultAction, filter.defaultErrnoRet);
  const caps = [...new Set(rules.flatMap((r) => [...(r.includes?.caps ?? []), ...(r.excludes?.caps ?? [])]))];
  if (caps.length > 8) return { kind: 'errno', errno: EPERM };
  const worlds: EngineVerdict[] = [];
  for (let mask = 0; mask < 1 << caps.length; mask++) {
    const held = new Set(caps.filter((_, i) => mask & (1 << i)));
    const r = rules.find((x) => (x.includes?.caps ?? []).every((c) => held.has(c)) && !(x.excludes?.caps ?? []).some((c) => held.has(c)));
    if (r === undefined) worlds.push(fallback);
    else if (r.args && r.args.length > 0)
      worlds.push({ kind: 'errno', errno: r.action === 'SCMP_ACT_ERRNO' ? (r.errnoRet ?? EPERM) : (refusalErrno(fallback) ?? EPERM) });
    else worlds.push(actionVerdict(r.action, r.errnoRet));
  }
  if (worlds.every((w) => same(w, worlds[0]))) return worlds[0];
  // worlds[0] holds no cap, worlds[1] the one cap
  const cap = caps.length === 1 ? capabilityNumber(caps[0]) : null;
  if (cap !== null && worlds[1].kind === 'allow' && worlds[0].kind === 'errno') return { kind: 'cap', cap, errno: worlds[0].errno };
  return { kind: 'errno', errno: worlds.map(refusalErrno).find((e) => e !== null) ?? EPERM };
}

const same = (a: EngineVerdict, b: EngineVerdict) => JSON.stringify(a) === JSON.stringify(b);

/** The rules loopfs adds: `notified` to the agent, the new mount API answered ENOSYS. */
export function agentRules(notified: readonly string[] = JUDGED_SYSCALLS): SeccompRule[] {
  return [
    { names: [...notified], action: 'SCMP_ACT_NOTIFY' },
    { names: [...ENOSYS_SYSCALLS], action: 'SCMP_ACT_ERRNO', errnoRet: ENOSYS },
  ];
}

/**
 * `filter` (or, when the container has none, a filter that allows everything) with the
 * agent in it: a new object; `filter` is not changed. `what` names it in messages.
 */
export function withAgent(filter: unknown, env: NodeJS.ProcessEnv, what: string, arch: string = process.arch, release?: string): SeccompFilter {
  if (filter === undefined || filter === null) {
    const verdict: EngineVerdict = { kind: 'allow' };
    return { defaultAction: 'SCMP_ACT_ALLOW', syscalls: agentRules(), listenerPath: seccompSocketPath(env), listenerMetadata: formatMetadata(verdict) };
  }
  const f = checkFilter(filter, what);
  // ours already (a second create of the same bundle, or a `loopfs seccomp-profile` file):
  // the agent rules are in it and the verdict was computed from the engine's own filter
  if (f.listenerPath === seccompSocketPath(env) && parseMetadata(f.listenerMetadata) !== null) return f;
  if (typeof f.listenerPath === 'string' && f.listenerPath !== '')
    throw new OciError(`${what}.listenerPath is already set (${f.listenerPath}): another seccomp agent serves this container`);
  const rel = release ?? osRelease();
  const verdict = engineMountVerdict(f, arch, rel);
  const notified = [
    ...NOTIFIED_SYSCALLS,
    ...JUDGED_SYSCALLS.filter((s) => !(NOTIFIED_SYSCALLS as readonly string[]).includes(s) && same(engineMountVerdict(f, arch, rel, s), verdict)),
  ];
  const TRAPPED = new Set<string>([...notified, ...ENOSYS_SYSCALLS]);
  const kept: SeccompRule[] = [];
  for (const r of f.syscalls ?? []) {
    const names = namesOf(r);
    if (!names.some((n) => TRAPPED.has(n))) {
      kept.push(r);
      continue;
    }
    const rest = names.filter((n) => !TRAPPED.has(n));
    if (rest.length === 0) continue;
    const { name: _single, ...others } = r;
    kept.push({ ...others, names: rest });
  }
  return { ...f, syscalls: [...kept, ...agentRules(notified)], listenerPath: seccompSocketPath(env), listenerMetadata: formatMetadata(verdict) };
}

/** podman's (containers/common) default profile. */
export const DEFAULT_PROFILE = '/usr/share/containers/seccomp.json';

/**
 * A seccomp profile file (containers/common or moby format) with the agent in it, for
 * `--security-opt seccomp=FILE` without the wrapper: `loopfs seccomp-profile`. `text` is
 * the profile as JSON (2-space indent), with every number exactly as in FILE.
 */
export function profileWithAgent(file: string, env: NodeJS.ProcessEnv = process.env, arch?: string, release?: string): { profile: SeccompFilter; text: string } {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (e) {
    throw new OciError(`${file}: ${toSysError(e).description}`);
  }
  let json;
  try {
    json = parseExact(text);
  } catch {
    throw new OciError(`${file}: not JSON`);
  }
  const profile = withAgent(checkFilter(json.doc, file), env, file, arch, release);
  return { profile, text: `${json.stringify(profile, 2)}\n` };
}
