/**
 * The OCI broker: how a rootless container gets a private instance.
 *
 * A rootless runtime runs its hooks as the user (root of the user's own user namespace):
 * they cannot make device nodes, claim devices or serve a broker. So one root process,
 * `loopfs oci-broker`, does for them exactly what the rootful hook does for itself, and
 * nothing more:
 *
 *   create   the hook connects to RUNTIME/oci.sock and passes a pidfd of the container's
 *            init. The caller's uid comes from SO_PEERCRED, the container's init from the
 *            pidfd (both kernel-verified, nothing the client says about itself is used);
 *            the init must belong to that uid. The instance RUNTIME/oci/UID/ID is owned by
 *            UID (the container's root as mapped on the host: the hook runs as it), its
 *            pool is reserved, and it is served on DIR/loop-control by the broker in this
 *            process (BrokerServer), so the container's tools reach it unprivileged.
 *   destroy  (poststop) only RUNTIME/oci/UID/* of the caller's own uid.
 *   exit     the pidfd becomes readable when the container's init dies: the instance is
 *            destroyed then too, also when poststop never runs (runtime killed).
 *
 * live     every running container's /dev follows its instance (live-sync.ts, ContainerView):
 *            on each kernel uevent about a loop device or partition, the instances holding
 *            it are reconciled (gc's routine), their pools refilled, and the container gets
 *            /dev/loopK and /dev/loopKpM for what came and loses what left. Rootless
 *            instances are the ones served here; rootful ones (RUNTIME/oci/0/ID, made by the
 *            hook) are found by listing RUNTIME/oci at each batch of events (a few readdirs:
 *            an event about a device of a new container is the first moment its view can
 *            change). No timer: without events the broker does not wake up.
 *
 * The same process is the seccomp agent (seccomp-agent.ts) on RUNTIME/seccomp.sock: the
 * runtime of any container whose profile sends mount(2) there hands it the listener, and
 * the container's `mount -o loop` of its instance devices is performed for it.
 *
 * Limits: the per-uid device limit (/etc/loopfs/limits) applies as for every instance;
 * at most `maxInstances` instances per uid; pools are capped by the annotation policy.
 * Why not a broker socket per user, or `instance create` by the admin: an instance per
 * *container* (disjoint devices, cleaned up with it) needs somebody privileged at every
 * container start; this is the smallest such somebody, with one request type each way.
 */
import { mkdirSync, statSync, unlinkSync } from 'node:fs';
import { hasCode } from '../kernel/errors.js';
import { native, type FdWatcher, type PeerCred } from '../kernel/native.js';
import { pidOfPidfd } from '../kernel/process.js';
import { LocalInstance } from '../instance/local-instance.js';
import { runtimeDir } from '../instance/runtime.js';
import { BrokerServer } from '../broker/server.js';
import { CONTAINER_ID, OciError } from './bundle.js';
import { createContainerInstance, destroyContainerInstance } from './container-instance.js';
import { MAX_POOL, type Policy } from './policy.js';
import { refuseNodevRuntime } from './container-dev.js';
import { containerAlive, containerDirs, instanceDirFor, makeParent, ociRoot, processStartTime, readRecord } from './record.js';
import { DEFAULT_ALLOWED_FS } from '../broker/ops.js';
import { seccompSocketPath } from './agent-contract.js';
import { SeccompAgent, type AgentLimits } from './seccomp-agent.js';
import { AcceptLoop } from '../protocol/accept-loop.js';
import { LiveSync, SyncTarget } from '../instance/live-sync.js';
import { ContainerGoneError, ContainerView } from './container-view.js';

export const OCI_SOCKET = 'oci.sock';
const MAX_REQUEST = 4096;

export function ociSocketPath(env: NodeJS.ProcessEnv = process.env): string {
  return `${runtimeDir(env)}/${OCI_SOCKET}`;
}

export type OciRequest =
  | { op: 'create'; container: string; max: number | null; pool: number }
  | { op: 'destroy'; container: string };

export type OciReply = { ok: true; dir?: string; nodes?: string[] } | { ok: false; error: string };

// ------------------------------------------------------------------ client (the rootless hook)

/** One request, one reply, on a fresh connection (blocking: the hook has nothing else to do). */
export function ociRequest(req: OciRequest, fds: number[], env: NodeJS.ProcessEnv = process.env): OciReply {
  const n = native();
  const path = ociSocketPath(env);
  let fd: number;
  try {
    fd = n.seqpacketConnect(path);
  } catch (e) {
    if (hasCode(e, 'ENOENT', 'ECONNREFUSED')) {
      throw new OciError(`no loopfs OCI broker at ${path}: rootless containers need 'loopfs oci-broker' running as root`);
    }
    throw e;
  }
  try {
    n.sendMsg(fd, Buffer.from(JSON.stringify(req)), fds);
    const m = n.recvMsg(fd, MAX_REQUEST * 4, 0);
    if (!m || m.eof) throw new OciError(`${path}: the OCI broker closed the connection`);
    return JSON.parse(m.data.toString('utf8')) as OciReply;
  } finally {
    n.close(fd);
  }
}

