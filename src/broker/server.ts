/**
 * `loopfs serve`: one privileged process serving one or more local instances, each on its
 * own `DIR/loop-control` SOCK_SEQPACKET socket (src/protocol/broker.ts).
 *
 * Threads: this module owns the event loop and every socket. Listening and accepted
 * sockets are non-blocking and driven by watchFd (uv_poll on node's loop); nothing here
 * blocks. The kernel and instance work of each request runs in the instance's worker
 * thread (worker.ts), which serialises the requests of that instance.
 *
 * Who may connect: the socket file is owned by the instance owner, mode 0600, and the
 * broker checks SO_PEERCRED at accept as well (uid 0 or the owner). An instance is one
 * tenant; its owner is that tenant (for a container: the host uid its root maps to), so
 * nobody else has any business with its devices, and 0666 would let every local user
 * allocate against the owner's quota and list the owner's files. The group is not
 * trusted: SO_PEERCRED shows only the primary gid, so group access could not be checked
 * the way connect(2) checks it.
 *
 * Per connection, at most one request is in flight: while the worker runs it, the socket
 * is not read (its watcher is closed), so a client that pipelines requests is served in
 * order and one that floods fills only its own socket buffer. A reply the client does not
 * read (EAGAIN) or cannot receive (EPIPE) ends the connection. Protocol violations get an
 * error reply; MAX_VIOLATIONS of them end the connection.
 *
 * Slow and stalled clients. SOCK_SEQPACKET delivers a request whole or not at all, so there
 * is no partial request to wait for and no read timeout to keep: a client that stops
 * sending costs one idle connection. Idle connections are legitimate (session devices
 * live as long as their connection) and are bounded by --max-connections per instance;
 * only the instance owner and root can open them. A client that stops reading fills its
 * own receive queue: the next reply fails with EAGAIN and the connection is ended (its
 * sessions released). Nothing a client does blocks the event loop or another connection.
 * The other direction — a broker that never answers — is bounded on the client side
 * (BrokerScope: SO_RCVTIMEO, $LOOPFS_BROKER_TIMEOUT).
 *
 * Sessions: devices attached or found with `session: true` are detached and released when
 * the connection ends, however it ends (client exit, crash, SIGKILL, broker shutdown).
 * Autoclear attaches are held open by the connection (a holder fd), so they stay bound
 * until the connection ends or something else (a mount) holds them.
 *
 * Live sync (live-sync.ts): the server listens to the kernel's uevents, and every served
 * instance is a sync target, so partitions of its devices appear as DIR/loopNpM and vanish
 * with them, and a device freed by autoclear (umount of a brokered mount) goes back to the
 * pool policy at once, as `loopfs instance watch` does it. The targets follow the served set
 * (`sync(dirs)`). The reconcile runs on this thread under the instance lock (a flock on its
 * own open file, so it serialises with the worker's requests like any other process).
 */
import { resolve as resolvePath } from 'node:path';
import { hasCode, isSysError } from '../kernel/errors.js';
import { native, type FdWatcher, type PeerCred, type RecvMsgResult } from '../kernel/native.js';
import { LocalInstance } from '../instance/local-instance.js';
import { LiveSync, SyncTarget, type SyncOutcome } from '../instance/live-sync.js';
import { PinnedDir } from '../instance/pinned-dir.js';
import { Runtime } from '../instance/runtime.js';
import { DEFAULT_ALLOWED_FS, type MountOutcome } from './ops.js';
import { FUSE_DRIVERS, fuseDriverPath, FuseDriverError, startFuseDriver, stopFuseDrivers, type FuseDriver } from '../mounting/fuse-driver.js';
import {
  BROKER_SOCKET,
  decodeRequest,
  encodeMessage,
  errorReply,
  LIST_PAGE_BYTES,
  MAX_MESSAGE_BYTES,
  MAX_MESSAGE_FDS,
  okReply,
  opsOf,
  PROTOCOL_VERSION,
  ProtocolError,
  type DeviceEntry,
  type ErrorBody,
  type FuseMode,
  type ListReply,
  type Request,
} from '../protocol/broker.js';
import { AcceptLoop } from '../protocol/accept-loop.js';
import { InstanceWorker, WorkerError } from './worker-api.js';

