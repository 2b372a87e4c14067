/**
 * `loopfs oci-hook STAGE`: the OCI runtime hook (see hooks-json.ts for how it is
 * installed). It reads the container's state on stdin and, for containers that opted in
 * with the annotation io.loopfs.instance=true:
 *
 *   createRuntime  makes the container's private instance (pool pre-allocated), binds it
 *                  at /dev/loopfs and links its pool devices to /dev/loopN;
 *   poststop       detaches and removes every device of that instance and the instance.
 *
 * As root of the initial user namespace (rootful runtime) it does this itself; in a
 * rootless runtime (it runs as the user) the OCI broker does the privileged part.
 */
import { native } from '../kernel/native.js';
import { inInitialUserNamespace } from '../kernel/process.js';
import { cgroupAllowsBlockMajor, hostIdOf, OciError, parseState, readConfig, type BundleConfig, type OciState } from './bundle.js';
import { prepareContainerDev, refuseNodevRuntime } from './container-dev.js';
import { allowLoopMinors, deviceCgroupAllowFile } from './device-cgroup.js';
import { createContainerInstance, destroyContainerInstance } from './container-instance.js';
import { ociRequest } from './oci-broker.js';
import { enabled, policyOf, type Stage } from './policy.js';
import { instanceDirFor, readRecord } from './record.js';
import { LOOP_MAJOR } from '../kernel/devnum.js';

export { STAGES, type Stage } from './policy.js';

export interface HookOutcome {
  stage: Stage;
  container: string;
  action: 'skipped' | 'created' | 'destroyed' | 'nothing to do';
  dir?: string;
  nodes?: string[];
}

/** Root of the initial user namespace: a rootful runtime (a rootless one runs in a user namespace). */
export function isHostRoot(): boolean {
  return process.geteuid?.() === 0 && inInitialUserNamespace();
}

export function runHook(stage: Stage | undefined, stdin: string, env: NodeJS.ProcessEnv = process.env): HookOutcome {
  const state = parseState(stdin);
  const st: Stage = stage ?? (state.status === 'stopped' ? 'poststop' : 'createRuntime');
  let config: BundleConfig | null = null;
  try {
    config = readConfig(state.bundle);
  } catch (e) {
    // poststop may run after the bundle was cleaned up: the state's annotations decide
    if (st === 'createRuntime') throw e;
  }
  const annotations = { ...(config?.annotations ?? {}), ...state.annotations };
  if (!enabled(annotations)) return { stage: st, container: state.id, action: 'skipped' };
  return st === 'createRuntime' ? onCreateRuntime(state, config!, annotations, env) : onPoststop(state, env);
}

function onCreateRuntime(state: OciState, config: BundleConfig, annotations: Record<string, string>, env: NodeJS.ProcessEnv): HookOutcome {
  if (state.pid === null) throw new OciError('createRuntime: the OCI state has no pid');
  const policy = policyOf(annotations);
  const pid = state.pid;
  if (isHostRoot()) {
    const uid = hostIdOf(0, config.uidMappings);
    const gid = hostIdOf(0, config.gidMappings);
    if (uid === null || gid === null) throw new OciError("the container's root is not mapped to a host user (linux.uidMappings)");
    const allowFile = deviceAccess(config, pid);
    // in its own user namespace, the container's mounts have their flags locked: the bind
    // at /dev/loopfs cannot clear a nodev it inherits (without one, the host root can)
    if (config.uidMappings.length > 0) refuseNodevRuntime('a container with a user namespace', env);
    const made = createContainerInstance({ requester: 0, container: state.id, pid, owner: { uid, gid }, policy }, env);
    try {
      if (allowFile) allowLoopMinors(allowFile, made.nodes.map((n) => Number(n.slice(4))));
      prepareContainerDev({ pid, rootPath: config.rootPath, dir: made.dir, nodes: made.nodes, control: false, as: { uid, gid } });
    } catch (e) {
      destroyContainerInstance(made.dir, env);
      throw e;
    }
    return { stage: 'createRuntime', container: state.id, action: 'created', ...made };
  }
  // rootless: the OCI broker (root) makes and serves the instance for our uid (and
  // refuses a nodev runtime directory itself)
  const n = native();
  const pidfd = n.pidfdOpen(pid);
  let reply;
  try {
    reply = ociRequest({ op: 'create', container: state.id, max: policy.max, pool: policy.pool }, [pidfd], env);
  } finally {
    n.close(pidfd);
  }
  if (!reply.ok) throw new OciError(reply.error);
  const dir = reply.dir!;
  const nodes = reply.nodes ?? [];
  try {
    prepareContainerDev({ pid, rootPath: config.rootPath, dir, nodes, control: true });
  } catch (e) {
    ociRequest({ op: 'destroy', container: state.id }, [], env);
    throw e;
  }
  return { stage: 'createRuntime', container: state.id, action: 'created', dir, nodes };
}

function onPoststop(state: OciState, env: NodeJS.ProcessEnv): HookOutcome {
  if (isHostRoot()) {
    const dir = instanceDirFor(0, state.id, env);
    if (readRecord(dir)?.container !== state.id) return { stage: 'poststop', container: state.id, action: 'nothing to do' };
    destroyContainerInstance(dir, env);
    return { stage: 'poststop', container: state.id, action: 'destroyed', dir };
  }
  const reply = ociRequest({ op: 'destroy', container: state.id }, [], env);
  if (!reply.ok) throw new OciError(reply.error);
  return { stage: 'poststop', container: state.id, action: 'destroyed' };
}

/**
 * How a rootful container will reach its devices: a rule of the operator's that grants
 * every loop device (then returns null), or rules this hook adds for exactly the
 * instance's devices to a cgroup v1 devices controller (returns its devices.allow; see
 * device-cgroup.ts). With the broad rule the container must not be able to make nodes:
 * with CAP_MKNOD (in podman's defaults; the default rules allow mknod of every device)
 * it could create /dev/loop0 and reach the host's devices through that rule. A container
 * in a user namespace cannot make device nodes at all.
 */
export function deviceAccess(config: BundleConfig, pid: number): string | null {
  if (cgroupAllowsBlockMajor(config.deviceRules, LOOP_MAJOR)) {
    if (config.uidMappings.length === 0 && config.boundingCaps.includes('CAP_MKNOD')) {
      throw new OciError(
        "the container could create nodes of the host's loop devices (CAP_MKNOD and access to every loop device): run it with --cap-drop=MKNOD",
      );
    }
    return null;
  }
  const allowFile = deviceCgroupAllowFile(pid);
  if (!allowFile) {
    throw new OciError(
      "the container may not open loop devices and its device cgroup is not one a hook can extend (cgroup v2): run it with --device-cgroup-rule='b 7:* rw'",
    );
  }
  return allowFile;
}