// ------------------------------------------------------------------ server

export interface OciBrokerOptions {
  maxInstances?: number;
  env?: NodeJS.ProcessEnv;
  /** Bounds of a seccomp agent handshake (tests). */
  agentLimits?: Partial<AgentLimits>;
  log?: (line: string) => void;
}

interface Watched {
  pidfd: number;
  watcher: FdWatcher;
}

/** A container whose /dev the broker keeps in sync with its instance. */
interface LiveContainer {
  requester: number;
  inst: LocalInstance;
  view: ContainerView;
  target: SyncTarget;
}

export class OciBroker {
  private listenFd = -1;
  private acceptLoop: AcceptLoop | null = null;
  private agent: SeccompAgent | null = null;
  private readonly agentLimits: Partial<AgentLimits>;
  private readonly watched = new Map<string, Watched>();
  private live: LiveSync | null = null;
  private readonly liveContainers = new Map<string, LiveContainer>();
  private queue: Promise<void> = Promise.resolve();
  private readonly env: NodeJS.ProcessEnv;
  private readonly maxInstances: number;
  readonly log: (line: string) => void;

  private constructor(
    private readonly server: BrokerServer,
    opts: OciBrokerOptions,
  ) {
    this.env = opts.env ?? process.env;
    this.maxInstances = opts.maxInstances ?? 16;
    this.agentLimits = opts.agentLimits ?? {};
    this.log = opts.log ?? ((l) => process.stderr.write(`loopfs oci-broker: ${l}\n`));
  }

  static async start(opts: OciBrokerOptions = {}): Promise<OciBroker> {
    const env = opts.env ?? process.env;
    const server = BrokerServer.start({ dirs: [], env, log: opts.log });
    const b = new OciBroker(server, opts);
    await b.adoptExisting();
    b.listen();
    b.startLive();
    await b.live!.ready;
    return b;
  }

  /** Keep containers' /dev live: the first sync (every container) runs at once. */
  private startLive(): void {
    this.live = LiveSync.start({
      targets: () => this.liveTargets(),
      onError: (dir, e) => {
        // ended, or destroyed by its poststop meanwhile: nothing to report
        if (e instanceof ContainerGoneError || hasCode(e, 'ENOENT')) this.forget(dir);
        else this.log(`live sync of ${dir}: ${(e as Error).message}`);
      },
    });
  }

  /**
   * The containers to keep in sync now: the rootless instances served here and every
   * rootful one (found again at each call: the hook makes them without telling us), each
   * only while its init runs. Cheap: a readdir per uid and a record read per new directory.
   */
  private liveTargets(): SyncTarget[] {
    const dirs = new Set<string>();
    for (const c of containerDirs(this.env)) {
      if (c.requester !== 0 && !this.watched.has(c.dir)) continue; // being created, or not ours
      dirs.add(c.dir);
      if (!this.liveContainers.has(c.dir)) this.adoptLive(c.dir, c.requester);
    }
    const out: SyncTarget[] = [];
    for (const [dir, lc] of this.liveContainers) {
      if (!dirs.has(dir) || !lc.view.alive()) this.forget(dir);
      else out.push(lc.target);
    }
    return out;
  }

  /** Start keeping DIR's container /dev in sync, when its record names a running init. */
  private adoptLive(dir: string, requester: number): void {
    const r = readRecord(dir);
    if (!r || !containerAlive(r) || !LocalInstance.isInstance(dir)) return; // gone, or still being made: next time
    let inst: LocalInstance;
    try {
      inst = LocalInstance.open(dir, this.env);
    } catch {
      // the instance is being destroyed or half made (ENOENT, a lock refused): nothing to keep live now; the next sync looks again
      return;
    }
    // rootful: the hook granted the pool in the device cgroup (v1), the view grants the rest
    const view = new ContainerView({ pid: r.pid, startTime: r.startTime, deviceCgroup: requester === 0 });
    const target = new SyncTarget(inst, [view], { refill: true, env: this.env });
    this.liveContainers.set(dir, { requester, inst, view, target });
  }

  /** Stop keeping DIR in sync (its container ended, or its instance is being destroyed). */
  private forget(dir: string): void {
    const lc = this.liveContainers.get(dir);
    if (!lc) return;
    this.liveContainers.delete(dir);
    lc.view.close();
    lc.inst.close();
  }

  get socketPath(): string {
    return ociSocketPath(this.env);
  }