/** Protocol violations after which a connection is closed. */
export const MAX_VIOLATIONS = 8;
/** Datagrams read per readable event before yielding to other connections. */
const READ_BURST = 16;
const LISTEN_BACKLOG = 128;
/** How long, and how many, refused connections stay open so the client can read why. */
const REFUSED_LINGER_MS = 500;
const REFUSED_LINGER_MAX = 128;

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

/** One served instance: its socket, its worker, its connections. */
class Endpoint {
  listenFd = -1;
  private acceptLoop: AcceptLoop | null = null;
  socketIno = 0n;
  readonly connections = new Set<Connection>();
  private lingering = 0;

  constructor(
    readonly server: BrokerServer,
    readonly dir: string,
    readonly id: string,
    readonly owner: { uid: number; gid: number },
    readonly worker: InstanceWorker,
    /** The live-sync target of this instance (its own open of DIR), null without live sync. */
    readonly target: SyncTarget | null,
  ) {}

  get socketPath(): string {
    return `${this.dir}/${BROKER_SOCKET}`;
  }

  listen(): void {
    const n = native();
    const root = PinnedDir.open(this.dir);
    try {
      // The broker acts as root on names inside DIR: only a DIR that nobody but root can
      // change is safe to serve (no planted symlinks, no swapped nodes).
      const st = n.fstat(root.fd);
      if (st.uid !== 0 || (st.mode & 0o022) !== 0) {
        throw new ServeError(`${this.dir}: must be owned by root and not writable by group or others to be served`);
      }
      const existing = root.lstat(BROKER_SOCKET);
      if (existing) {
        if ((existing.mode & n.constants.S_IFMT) !== n.constants.S_IFSOCK) {
          throw new ServeError(`${this.socketPath} exists and is not a socket`);
        }
        // a live broker answers; a stale socket (a broker that was killed) refuses
        let fd = -1;
        try {
          fd = n.seqpacketConnect(this.socketPath);
        } catch (e) {
          if (!hasCode(e, 'ECONNREFUSED')) throw e;
        }
        if (fd >= 0) {
          n.close(fd);
          throw new ServeError(`${this.dir}: already served by another broker`);
        }
        // the stale socket stays until the new one is renamed over it: a client never finds
        // DIR without its loop-control (and takes DIR for no instance at all)
      }
      // made under a temporary name, 0600 root-only, then handed to the owner and renamed
      // into place: never reachable by anybody else, never missing while we start
      // (no longer than the final name: a socket path has 107 bytes at most)
      const temp = `.lc.${process.pid}`;
      root.unlinkQuiet(temp); // a killed broker's of the same pid
      this.listenFd = n.seqpacketListen(`${this.dir}/${temp}`, LISTEN_BACKLOG, 0o600);
      try {
        n.fchownat(root.fd, temp, this.owner.uid, this.owner.gid);
        this.socketIno = root.lstat(temp)!.ino;
        root.rename(temp, BROKER_SOCKET);
      } catch (e) {
        n.close(this.listenFd);
        this.listenFd = -1;
        root.unlinkQuiet(temp);
        throw e;
      }
    } finally {
      root.close();
    }
    this.watch();
  }

  private watch(): void {
    this.acceptLoop = new AcceptLoop(this.listenFd, {
      label: this.dir,
      accept: (fd) => native().seqpacketAccept(fd),
      onConnection: (fd) => this.admit(fd),
      log: (line) => this.server.log(line),
    });
  }

  private admit(fd: number): void {
    const n = native();
    let cred: PeerCred;
    try {
      cred = n.peerCred(fd);
    } catch {
      n.close(fd);
      return;
    }
    const refuse = (error: ErrorBody) => {
      try {
        n.sendMsg(fd, encodeMessage(errorReply(null, error)), []);
      } catch {
        /* gone already */
      }
      this.linger(fd);
    };
    if (cred.uid !== 0 && cred.uid !== this.owner.uid) {
      this.server.log(`${this.dir}: refused uid ${cred.uid} (pid ${cred.pid}): not the owner`);
      refuse({ code: 'EACCES', kind: 'denied', message: `only the instance owner (uid ${this.owner.uid}) and root may use this broker` });
      return;
    }
    if (this.connections.size >= this.server.maxConnections) {
      refuse({ code: 'EAGAIN', kind: 'denied', message: 'the broker has too many connections; try again' });
      return;
    }
    const conn = new Connection(this, fd, cred);
    this.connections.add(conn);
    conn.start();
  }

