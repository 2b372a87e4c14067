/**
 * One instance `loopfs serve` serves (server.ts): its `DIR/loop-control` socket, the accept
 * loop, the instance's worker thread and its connections (connection.ts).
 *
 * Who may connect: the socket file is owned by the instance owner, mode 0600, and the
 * broker checks SO_PEERCRED at accept as well (uid 0 or the owner). An instance is one
 * tenant; its owner is that tenant (for a container: the host uid its root maps to), so
 * nobody else has any business with its devices, and 0666 would let every local user
 * allocate against the owner's quota and list the owner's files. The group is not
 * trusted: SO_PEERCRED shows only the primary gid, so group access could not be checked
 * the way connect(2) checks it.
 */
import { hasCode } from '../kernel/errors.js';
import { native, type PeerCred } from '../kernel/native.js';
import type { SyncTarget } from '../instance/live-sync.js';
import { PinnedDir } from '../instance/pinned-dir.js';
import { BROKER_SOCKET, encodeMessage, errorReply, type ErrorBody } from '../protocol/broker.js';
import { AcceptLoop } from '../protocol/accept-loop.js';
import { Connection, drain } from './connection.js';
import { ServeError, type BrokerServer } from './server.js';
import type { InstanceWorker } from './worker-api.js';

/** How long, and how many, refused connections stay open so the client can read why. */
const REFUSED_LINGER_MS = 500;
const REFUSED_LINGER_MAX = 128;
const LISTEN_BACKLOG = 128;

/** One served instance: its socket, its worker, its connections. */
export class Endpoint {
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
      onConnection: (fd, peer) => this.admit(fd, peer),
      log: (line) => this.server.log(line),
    });
  }

  private admit(fd: number, cred: PeerCred): void {
    const n = native();
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
