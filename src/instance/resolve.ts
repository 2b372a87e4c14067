/**
 * Which instance a command works in: `--instance DIR`, else $LOOPFS_INSTANCE, else
 * /dev/loopfs when it is an instance (the seeds' convention), else the host, where
 * everything behaves exactly like util-linux.
 */
import { existsSync, lstatSync } from 'node:fs';
import { resolve as resolvePath } from 'node:path';
import { native, type NativeStatfs } from '../kernel/native.js';
import { BROKER_SOCKET } from '../protocol/broker.js';
import { BrokeredInstance, BrokerUnavailableError } from './brokered-instance.js';
import { DeviceNames } from './device-names.js';
import { HostScope } from './host.js';
import { KernelInstance, LOOPFS_SUPER_MAGIC } from './kernel-instance.js';
import { LocalInstance } from './local-instance.js';
import type { LoopScope } from './scope.js';

export const DEFAULT_INSTANCE = '/dev/loopfs';

export type InstanceKind = 'kernel' | 'local' | 'broker';

/** DIR names something that is not an instance (or cannot be used). */
export class InstanceError extends Error {
  constructor(
    readonly dir: string,
    readonly reason: string,
  ) {
    super(`${dir}: ${reason}`);
    this.name = 'InstanceError';
  }
}

/**
 * What kind of instance DIR is, or null when it is none. `statfs` is injectable so the
 * kernel-loopfs detection can be tested on kernels that lack the filesystem.
 *
 * A served instance is a local instance with a broker socket in it. Whoever can read its
 * state (root: DIR/.loopfs is root's, mode 0700) manages it directly, as 'local', under
 * the same locks the broker takes; everybody else — the instance owner, also as root of a
 * user namespace — finds only the socket and goes through the broker.
 */
export function detectKind(dir: string, statfs: (p: string) => NativeStatfs = (p) => native().statfs(p)): InstanceKind | null {
  try {
    if (statfs(dir).type === LOOPFS_SUPER_MAGIC) return 'kernel';
  } catch {
    // DIR missing or unreachable, whatever the reason: not an instance
    return null;
  }
  if (LocalInstance.isInstance(dir)) return 'local';
  try {
    if (lstatSync(`${dir}/${BROKER_SOCKET}`).isSocket()) return 'broker';
  } catch {
    /* no control endpoint */
  }
  return null;
}

/**
 * The names of the devices of the instance at DIR: a container's own (/dev/loopK linking
 * into /dev/loopfs, see device-names.ts) where DIR is the seeds' /dev/loopfs, else none.
 */
export function deviceNamesFor(dir: string, linkDir = '/dev'): DeviceNames {
  return resolvePath(dir) === DEFAULT_INSTANCE ? DeviceNames.read(DEFAULT_INSTANCE, linkDir) : DeviceNames.NONE;
}

export function openScope(dir: string, env: NodeJS.ProcessEnv, statfs?: (p: string) => NativeStatfs): LoopScope {
  const kind = detectKind(dir, statfs);
  switch (kind) {
    case 'kernel':
      return new KernelInstance(dir);
    case 'local':
      return LocalInstance.open(dir, env, deviceNamesFor(dir));
    case 'broker':
      try {
        return BrokeredInstance.connect(dir, undefined, env, deviceNamesFor(dir));
      } catch (e) {
        if (e instanceof BrokerUnavailableError) throw new InstanceError(dir, e.reason);
        throw e;
      }
    default:
      throw new InstanceError(dir, 'not a loop device instance');
  }
}

export function instanceDirFor(instanceArg: string | null, env: NodeJS.ProcessEnv): string | null {
  if (instanceArg !== null) return instanceArg;
  if (env.LOOPFS_INSTANCE) return env.LOOPFS_INSTANCE;
  // existsSync first: on the host the common answer costs one stat, no addon load
  return existsSync(DEFAULT_INSTANCE) && detectKind(DEFAULT_INSTANCE) !== null ? DEFAULT_INSTANCE : null;
}

export function resolveScope(instanceArg: string | null, env: NodeJS.ProcessEnv): LoopScope {
  const dir = instanceDirFor(instanceArg, env);
  return dir === null ? new HostScope() : openScope(dir, env);
}