  /**
   * A device was just handed to `conn` (attach, get-free) or detached (conn null): it is
   * nobody else's session device any more. get-free does not bind, so an idle device one
   * connection found may be bound by the next attach of another: the attach wins, and the
   * first connection's end must not detach it.
   */
  handedOut(minor: number, conn: Connection | null, session: boolean): void {
    for (const c of this.connections) if (c !== conn) c.markSession(minor, false);
    conn?.markSession(minor, session);
  }

  /** Close every connection's holder fds of a device; whether any existed. */
  dropHolders(minor: number): boolean {
    let any = false;
    for (const c of this.connections) any = c.dropHolders(minor) || any;
    return any;
  }

  /**
   * Close a refused connection without losing the reason we sent. Closing a unix socket
   * with unread data makes the peer's next recv fail with ECONNRESET *before* it sees
   * queued messages, and the client's hello is usually in flight. So: shut it down (the
   * client reads the reason, then end-of-file), and close it a moment later with its
   * queue drained. Bounded: beyond REFUSED_LINGER_MAX such sockets, close at once.
   */
  private linger(fd: number): void {
    const n = native();
    if (this.lingering >= REFUSED_LINGER_MAX) {
      n.close(fd);
      return;
    }
    this.lingering++;
    try {
      n.shutdown(fd);
    } catch {
      /* gone already */
    }
    setTimeout(() => {
      this.lingering--;
      drain(fd);
      n.close(fd);
    }, REFUSED_LINGER_MS).unref();
  }

  /** Stop listening and remove our socket (only if it is still ours). */
  closeListener(): void {
    this.acceptLoop?.close();
    this.acceptLoop = null;
    if (this.listenFd < 0) return;
    native().close(this.listenFd);
    this.listenFd = -1;
    try {
      const root = PinnedDir.open(this.dir);
      try {
        if (root.lstat(BROKER_SOCKET)?.ino === this.socketIno) root.unlinkQuiet(BROKER_SOCKET);
      } finally {
        root.close();
      }
    } catch {
      /* DIR is gone */
    }
  }
}

class Connection {
  private watcher: FdWatcher | null = null;
  private busy = false;
  closed = false;
  private violations = 0;
  private readonly sessions = new Set<number>();
  /** minor → holder fds (autoclear attaches). */
  private readonly holders = new Map<number, number[]>();

  constructor(
    readonly endpoint: Endpoint,
    readonly fd: number,
    readonly cred: PeerCred,
  ) {}

  private get server(): BrokerServer {
    return this.endpoint.server;
  }

  start(): void {
    this.resume();
  }

  private resume(): void {
    if (this.closed || this.watcher) return;
    try {
      this.watcher = native().watchFd(this.fd, () => this.onReadable());
    } catch (e) {
      this.server.log(`${this.endpoint.dir}: watch: ${describe(e)}`);
      this.close();
    }
  }

  private pauseReading(): void {
    this.watcher?.close();
    this.watcher = null;
  }

  private onReadable(): void {
    try {
      this.readSome();
    } catch (e) {
      // a bug, not the client's doing: drop this connection, keep serving the others
      this.server.log(`${this.endpoint.dir}: internal error, closing a connection: ${describe(e)}`);
      this.close();
    }
  }

  private readSome(): void {
    const n = native();
    for (let i = 0; i < READ_BURST && !this.busy && !this.closed; i++) {
      let msg: RecvMsgResult | null;
      try {
        msg = n.recvMsg(this.fd, MAX_MESSAGE_BYTES, MAX_MESSAGE_FDS);
      } catch {
        this.close(); // ECONNRESET: the client went away with data unread
        return;
      }
      if (msg === null) return;
      if (msg.eof) {
        this.close();
        return;
      }
      this.handle(msg);
    }
  }

