/**
 * `loopfs serve`: one privileged process serving one or more local instances, each on its
 * own `DIR/loop-control` SOCK_SEQPACKET socket (src/protocol/broker.ts).
 *
 * Threads: this module owns the event loop and every socket. Listening and accepted
 * sockets are non-blocking and driven by watchFd (uv_poll on node's loop); nothing here
 * blocks. The kernel and instance work of each request runs in the instance's worker
 * thread (worker.ts), which serialises the requests of that instance.
 *
 * Modules: server.ts the server and its served set; endpoint.ts one served instance (its
 * socket, who may connect); connection.ts one client connection (requests, sessions).
 *
 * Live sync (live-sync.ts): the server listens to the kernel's uevents, and every served
 * instance is a sync target, so partitions of its devices appear as DIR/loopNpM and vanish
 * with them, and a device freed by autoclear (umount of a brokered mount) goes back to the
 * pool policy at once, as `loopfs instance watch` does it. The targets follow the served set
 * (`sync(dirs)`). The reconcile runs on this thread under the instance lock (a flock on its
 * own open file, so it serialises with the worker's requests like any other process).
 */
import { resolve as resolvePath } from 'node:path';
import { LocalInstance } from '../instance/local-instance.js';
import { LiveSync, SyncTarget, type SyncOutcome } from '../instance/live-sync.js';
import { Runtime } from '../instance/runtime.js';
import { DEFAULT_ALLOWED_FS } from './ops.js';
import { FUSE_DRIVERS, fuseDriverPath, stopFuseDrivers, type FuseDriver } from '../mounting/fuse-driver.js';
import type { FuseMode } from '../protocol/broker.js';
import { describe } from './connection.js';
import { Endpoint } from './endpoint.js';
import { InstanceWorker } from './worker-api.js';

export interface ServeOptions {
  dirs: string[];
  allowFs?: string[];
  /** Mount through a FUSE driver never, when the client asks (default), or always (`--fuse`). */
  fuseMode?: FuseMode;
  /** Connections per instance; more are refused with EAGAIN. */
  maxConnections?: number;
  env?: NodeJS.ProcessEnv;
  log?: (line: string) => void;
  verbose?: boolean;
  /**
   * Keep the served instances in line with the kernel's uevents (`loopfs serve`). Off by
   * default: `loopfs oci-broker` embeds a server and keeps its instances live itself, with
   * the containers' views.
   */
  live?: boolean;
}

export class ServeError extends Error {}

export interface ServedInstance {
  dir: string;
  id: string;
  socket: string;
  owner: { uid: number; gid: number };
}

export class BrokerServer {
  readonly allowFs: string[];
  readonly fuseMode: FuseMode;
  /** FUSE drivers installed (on PATH) when the broker started. */
  readonly fuseDrivers: FuseDriver[];
  readonly maxConnections: number;
  readonly verbose: boolean;
  readonly log: (line: string) => void;
  private readonly endpoints: Endpoint[] = [];
  readonly env: NodeJS.ProcessEnv;
  private readonly liveWanted: boolean;
  private live: LiveSync | null = null;
  /** The last sync error logged per instance: a broken instance is reported once, not per event. */
  private readonly syncErrors = new Map<string, string>();

  private constructor(opts: ServeOptions) {
    this.allowFs = opts.allowFs ?? DEFAULT_ALLOWED_FS;
    this.fuseMode = opts.fuseMode ?? 'allow';
    this.maxConnections = opts.maxConnections ?? 256;
    this.verbose = opts.verbose ?? false;
    this.log = opts.log ?? ((line) => process.stderr.write(`loopfs serve: ${line}\n`));
    this.env = opts.env ?? process.env;
    this.liveWanted = opts.live === true;
    this.fuseDrivers = (Object.keys(FUSE_DRIVERS) as FuseDriver[]).filter((d) => fuseDriverPath(d, this.env) !== null);
  }

  /** Open every instance and listen on its socket; throws (serving nothing) if any cannot be served. */
  static start(opts: ServeOptions): BrokerServer {
    const server = new BrokerServer(opts);
    try {
      const seen = new Set<string>();
      for (const raw of opts.dirs) {
        const dir = resolvePath(raw);
        if (seen.has(dir)) continue;
        seen.add(dir);
        server.add(dir);
      }
    } catch (e) {
      for (const ep of server.endpoints) ep.closeListener();
      for (const ep of server.endpoints) ep.target?.inst.close();
      void Promise.all(server.endpoints.map((ep) => ep.worker.stop(0)));
      throw e instanceof ServeError ? e : new ServeError(describe(e));
    }
    if (server.liveWanted) server.startLive();
    return server;
  }

  /**
   * Listen to the kernel's uevents for every served instance. A broker that cannot (no
   * netlink socket) still serves; its instances are then settled by requests and gc only.
   */
  private startLive(): void {
    try {
      this.live = LiveSync.start({
        targets: () => this.endpoints.flatMap((ep) => (ep.target ? [ep.target] : [])),
        onChange: (o: SyncOutcome) => {
          this.syncErrors.delete(o.dir);
          for (const f of o.fixes) this.log(`${o.dir}: ${f}`);
        },
        onError: (dir, e) => {
          const msg = describe(e);
          if (this.syncErrors.get(dir) === msg) return;
          this.syncErrors.set(dir, msg);
          this.log(`${dir}: live sync: ${msg}`);
        },
      });
    } catch (e) {
      this.log(`live sync unavailable (instances are settled by requests and gc only): ${describe(e)}`);
      this.live = null;
    }
  }