  /** Instances left by a previous run: serve those whose container runs, destroy the rest. */
  private async adoptExisting(): Promise<void> {
    for (const c of containerDirs(this.env)) {
      if (c.requester === 0) continue; // the rootful hook's: not ours to serve
      const r = readRecord(c.dir);
      let pidfd = -1;
      if (r && containerAlive(r)) {
        try {
          pidfd = native().pidfdOpen(r.pid);
        } catch {
          // ESRCH: the init exited after the check; treated as a vanished container
          pidfd = -1;
        }
      }
      // the start time is checked again with the pidfd open: it pins the process
      if (pidfd >= 0 && r && processStartTime(r.pid) === r.startTime) {
        this.watch(c.dir, pidfd);
      } else {
        if (pidfd >= 0) native().close(pidfd);
        destroyContainerInstance(c.dir, this.env);
        this.log(`destroyed ${c.dir}: its container is gone`);
      }
    }
    await this.syncServed();
  }

  private listen(): void {
    const n = native();
    mkdirSync(runtimeDir(this.env), { recursive: true, mode: 0o755 });
    // anybody may ask: who they are is what SO_PEERCRED says, and they get only their own
    const agentFd = listenFresh(seccompSocketPath(this.env), 'OCI broker', n.streamConnect, n.streamListen);
    try {
      this.listenFd = listenFresh(this.socketPath, 'OCI broker', n.seqpacketConnect, n.seqpacketListen);
    } catch (e) {
      n.close(agentFd);
      unlinkQuiet(seccompSocketPath(this.env));
      throw e;
    }
    this.agent = new SeccompAgent(agentFd, { env: this.env, allowFs: DEFAULT_ALLOWED_FS, log: this.log, limits: this.agentLimits });
    this.acceptLoop = new AcceptLoop(this.listenFd, {
      accept: (fd) => n.seqpacketAccept(fd),
      onConnection: (fd, peer) => this.admit(fd, peer),
      log: this.log,
    });
  }

  private admit(fd: number, cred: PeerCred): void {
    const n = native();
    let w: FdWatcher | null = null;
    w = n.watchFd(fd, () => {
      w?.close();
      let m;
      try {
        m = n.recvMsg(fd, MAX_REQUEST, 1);
      } catch {
        // the hook went away (ECONNRESET) or sent garbage: its request is dropped with the connection
        n.close(fd);
        return;
      }
      if (!m || m.eof) {
        for (const f of m?.fds ?? []) n.close(f);
        n.close(fd);
        return;
      }
      this.enqueue(async () => {
        let reply: OciReply;
        try {
          reply = await this.handle(cred, m.data, m.fds);
        } catch (e) {
          reply = { ok: false, error: (e as Error).message };
        }
        try {
          n.sendMsg(fd, Buffer.from(JSON.stringify(reply)), []);
        } catch {
          /* the hook is gone: what it asked for is settled by the pidfd watch */
        }
        n.close(fd);
      });
    });
  }

  /** Requests run one at a time: each changes instances and the served set. */
  private enqueue(fn: () => Promise<void>): void {
    this.queue = this.queue.then(fn, fn).catch((e) => this.log(`internal error: ${(e as Error).message}`));
  }

  private async handle(cred: PeerCred, data: Buffer, fds: number[]): Promise<OciReply> {
    const n = native();
    let pidfd = -1;
    try {
      const req = parseRequest(data);
      if (req.op === 'destroy') {
        for (const f of fds) n.close(f);
        const dir = instanceDirFor(cred.uid, req.container, this.env);
        if (readRecord(dir)?.container === req.container) await this.destroy(dir, 'poststop');
        return { ok: true };
      }
      if (fds.length !== 1) throw new OciError('create: expected a pidfd of the container init');
      pidfd = fds[0];
      const pid = pidOfPidfd(pidfd);
      if (pid === null) throw new OciError('create: the passed fd is not a pidfd');
      // the container's init must be the caller's: its root is the caller, mapped
      if (pid <= 0 || statSync(`/proc/${pid}`).uid !== cred.uid) {
        throw new OciError(`create: the container init is not a process of uid ${cred.uid}`);
      }
      makeParent(cred.uid, this.env);
      refuseNodevRuntime('a rootless container', this.env, `${ociRoot(this.env)}/${cred.uid}`);
      const mine = containerDirs(this.env).filter((c) => c.requester === cred.uid).length;
      if (mine >= this.maxInstances) throw new OciError(`uid ${cred.uid}: limit of ${this.maxInstances} container instances reached`);
      const policy: Policy = { max: req.max, pool: req.pool };
      const made = createContainerInstance(
        { requester: cred.uid, container: req.container, pid, owner: { uid: cred.uid, gid: cred.gid }, policy },
        this.env,
      );
      this.watch(made.dir, pidfd);
      pidfd = -1;
      const r = await this.syncServed();
      if (!r.served.includes(made.dir)) {
        await this.destroy(made.dir, 'not servable');
        const why = r.failed.find((f) => f.startsWith(`${made.dir}: `))?.slice(made.dir.length + 2);
        throw new OciError(`${made.dir}: cannot be served${why ? `: ${why}` : ''}`);
      }
      // its /dev is the hook's to set up now; the next event about its devices finds it
      this.log(`uid ${cred.uid}: container ${req.container}: ${made.dir} (${made.nodes.join(' ') || 'no devices'})`);
      return { ok: true, dir: made.dir, nodes: made.nodes };
    } finally {
      if (pidfd >= 0) n.close(pidfd);
    }
  }