  private handle(msg: RecvMsgResult): void {
    let req: Request;
    try {
      if (msg.truncated) throw new ProtocolError('EMSGSIZE', `message longer than ${MAX_MESSAGE_BYTES} bytes`);
      if (msg.ctrlTruncated) throw new ProtocolError('EBADF', `a message carries at most ${MAX_MESSAGE_FDS} file descriptor`);
      req = decodeRequest(msg.data, msg.fds.length);
    } catch (e) {
      closeFds(msg.fds);
      if (!(e instanceof ProtocolError)) throw e;
      this.violations++;
      this.reply(errorReply(e.id, { code: e.code, message: e.message, kind: 'protocol' }));
      if (this.violations >= MAX_VIOLATIONS) {
        this.server.log(`${this.endpoint.dir}: closing connection of pid ${this.cred.pid} after ${this.violations} protocol errors`);
        this.close();
      }
      return;
    }
    if (this.server.verbose) this.server.log(`${this.endpoint.dir}: pid ${this.cred.pid} uid ${this.cred.uid}: ${req.op}`);
    if (req.op === 'hello') {
      this.reply(
        okReply(req.id, {
          server: 'loopfs',
          protocol: PROTOCOL_VERSION,
          instance: this.endpoint.id,
          uid: this.cred.uid,
          gid: this.cred.gid,
          ops: opsOf(req.v),
          fs: this.server.allowFs,
          ...(req.v >= 2 ? { fuseMode: this.server.fuseMode, fuseDrivers: this.server.fuseDrivers } : {}),
        }, req.v),
      );
      return;
    }
    this.busy = true;
    this.pauseReading();
    this.serve(req, msg.fds)
      .catch((e) => this.server.log(`${this.endpoint.dir}: internal error: ${describe(e)}`))
      .finally(() => {
        closeFds(msg.fds);
        this.busy = false;
        this.resume();
      });
  }

  /** Run one request in the worker and answer it. */
  private async serve(req: Request, fds: number[]): Promise<void> {
    const worker = this.endpoint.worker;
    try {
      switch (req.op) {
        case 'list': {
          const { devices } = await worker.call({ op: 'list' });
          this.reply(okReply(req.id, listPage(devices, req.start ?? 0), req.v));
          return;
        }
        case 'get-free': {
          const r = await worker.call({ op: 'get-free', session: req.session === true });
          this.endpoint.handedOut(r.minor, this, req.session === true);
          this.reply(okReply(req.id, { minor: r.minor }, req.v));
          return;
        }
        case 'attach': {
          const r = await worker.call({ op: 'attach', fd: fds[0], req });
          if (r.holderFd !== null) this.adoptHolder(r.minor, r.holderFd);
          this.endpoint.handedOut(r.minor, this, req.session === true);
          this.reply(okReply(req.id, { minor: r.minor, readOnly: r.readOnly }, req.v));
          return;
        }
        case 'detach': {
          // holders (ours or another connection's) would only defer the clear
          const held = this.endpoint.dropHolders(req.minor);
          await worker.call({ op: 'detach', minor: req.minor, autoclearHeld: held });
          this.endpoint.handedOut(req.minor, null, false);
          this.reply(okReply(req.id, {}, req.v));
          return;
        }
        case 'set-capacity':
          await worker.call({ op: 'set-capacity', minor: req.minor });
          this.reply(okReply(req.id, {}, req.v));
          return;
        case 'set-direct-io':
          await worker.call({ op: 'set-direct-io', minor: req.minor, on: req.on });
          this.reply(okReply(req.id, {}, req.v));
          return;
        case 'set-block-size':
          await worker.call({ op: 'set-block-size', minor: req.minor, size: req.size });
          this.reply(okReply(req.id, {}, req.v));
          return;
        case 'mount': {
          const n = native();
          let pidfd = -1;
          try {
            // SO_PEERPIDFD: the process that connected (never a recycled pid)
            pidfd = n.peerPidfd(this.fd);
          } catch {
            pidfd = -1;
          }
          let r: MountOutcome;
          try {
            r = await worker.call({ op: 'mount', minor: req.minor, req, peer: { pid: this.cred.pid, pidfd, uid: this.cred.uid, gid: this.cred.gid } });
          } finally {
            if (pidfd >= 0) n.close(pidfd);
          }
          try {
            if (r.fuse) {
              try {
                // the driver must be serving before the client gets the mount: a driver
                // that cannot read the image says so here, not as ENOTCONN later
                await startFuseDriver({ ...r.fuse, env: this.server.env });
              } finally {
                closeFds([r.fuse.fuseFd, r.fuse.imageFd]);
              }
            }
            const body = { fstype: r.fstype, readOnly: r.readOnly, idmapped: r.idmapped, ...(r.fuse && req.v >= 2 ? { fuse: r.fuse.driver } : {}) };
            this.reply(okReply(req.id, body, req.v), [r.fd]);
          } finally {
            n.close(r.fd); // an open mount fd keeps the mount (and the device) busy
          }
          return;
        }
        default:
          return;
      }
    } catch (e) {
      const body: ErrorBody =
        e instanceof WorkerError
          ? e.body
          : e instanceof FuseDriverError
            ? { code: 'EIO', message: e.message, kind: 'mount' }
            : { code: 'EIO', message: describe(e), kind: 'internal' };
      this.reply(errorReply(req.id, body, req.v));
    }
  }