  /** Resolves once the first live sync of the instances served at start has run. */
  async liveReady(): Promise<void> {
    await this.live?.ready;
  }

  /** Whether the served instances follow the kernel's uevents. */
  get isLive(): boolean {
    return this.live !== null;
  }

  private add(dir: string): void {
    if (this.endpoints.some((ep) => ep.dir === dir)) return;
    let inst: LocalInstance;
    try {
      inst = LocalInstance.open(dir, this.env);
    } catch (e) {
      throw new ServeError(`${dir}: not a loop device instance (${describe(e)})`);
    }
    let id: string;
    let owner: { uid: number; gid: number };
    try {
      const s = inst.state();
      id = s.id;
      owner = s.owner;
    } finally {
      inst.close();
    }
    const env: Record<string, string | undefined> = {};
    for (const k of ['LOOPFS_RUNTIME_DIR', 'LOOPFS_LIMITS']) env[k] = this.env[k];
    for (const k of ['PATH']) env[k] = this.env[k];
    const worker = new InstanceWorker({ dir, id, allowFs: this.allowFs, fuseMode: this.fuseMode, env }, this.log);
    // the live-sync target keeps its own open of DIR (pinned, as the worker's are)
    const target = this.liveWanted ? new SyncTarget(LocalInstance.open(dir, this.env), [], { refill: false, env: this.env }) : null;
    const ep = new Endpoint(this, dir, id, owner, worker, target);
    try {
      ep.listen(); // the worker thread starts with the first request: nothing to stop on failure
    } catch (e) {
      target?.inst.close();
      throw e;
    }
    this.endpoints.push(ep);
    // sessions of a broker that died (SIGKILL) before us: settled before we serve anything
    // new of this instance (the worker runs requests in order)
    this.recovering.push(
      worker.call({ op: 'recover' }).then(
        (minors) => {
          if (minors.length) this.log(`${dir}: settled ${minors.length} device(s) of a previous broker's sessions: ${minors.map((m) => `loop${m}`).join(' ')}`);
        },
        (e) => this.log(`${dir}: settling a previous broker's sessions: ${describe(e)}`),
      ),
    );
  }

  private readonly recovering: Promise<void>[] = [];

  /** Resolves once the sessions a previous broker left (sessions.ts) are settled. */
  async recovered(): Promise<void> {
    await Promise.all(this.recovering);
  }

  /**
   * Serve exactly `dirs` from now on (`loopfs serve --all` on SIGHUP): start serving new
   * instances, stop serving those no longer listed or whose DIR now holds no instance or
   * another one. An instance that cannot be served is reported and skipped.
   */
  async sync(dirs: string[]): Promise<{ added: string[]; removed: string[]; failed: string[] }> {
    const want = new Set(dirs.map((d) => resolvePath(d)));
    const added: string[] = [];
    const removed: string[] = [];
    const failed: string[] = [];
    for (const ep of [...this.endpoints]) {
      if (want.has(ep.dir) && currentId(ep.dir, this.env) === ep.id) continue;
      await this.remove(ep);
      removed.push(ep.dir);
    }
    for (const dir of want) {
      if (this.endpoints.some((ep) => ep.dir === dir)) continue;
      try {
        this.add(dir);
        added.push(dir);
      } catch (e) {
        // a ServeError names the dir already (add(), Endpoint.listen())
        failed.push(e instanceof ServeError ? e.message : `${dir}: ${describe(e)}`);
      }
    }
    // an instance served from now on is looked at at once, as the ones served at start were
    if (added.length > 0) this.live?.resyncAll();
    return { added, removed, failed };
  }

  private async remove(ep: Endpoint): Promise<void> {
    ep.closeListener();
    for (const c of [...ep.connections]) c.close();
    this.endpoints.splice(this.endpoints.indexOf(ep), 1);
    // no longer a target from here on (targets() reads the endpoints)
    ep.target?.inst.close();
    this.syncErrors.delete(ep.dir);
    await ep.worker.stop(10_000);
  }

  get instances(): ServedInstance[] {
    return this.endpoints.map((ep) => ({ dir: ep.dir, id: ep.id, socket: ep.socketPath, owner: ep.owner }));
  }

  get connectionCount(): number {
    return this.endpoints.reduce((n, ep) => n + ep.connections.size, 0);
  }

  /**
   * Stop accepting, end every connection (their sessions are released), stop the workers,
   * and end the FUSE drivers still serving mounts (those mounts fail from then on).
   */
  async stop(timeoutMs = 10_000): Promise<void> {
    this.live?.close();
    this.live = null;
    for (const ep of this.endpoints) ep.target?.inst.close();
    for (const ep of this.endpoints) ep.closeListener();
    for (const ep of this.endpoints) for (const c of [...ep.connections]) c.close();
    await Promise.all(this.endpoints.map((ep) => ep.worker.stop(timeoutMs)));
    await stopFuseDrivers();
  }
}

/** The id of the instance in DIR now, or null. */
function currentId(dir: string, env: NodeJS.ProcessEnv): string | null {
  try {
    const inst = LocalInstance.open(dir, env);
    try {
      return inst.state().id;
    } finally {
      inst.close();
    }
  } catch {
    // no instance in DIR now, or an unreadable one: either way not the one we serve
    return null;
  }
}

/** Directories of every registered instance (`loopfs serve --all`). */
export function registeredInstanceDirs(env: NodeJS.ProcessEnv = process.env): string[] {
  const rt = Runtime.open(env);
  try {
    return rt.instances().map((e) => e.dir);
  } finally {
    rt.close();
  }
}