  /** Destroy the instance when the container's init exits (pidfd readable). */
  private watch(dir: string, pidfd: number): void {
    const watcher = native().watchFd(pidfd, () => {
      watcher.close();
      this.enqueue(() => this.destroy(dir, 'container exited'));
    });
    this.watched.set(dir, { pidfd, watcher });
  }

  private async destroy(dir: string, why: string): Promise<void> {
    // no mount is performed into a container whose instance is going, nor its /dev synced
    this.agent?.closeContainer(dir);
    this.forget(dir);
    const w = this.watched.get(dir);
    if (w) {
      w.watcher.close();
      native().close(w.pidfd);
      this.watched.delete(dir);
    }
    await this.syncServed();
    if (readRecord(dir) || LocalInstance.isInstance(dir)) {
      const r = destroyContainerInstance(dir, this.env);
      this.log(`destroyed ${dir} (${why})${r?.deferred.length ? `; still in use: ${r.deferred.map((m) => `loop${m}`).join(' ')}` : ''}`);
    }
  }

  /** Serve exactly the watched instances. Returns the directories served, and failures. */
  private async syncServed(): Promise<{ served: string[]; failed: string[] }> {
    const r = await this.server.sync([...this.watched.keys()]);
    for (const f of r.failed) this.log(`cannot serve ${f}`);
    return { served: this.server.instances.map((i) => i.dir), failed: r.failed };
  }

  async stop(): Promise<void> {
    this.live?.close();
    this.live = null;
    for (const dir of [...this.liveContainers.keys()]) this.forget(dir);
    if (this.agent) {
      // its listeners close with it: the containers' trapped mounts fail with ENOSYS from now on
      this.agent.stop();
      this.agent = null;
      unlinkQuiet(seccompSocketPath(this.env));
    }
    this.acceptLoop?.close();
    this.acceptLoop = null;
    if (this.listenFd >= 0) {
      native().close(this.listenFd);
      this.listenFd = -1;
      try {
        unlinkSync(this.socketPath);
      } catch {
        /* gone */
      }
    }
    await this.queue;
    // Instances stay: their containers run on; a restarted broker adopts them again
    for (const w of this.watched.values()) {
      w.watcher.close();
      native().close(w.pidfd);
    }
    this.watched.clear();
    await this.server.stop();
  }
}

/**
 * Listen on `path` (mode 0666) unless a live daemon answers there; a stale socket of a
 * killed one (nobody answers) is replaced.
 */
function listenFresh(path: string, what: string, connect: (p: string) => number, listen: (p: string, backlog: number, mode: number) => number): number {
  try {
    native().close(connect(path));
    throw new OciError(`${path}: another ${what} is running`);
  } catch (e) {
    if (e instanceof OciError) throw e;
    if (!hasCode(e, 'ENOENT', 'ECONNREFUSED')) throw e;
  }
  unlinkQuiet(path);
  return listen(path, 64, 0o666);
}

function unlinkQuiet(path: string): void {
  try {
    unlinkSync(path);
  } catch (e) {
    if (!hasCode(e, 'ENOENT')) throw e;
  }
}

function parseRequest(data: Buffer): OciRequest {
  let doc: Record<string, unknown>;
  try {
    doc = JSON.parse(data.toString('utf8')) as Record<string, unknown>;
  } catch {
    throw new OciError('request is not JSON');
  }
  const container = doc?.container;
  if (typeof container !== 'string' || !CONTAINER_ID.test(container)) throw new OciError('invalid container id');
  if (doc.op === 'destroy') return { op: 'destroy', container };
  if (doc.op !== 'create') throw new OciError('unknown request');
  const max = doc.max === null || doc.max === undefined ? null : doc.max;
  const pool = doc.pool;
  const count = (v: unknown, upTo: number) => typeof v === 'number' && Number.isInteger(v) && v >= 0 && v <= upTo;
  if ((max !== null && !count(max, 1 << 20)) || !count(pool, MAX_POOL)) throw new OciError('invalid max or pool');
  if (max !== null && (pool as number) > (max as number)) throw new OciError('pool exceeds max');
  return { op: 'create', container, max: max as number | null, pool: pool as number };
}