  /** The device is this connection's session device now (or, with false, no longer). */
  markSession(minor: number, session: boolean): void {
    if (!session) {
      this.sessions.delete(minor);
      return;
    }
    this.sessions.add(minor);
    // the connection ended while the worker ran: settle now
    if (this.closed) this.endSession();
  }

  private adoptHolder(minor: number, fd: number): void {
    const list = this.holders.get(minor) ?? [];
    list.push(fd);
    this.holders.set(minor, list);
    if (this.closed) this.endSession();
  }

  /** Close this connection's holder fds of a device; whether there were any. */
  dropHolders(minor: number): boolean {
    const fds = this.holders.get(minor);
    if (!fds) return false;
    closeFds(fds);
    this.holders.delete(minor);
    return true;
  }

  /** Send one datagram; a client that cannot take it is disconnected. */
  private reply(msg: object, fds: number[] = []): void {
    if (this.closed) return;
    try {
      native().sendMsg(this.fd, encodeMessage(msg), fds);
    } catch (e) {
      if (!isSysError(e) || !hasCode(e, 'EPIPE', 'ECONNRESET', 'EAGAIN', 'ENOBUFS')) this.server.log(`${this.endpoint.dir}: send: ${describe(e)}`);
      this.close();
    }
  }

  /** End the connection and its session (idempotent). */
  close(): void {
    if (!this.closed) {
      this.closed = true;
      this.pauseReading();
      // unread requests would turn the client's next recv into ECONNRESET before it reads
      // the replies already queued for it (the last error, say): drop them first
      drain(this.fd);
      native().close(this.fd);
      this.endpoint.connections.delete(this);
    }
    this.endSession();
  }

  /** Release what the connection holds: session devices, then holder fds. */
  private endSession(): void {
    if (this.sessions.size === 0 && this.holders.size === 0) return;
    const sessions = [...this.sessions];
    const released = [...this.holders.keys()];
    this.sessions.clear();
    for (const minor of released) this.dropHolders(minor);
    this.endpoint.worker
      .call({ op: 'end-session', sessions, released })
      .catch((e) => this.server.log(`${this.endpoint.dir}: session cleanup: ${describe(e)}`));
  }
}

/** Entries from `start` that fit in one reply; `next` when more follow. */
export function listPage(devices: DeviceEntry[], start: number): ListReply {
  const page: DeviceEntry[] = [];
  let bytes = 0;
  let i = start;
  for (; i < devices.length; i++) {
    const size = Buffer.byteLength(JSON.stringify(devices[i])) + 1;
    if (page.length > 0 && bytes + size > LIST_PAGE_BYTES) break;
    page.push(devices[i]);
    bytes += size;
  }
  return i < devices.length ? { devices: page, next: i } : { devices: page };
}

/** Read and drop what is queued on a socket we are about to close (bounded). */
function drain(fd: number): void {
  try {
    for (let i = 0; i < 64; i++) {
      const m = native().recvMsg(fd, MAX_MESSAGE_BYTES, MAX_MESSAGE_FDS);
      if (m === null || m.eof) return;
      closeFds(m.fds);
    }
  } catch {
    /* reset by the peer, or a blocking fd: nothing to drain */
  }
}

function closeFds(fds: number[]): void {
  for (const fd of fds) {
    try {
      native().close(fd);
    } catch {
      /* already closed */
    }
  }
}

function describe(e: unknown): string {
  if (e instanceof WorkerError) return `${e.body.code}: ${e.body.message}`;
  if (isSysError(e)) return `${e.path ? `${e.path}: ` : ''}${e.description ?? e.message} (${e.code})`;
  return e instanceof Error ? e.message : String(e);
}

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
        failed.push(`${dir}: ${describe(e)}`);
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
