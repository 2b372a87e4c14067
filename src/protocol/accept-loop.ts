/**
 * The one accept loop of every loopfs daemon socket (the broker's DIR/loop-control, the OCI
 * broker's socket, the seccomp agent's socket): accept what is queued, hand each connection
 * on, and never spin.
 *
 * Why a loop of its own: a listener whose accept(2) fails with EMFILE/ENFILE (or ENOBUFS,
 * ENOMEM) stays readable, because the connection is still queued. A loop that just returns
 * is called again at once by the event loop and burns a core for as long as the fds are
 * gone. So out of fds, the listener stops being polled for a back-off and tries again
 * after it; a daemon that limits its connections (`canAccept`) stops polling until a
 * connection ends and it calls resume(). Each connection is handed on with its peer's
 * credentials as the kernel recorded them at connect (SO_PEERCRED): the only identity a
 * daemon of ours trusts.
 */
import { hasCode } from '../kernel/errors.js';
import { native, type FdWatcher, type PeerCred } from '../kernel/native.js';

/** How long accepting pauses when the process (or the system) is out of fds or memory. */
export const ACCEPT_BACKOFF_MS = 100;

/** Accepted per readable event before the event loop gets its turn (fairness with clients). */
const BATCH = 64;

export interface AcceptLoopOptions {
  /** accept4 on the listening fd: the new fd, or null when nothing is queued (EAGAIN). */
  accept(listenFd: number): number | null;
  /** A new connection and its peer (SO_PEERCRED); the callee owns the fd. */
  onConnection(fd: number, peer: PeerCred): void;
  /** One line for the daemon's log. */
  log(line: string): void;
  /** Names the socket in the log lines, where the daemon's log has more than one. */
  label?: string;
  /** False while the daemon takes no more connections: the listener pauses until resume(). */
  canAccept?(): boolean;
  backoffMs?: number;
}

export class AcceptLoop {
  private watcher: FdWatcher | null = null;
  private timer: NodeJS.Timeout | null = null;
  private closed = false;
  /** Back-offs since the last accept that worked: the log says when it starts and ends, not each pause. */
  private pauses = 0;

  constructor(
    readonly fd: number,
    private readonly opts: AcceptLoopOptions,
  ) {
    this.watch();
  }

  /** Poll again after a pause for capacity (a connection ended); no effect during a back-off. */
  resume(): void {
    if (!this.closed && !this.watcher && !this.timer) this.watch();
  }

  /** Stop accepting for good. The fd stays the caller's to close (after this). */
  close(): void {
    this.closed = true;
    this.watcher?.close();
    this.watcher = null;
    if (this.timer) clearTimeout(this.timer);
    this.timer = null;
  }

  private watch(): void {
    this.watcher = native().watchFd(this.fd, () => this.acceptQueued());
  }

  private stopPolling(): void {
    this.watcher?.close();
    this.watcher = null;
  }

  private acceptQueued(): void {
    for (let i = 0; i < BATCH; i++) {
      if (this.closed) return;
      if (this.opts.canAccept && !this.opts.canAccept()) {
        this.stopPolling(); // until resume()
        return;
      }
      let fd: number | null;
      try {
        fd = this.opts.accept(this.fd);
      } catch (e) {
        if (hasCode(e, 'ECONNABORTED', 'EINTR', 'EPROTO')) continue; // that one connection is gone
        const ms = this.opts.backoffMs ?? ACCEPT_BACKOFF_MS;
        if (this.pauses++ === 0) this.opts.log(`${this.prefix()}accept: ${(e as Error).message}; pausing ${ms} ms at a time until it works`);
        this.backOff(ms);
        return;
      }
      if (fd === null) return;
      let peer: PeerCred;
      try {
        peer = native().peerCred(fd);
      } catch {
        // the peer is gone already (ENOTCONN and the like): nothing to hand on
        native().close(fd);
        continue;
      }
      if (this.pauses > 0) {
        this.opts.log(`${this.prefix()}accepting again (after ${this.pauses} pause${this.pauses === 1 ? '' : 's'})`);
        this.pauses = 0;
      }
      try {
        this.opts.onConnection(fd, peer);
      } catch (e) {
        this.opts.log(`${this.prefix()}internal error while accepting: ${(e as Error).message}`);
      }
    }
  }

  private prefix(): string {
    return this.opts.label ? `${this.opts.label}: ` : '';
  }

  private backOff(ms: number): void {
    this.stopPolling();
    if (this.timer) return;
    this.timer = setTimeout(() => {
      this.timer = null;
      if (!this.closed && !this.watcher) this.watch();
    }, ms);
  }
}
