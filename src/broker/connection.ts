/**
 * One client connection of a served instance (endpoint.ts): its requests, its session
 * devices and the holder fds of its autoclear devices.
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
 * (BrokeredInstance: SO_RCVTIMEO, $LOOPFS_BROKER_TIMEOUT).
 *
 * Sessions: devices attached or found with `session: true` are detached and released when
 * the connection ends, however it ends (client exit, crash, SIGKILL, broker shutdown).
 * Autoclear attaches are held open by the connection (a holder fd), so they stay bound
 * until the connection ends or something else (a mount) holds them.
 */
import { hasCode, isSysError } from '../kernel/errors.js';
import { native, type FdWatcher, type PeerCred, type RecvMsgResult } from '../kernel/native.js';
import { FuseDriverError, startFuseDriver } from '../mounting/fuse-driver.js';
import {
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
  type ListReply,
  type Request,
} from '../protocol/broker.js';
import type { Endpoint } from './endpoint.js';
import type { MountOutcome } from './ops.js';
import type { BrokerServer } from './server.js';
import { WorkerError } from './worker-api.js';

/** Protocol violations after which a connection is closed. */
export const MAX_VIOLATIONS = 8;
/** Datagrams read per readable event before yielding to other connections. */
const READ_BURST = 16;

export class Connection {
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
            // no SO_PEERPIDFD (kernels before 6.5) or the peer is gone: -1, with which idmapToPeer
            // cannot prove who the pid is
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
export function drain(fd: number): void {
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

export function closeFds(fds: number[]): void {
  for (const fd of fds) {
    try {
      native().close(fd);
    } catch {
      /* already closed */
    }
  }
}

export function describe(e: unknown): string {
  if (e instanceof WorkerError) return `${e.body.code}: ${e.body.message}`;
  if (isSysError(e)) return `${e.path ? `${e.path}: ` : ''}${e.description ?? e.message} (${e.code})`;
  return e instanceof Error ? e.message : String(e);
}
