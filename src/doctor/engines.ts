/**
 * Which container engines know the runtime `loopfs` (bin/loopfs-runtime), and whether the
 * seccomp agent that its containers' trapped mount(2) goes to is listening. The files
 * looked at are the ones `loopfs install --runtime` edited (from its record), else each
 * engine's default: /etc/docker/daemon.json, /etc/containerd/config.toml, podman's
 * containers.conf files and drop-ins.
 *
 * The wrapper points every opted-in container's seccomp listener at RUNTIME/seccomp.sock,
 * and runc refuses to start a container whose listener nobody accepts: a registered
 * runtime without the agent is a failure, not a warning.
 */
import { existsSync, readFileSync } from 'node:fs';
import { hasCode } from '../kernel/errors.js';
import { native } from '../kernel/native.js';
import { seccompSocketPath } from '../oci/agent-contract.js';
import {
  containerdRegistration,
  DEFAULT_CONTAINERD_CONFIG,
  DEFAULT_DOCKER_CONFIG,
  dockerRegistration,
  ENGINES,
  findExecutables,
  podmanConfFiles,
  podmanRegistration,
  type Engine,
} from '../install/engines.js';
import { defaultRecord, readRecord } from '../install/install.js';
import type { Check } from './check.js';

const DAEMONS: Record<Engine, string> = { docker: 'dockerd', containerd: 'containerd', podman: 'podman' };

interface EngineState {
  engine: Engine;
  /** The files looked at. */
  files: string[];
  /** Where the runtime is registered and the wrapper it names; null: not registered. */
  found: { file: string; wrapper: string } | null;
}

function registration(engine: Engine, text: string): string | null {
  if (engine === 'docker') return dockerRegistration(text);
  if (engine === 'containerd') return containerdRegistration(text);
  return podmanRegistration(text);
}

function engineState(engine: Engine, recorded: string | undefined, env: NodeJS.ProcessEnv): EngineState | null {
  const files = recorded
    ? [recorded]
    : engine === 'docker'
      ? [DEFAULT_DOCKER_CONFIG]
      : engine === 'containerd'
        ? [DEFAULT_CONTAINERD_CONFIG]
        : podmanConfFiles();
  // an engine that is neither installed nor configured here is none of our business
  if (!recorded && findExecutables(DAEMONS[engine], env).length === 0 && !files.some((f) => existsSync(f))) return null;
  for (const file of files) {
    let text: string;
    try {
      text = readFileSync(file, 'utf8');
    } catch {
      // a config file that is missing or unreadable registers nothing
      continue;
    }
    const wrapper = registration(engine, text);
    if (wrapper !== null) return { engine, files, found: { file, wrapper } };
  }
  return { engine, files, found: null };
}

/** Whether the agent accepts a connection; null when we may not try (not root). */
function agentListens(socket: string): boolean | null {
  const n = native();
  let fd: number;
  try {
    fd = n.streamConnect(socket);
  } catch (e) {
    if (hasCode(e, 'ECONNREFUSED', 'ENOENT')) return false;
    if (hasCode(e, 'EACCES', 'EPERM')) return null;
    throw e;
  }
  n.close(fd); // a bare connect and close: the agent takes it for a question, not a handshake
  return true;
}

export const enginesCheck: Check = {
  id: 'engines',
  title: 'container engines',
  run(ctx) {
    const rec = readRecord(defaultRecord(ctx.env));
    const recorded = (e: Engine) =>
      rec?.changes.find((c) => (c.kind === 'edit' || c.kind === 'file') && c.subject === e)?.path;
    const states = ENGINES.map((e) => engineState(e, recorded(e), ctx.env)).filter((s): s is EngineState => s !== null);
    if (states.length === 0) return { status: 'skip', detail: `no container engine here (${ENGINES.join(', ')})` };

    const socket = seccompSocketPath(ctx.env);
    const listening = agentListens(socket);
    const items = states.map((s) =>
      s.found
        ? `${s.engine}: runtime loopfs registered in ${s.found.file} (${s.found.wrapper}${existsSync(s.found.wrapper) ? '' : ': missing'})`
        : `${s.engine}: not registered (${s.files.length > 0 ? s.files.join(', ') : 'no configuration file'})`,
    );
    items.push(
      listening === true
        ? `seccomp agent: listening on ${socket}`
        : listening === false
          ? `seccomp agent: not listening on ${socket}`
          : `seccomp agent: ${socket} is not ours to try (needs root)`,
    );

    const registered = states.filter((s) => s.found);
    const broken = registered.filter((s) => !existsSync(s.found!.wrapper));
    const names = (l: EngineState[]) => l.map((s) => s.engine).join(',');
    if (broken.length > 0) {
      return {
        status: 'fail',
        detail: `runtime loopfs names a wrapper that is gone (${names(broken)}): containers run with --runtime loopfs fail to start`,
        items,
        fix: { command: `loopfs uninstall && loopfs install --runtime ${names(broken)}`, safe: false },
      };
    }
    if (registered.length > 0 && listening === false) {
      return {
        status: 'fail',
        detail: `runtime loopfs is registered (${names(registered)}) but the seccomp agent is not listening: containers that ask for an instance fail to start`,
        items,
        // starting the daemon is the admin's decision (contrib/loopfs-oci-broker.service or not)
        fix: { command: 'loopfs oci-broker', safe: false },
      };
    }
    if (registered.length === 0) {
      return {
        status: 'warn',
        detail: `runtime loopfs is not registered with ${names(states).replace(/,/g, ', ')}: their containers cannot ask for an instance through it`,
        items,
        fix: { command: `loopfs install --runtime ${names(states)}`, safe: false },
      };
    }
    const where = registered.map((s) => `${s.engine} (${s.found!.file})`).join(', ');
    return { status: 'ok', detail: `runtime loopfs registered with ${where}${listening ? '; the seccomp agent is listening' : ''}`, items };
  },
};
