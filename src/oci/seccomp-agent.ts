/**
 * The OCI seccomp agent in `loopfs oci-broker`: where runc and crun hand over the seccomp
 * listener of a container whose profile traps mount(2) (`linux.seccomp.listenerPath` =
 * RUNTIME/seccomp.sock, see agent-contract.ts), and where its trapped mounts are judged
 * and performed — by src/intercept/judge.ts, the very code `loopfs run` uses.
 *
 * The handshake (runc 1.1 libcontainer, crun ≥ 0.19): the runtime connects (AF_UNIX
 * stream), writes one JSON document `{ociVersion, fds:["seccompFd"], pid, metadata,
 * state:{id,status,pid,bundle,annotations}}` in one sendmsg carrying the listener as
 * SCM_RIGHTS, and then neither reads nor closes: runc's Go code drops its net.Conn
 * without Close (it closes only a dup of it), so the stream ends only when that runc
 * process exits — which for `runc run` and `runc exec` is when the container or the exec'd
 * process ends. So the handshake is complete at the end of the JSON document, not at EOF;
 * it may still arrive in pieces (a stream), so it is read up to a bounded size within a
 * bounded time. One connection per process started in the container (init, each exec).
 *
 * Nothing in the JSON is trusted:
 *   peer      SO_PEERCRED uid 0, or the uid owning the container's instance (a rootless
 *             runtime runs as its user);
 *   container state.id names a container record (record.ts) of that requester, whose init
 *             (pid + start time) is alive and is state.pid; `pid` is that init or a process
 *             in its PID namespace;
 *   fd        exactly one, and a seccomp listener (`anon_inode:seccomp notify`);
 *   metadata  parses (parseMetadata): the engine's own verdict on mount(2).
 * Any failure closes the connection and every fd received: the container's trapped mounts
 * then fail with ENOSYS (the kernel's answer when no listener is left), the agent goes on.
 * And since the listener itself cannot be traced to the handshake's process, every
 * notification's process must be in the container's PID namespace, else EPERM.
 *
 * What is performed (MountPerformer, containerRoot): mounts of the container's instance
 * devices for the container's root, i.e. the instance owner as the host sees it (the
 * hook makes the instance owned by the container's root as mapped), with or without
 * CAP_SYS_ADMIN and also without a user namespace (then not ID-mapped); and, when the
 * profile sends umount2 too (JUDGED_SYSCALLS), their unmount. Everything else gets the
 * engine's verdict from listenerMetadata.
 *
 * Lifetime: a listener is closed when it hangs up (every filtered process is gone), when
 * the container's init exits, when its instance is destroyed, and when the agent stops;
 * an answer still being worked out then is dropped (its fd is closed only after it).
 * Listeners die with the agent: a restarted agent does not get them back, so in the
 * containers it served every trapped mount(2) fails with ENOSYS from then on; everything
 * else keeps working.
 */
import { readlinkSync } from 'node:fs';
import { constants as osConstants } from 'node:os';
import { native, type FdWatcher, type PeerCred } from '../kernel/native.js';
import { LocalInstance } from '../instance/local-instance.js';
import { MountJudge } from '../intercept/judge.js';
import { MountPerformer, type Outcome } from '../intercept/perform.js';
import type { TrappedProcess } from '../intercept/trapped.js';
import { AcceptLoop } from '../protocol/accept-loop.js';
import { parseMetadata, type EngineVerdict } from './agent-contract.js';
import { CONTAINER_ID } from './bundle.js';
import { instanceDirFor, processStartTime, readRecord } from './record.js';

/** Bounds of one handshake. */
export interface AgentLimits {
  /** Largest handshake document (annotations can be large: Kubernetes allows 256 KiB). */
  maxBytes: number;
  /** Time from accept to a complete document. */
  timeoutMs: number;
  /** Handshakes being read at once (more wait in the kernel's backlog). */
  maxPending: number;
  /** Of those, from one peer uid (more are closed at once). */
  maxPendingPerUid: number;
}

export const DEFAULT_LIMITS: AgentLimits = { maxBytes: 1 << 20, timeoutMs: 5_000, maxPending: 64, maxPendingPerUid: 16 };

/** How long accepting pauses after EMFILE/ENFILE (the connection stays queued). */
const FD_EXHAUSTED_BACKOFF_MS = 200;
const READ_CHUNK = 64 * 1024;
const MAX_PARSE_TRIES = 64;
const SECCOMP_LISTENER_LINK = 'anon_inode:seccomp notify';

export interface AgentOptions {
  env: NodeJS.ProcessEnv;
  allowFs: string[];
  log: (line: string) => void;
  limits?: Partial<AgentLimits>;
}

const EMPTY = 'connection closed before a handshake';

/** A handshake refused: why, for the log. */
class Refused extends Error {}

interface Container {
  dir: string;
  id: string;
  initPid: number;
  pidNs: bigint;
  pidfd: number;
  exitWatcher: FdWatcher;
  performer: MountPerformer;
  listeners: Set<Listener>;
}

export class SeccompAgent {
  private readonly acceptLoop: AcceptLoop;
  private readonly pending = new Set<Pending>();
  private readonly containers = new Map<string, Container>();
  private readonly limits: AgentLimits;
  private stopped = false;

  constructor(
    private readonly listenFd: number,
    private readonly opts: AgentOptions,
  ) {
    this.limits = { ...DEFAULT_LIMITS, ...opts.limits };
    // at most maxPending handshakes at once: the listener pauses until one ends (settle)
    this.acceptLoop = new AcceptLoop(listenFd, {
      label: 'seccomp agent',
      accept: (fd) => native().streamAccept(fd),
      onConnection: (fd, peer) => this.admit(fd, peer),
      log: opts.log,
      canAccept: () => this.pending.size < this.limits.maxPending,
      backoffMs: FD_EXHAUSTED_BACKOFF_MS,
    });
  }

  private admit(fd: number, cred: PeerCred): void {
    const n = native();
    let mine = 0;
    for (const p of this.pending) if (p.cred.uid === cred.uid) mine++;
    if (mine >= this.limits.maxPendingPerUid) {
      this.opts.log(`seccomp agent: uid ${cred.uid}: too many handshakes at once; connection closed`);
      n.close(fd);
      return;
    }
    const p = new Pending(fd, cred, this.limits, (result) => this.settle(p, result));
    this.pending.add(p);
  }

  /** A handshake ended: a document (to check) or the reason it failed. */
  private settle(p: Pending, result: { doc: unknown; fds: number[] } | { error: string }): void {
    this.pending.delete(p);
    if (!this.stopped) this.acceptLoop.resume();
    if ('error' in result) {
      // a bare connect and close is somebody asking whether we listen (loopfs doctor)
      if (result.error === EMPTY) return;
      this.opts.log(`seccomp agent: uid ${p.cred.uid} pid ${p.cred.pid}: handshake refused: ${result.error}`);
      return;
    }
    const n = native();
    try {
      this.accept(p.cred, result.doc, result.fds);
    } catch (e) {
      // whatever went wrong, the agent stays up and keeps nothing of this handshake
      for (const f of result.fds) n.close(f);
      const why = e instanceof Refused ? e.message : `internal error: ${(e as Error).message}`;
      this.opts.log(`seccomp agent: uid ${p.cred.uid} pid ${p.cred.pid}: handshake refused: ${why}`);
    }
  }

  /** Check a handshake and serve its listener; throws Refused (the caller closes the fds). */
  private accept(cred: PeerCred, doc: unknown, fds: number[]): void {
    const h = parseHandshake(doc);
    if (fds.length !== 1) throw new Refused(`${fds.length} fds passed, expected the seccomp listener only`);
    const fd = fds[0];
    if (fdTarget(fd) !== SECCOMP_LISTENER_LINK) throw new Refused('the fd passed is not a seccomp listener');
    const c = this.containerFor(cred, h.id, h.initPid);
    // An exec'd process may have ended already (`runc exec ID true`): then there is no
    // process to tell about, and its descendants are checked at each notification anyway.
    const ns = h.pid === c.initPid ? c.pidNs : pidNamespaceOf(h.pid);
    if (ns !== null && ns !== c.pidNs) {
      if (c.listeners.size === 0) this.dropContainer(c); // made for this handshake: its pidfd goes too
      throw new Refused(`pid ${h.pid} is not a process of container ${h.id}`);
    }
    const l = new Listener(fd, c, h.verdict, this.opts.log);
    c.listeners.add(l);
    l.onClosed = () => {
      c.listeners.delete(l);
      if (c.listeners.size === 0) this.dropContainer(c);
    };
    this.opts.log(`seccomp agent: container ${h.id} (${c.dir}): serving pid ${h.pid}'s listener, mount verdict ${describeVerdict(h.verdict)}, from uid ${cred.uid}`);
  }

  /** The served container of that id (made on first use); throws Refused. */
  private containerFor(cred: PeerCred, id: string, initPid: number): Container {
    const n = native();
    // A rootless runtime's container has its instance under the runtime user's uid; the
    // rootful hook's under 0 (owned by the container's mapped root, which never runs runc).
    const dirs = [...new Set([instanceDirFor(cred.uid, id, this.opts.env), instanceDirFor(0, id, this.opts.env)])];
    for (const dir of dirs) {
      const r = readRecord(dir);
      if (!r || r.container !== id) continue;
      // the instance owner is the container's root as the host sees it (hook.ts, oci-broker.ts)
      const owner = instanceOwner(dir);
      if (owner === null) throw new Refused(`container ${id}: ${dir} is not an instance`);
      if (cred.uid !== 0 && cred.uid !== owner) throw new Refused(`container ${id}: uid ${cred.uid} does not own its instance`);
      if (r.pid !== initPid) throw new Refused(`container ${id}: state.pid ${initPid} is not its init (pid ${r.pid})`);
      const known = this.containers.get(dir);
      if (known && known.initPid === r.pid) return known;
      if (processStartTime(r.pid) !== r.startTime) throw new Refused(`container ${id}: its init is gone`);
      let pidfd: number;
      try {
        pidfd = n.pidfdOpen(r.pid);
      } catch {
        throw new Refused(`container ${id}: its init is gone`);
      }
      // the pidfd pins the process: checked again, it is the recorded init and no successor
      const pidNs = processStartTime(r.pid) === r.startTime ? pidNamespaceOf(r.pid) : null;
      if (pidNs === null) {
        n.close(pidfd);
        throw new Refused(`container ${id}: its init is gone`);
      }
      if (known) this.dropContainer(known); // a record of the same id replaced: its init was another
      const c: Container = {
        dir,
        id,
        initPid: r.pid,
        pidNs,
        pidfd,
        exitWatcher: n.watchFd(pidfd, () => this.dropContainer(c)),
        performer: new MountPerformer(dir, this.opts.allowFs, false, this.opts.env, { containerRoot: owner }),
        listeners: new Set(),
      };
      this.containers.set(dir, c);
      return c;
    }
    throw new Refused(`container ${id}: no such container (no instance record of uid ${cred.uid}${cred.uid === 0 ? '' : ' or 0'})`);
  }

  /** Close every listener of a container and forget it (its init exited, or it was destroyed). */
  private dropContainer(c: Container): void {
    if (this.containers.get(c.dir) !== c) return;
    this.containers.delete(c.dir);
    c.exitWatcher.close();
    native().close(c.pidfd);
    for (const l of [...c.listeners]) l.close();
  }

  /** The instance in DIR is being destroyed: its container's listeners go first. */
  closeContainer(dir: string): void {
    const c = this.containers.get(dir);
    if (c) this.dropContainer(c);
  }

  stop(): void {
    this.stopped = true;
    this.acceptLoop.close();
    for (const p of [...this.pending]) p.abort();
    this.pending.clear();
    for (const c of [...this.containers.values()]) this.dropContainer(c);
    native().close(this.listenFd);
  }
}

// ------------------------------------------------------------------ one handshake being read

class Pending {
  private readonly chunks: Buffer[] = [];
  private size = 0;
  private tries = 0;
  private readonly fds: number[] = [];
  private readonly watcher: FdWatcher;
  private readonly timer: NodeJS.Timeout;
  private done = false;

  constructor(
    private readonly fd: number,
    readonly cred: PeerCred,
    private readonly limits: AgentLimits,
    private readonly onDone: (r: { doc: unknown; fds: number[] } | { error: string }) => void,
  ) {
    this.timer = setTimeout(() => this.fail(`no complete handshake within ${limits.timeoutMs} ms`), limits.timeoutMs);
    this.watcher = native().watchFd(fd, () => this.read());
  }

  private read(): void {
    const n = native();
    for (;;) {
      if (this.done) return;
      let m;
      try {
        m = n.recvMsg(this.fd, READ_CHUNK, 2);
      } catch (e) {
        this.fail(`recvmsg: ${(e as Error).message}`);
        return;
      }
      if (m === null) return; // drained; more may come
      this.fds.push(...m.fds);
      if (m.ctrlTruncated) return this.fail('more than one fd passed');
      if (this.fds.length > 1) return this.fail(`${this.fds.length} fds passed, expected the seccomp listener only`);
      if (m.eof) {
        this.finish(true);
        return;
      }
      this.chunks.push(m.data);
      this.size += m.data.length;
      if (this.size > this.limits.maxBytes) return this.fail(`handshake longer than ${this.limits.maxBytes} bytes`);
      // a JSON object is complete exactly when it parses: no proper prefix of one does.
      // Each try parses everything so far: bounded, or tiny pieces ending in } would cost
      // quadratic time (runtimes write the document at once: it comes in a few pieces)
      if (m.data.length > 0 && lastNonSpace(m.data) === 0x7d /* } */) {
        if (++this.tries > MAX_PARSE_TRIES) return this.fail(`no complete handshake in ${MAX_PARSE_TRIES} pieces`);
        if (this.finish(false)) return;
      }
    }
  }

  /** Try the bytes so far as the document; at EOF a failure is final. True when settled. */
  private finish(eof: boolean): boolean {
    let doc: unknown;
    try {
      doc = JSON.parse(Buffer.concat(this.chunks, this.size).toString('utf8'));
    } catch {
      // not (yet) a whole JSON document (SyntaxError): wait for more, or refuse at the end of the stream
      if (eof) this.fail(this.size === 0 && this.fds.length === 0 ? EMPTY : 'the handshake is not JSON');
      return eof;
    }
    this.end();
    this.onDone({ doc, fds: this.fds.splice(0) });
    return true;
  }

  private fail(why: string): void {
    if (this.done) return;
    this.end();
    for (const f of this.fds.splice(0)) native().close(f);
    this.onDone({ error: why });
  }

  /** Stop reading and close the connection (the runtime never reads it: nothing is answered). */
  private end(): void {
    this.done = true;
    clearTimeout(this.timer);
    this.watcher.close();
    native().close(this.fd);
  }

  /** The agent stops: drop it without a verdict. */
  abort(): void {
    if (this.done) return;
    this.end();
    for (const f of this.fds.splice(0)) native().close(f);
  }
}

function lastNonSpace(b: Buffer): number {
  for (let i = b.length - 1; i >= 0; i--) if (b[i] !== 0x20 && b[i] !== 0x0a && b[i] !== 0x0d && b[i] !== 0x09) return b[i];
  return -1;
}

// ------------------------------------------------------------------ one listener being served

class Listener {
  private readonly watcher: FdWatcher;
  private readonly judge: MountJudge;
  private inflight = 0;
  private closed = false;
  onClosed: (() => void) | null = null;

  private readonly log: (line: string) => void;

  constructor(
    private readonly fd: number,
    c: Container,
    verdict: EngineVerdict,
    log: (line: string) => void,
  ) {
    this.log = (line) => log(`seccomp agent: container ${c.id}: ${line}`);
    this.judge = new MountJudge({
      performer: c.performer,
      notPerformed: (t) => verdictAnswer(verdict, t),
      // the listener came from the runtime, not from the kernel's word about the process:
      // serve only the container's own processes
      admit: (t) => (t.pidNs === c.pidNs ? null : { code: 'EPERM', why: `pid ${t.notif.pid} is not a process of container ${c.id}` }),
      log: this.log,
    });
    this.watcher = native().watchFd(fd, () => this.onReadable());
  }

  private onReadable(): void {
    const n = native();
    // watchFd fires for a hang-up too, and RECV would block then: tell them apart
    let notif;
    try {
      const p = n.pollNow(this.fd);
      if (!p.readable) {
        if (p.hangup || p.error) this.close(); // every filtered process is gone
        return;
      }
      notif = n.seccompNotifRecv(this.fd);
    } catch (e) {
      this.log(`listener: ${(e as Error).message}; closed`);
      this.close();
      return;
    }
    if (!notif) return;
    this.inflight++;
    this.judge
      .answer(this.fd, notif, () => !this.closed)
      .catch((e: Error) => this.log(`pid ${notif.pid}: cannot answer: ${e.message}`))
      .finally(() => {
        this.inflight--;
        if (this.closed && this.inflight === 0) n.close(this.fd);
      });
  }

  /** Stop serving; the fd is closed once no answer is being worked out (its number must not be reused under one). */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.watcher.close();
    if (this.inflight === 0) native().close(this.fd);
    this.onClosed?.();
  }
}

/** The engine's verdict for a mount the agent does not perform. */
function verdictAnswer(v: EngineVerdict, t: TrappedProcess): 'continue' | Outcome {
  switch (v.kind) {
    case 'allow':
      return 'continue';
    case 'errno':
      return { code: errnoName(v.errno), errno: v.errno, why: "the engine's profile refuses mount(2)" };
    case 'cap':
      return t.hasCap(v.cap) ? 'continue' : { code: errnoName(v.errno), errno: v.errno, why: `the engine's profile allows mount(2) only with capability ${v.cap}` };
  }
}

function describeVerdict(v: EngineVerdict): string {
  return v.kind === 'allow' ? 'allow' : v.kind === 'errno' ? `errno ${v.errno}` : `cap ${v.cap} else errno ${v.errno}`;
}

function errnoName(errno: number): string {
  for (const [name, value] of Object.entries(osConstants.errno)) if (value === errno) return name;
  return `errno ${errno}`;
}

// ------------------------------------------------------------------ checks

interface Handshake {
  id: string;
  initPid: number;
  pid: number;
  verdict: EngineVerdict;
}

const isPid = (v: unknown): v is number => typeof v === 'number' && Number.isInteger(v) && v > 0 && v < 1 << 22;

/** The fields used, checked for shape only (what they claim is checked against the kernel). */
export function parseHandshake(doc: unknown): Handshake {
  if (typeof doc !== 'object' || doc === null || Array.isArray(doc)) throw new Refused('the handshake is not a JSON object');
  const d = doc as Record<string, unknown>;
  if (typeof d.ociVersion !== 'string') throw new Refused('no ociVersion');
  if (!Array.isArray(d.fds) || d.fds.length !== 1 || d.fds[0] !== 'seccompFd') throw new Refused('fds is not ["seccompFd"]');
  if (!isPid(d.pid)) throw new Refused('no valid pid');
  const verdict = parseMetadata(d.metadata);
  if (!verdict) throw new Refused(`metadata ${JSON.stringify(String(d.metadata)).slice(0, 80)} is not loopfs's (loopfs/1 mount=...)`);
  const s = d.state;
  if (typeof s !== 'object' || s === null || Array.isArray(s)) throw new Refused('no state');
  const st = s as Record<string, unknown>;
  if (typeof st.id !== 'string' || !CONTAINER_ID.test(st.id)) throw new Refused('state.id is not a container id');
  if (!isPid(st.pid)) throw new Refused('no valid state.pid');
  return { id: st.id, initPid: st.pid, pid: d.pid, verdict };
}

function fdTarget(fd: number): string | null {
  try {
    return readlinkSync(`/proc/self/fd/${fd}`);
  } catch {
    // no such fd (EBADF, ENOENT): no target
    return null;
  }
}

/** Inode of a process's PID namespace; null when it is gone. */
function pidNamespaceOf(pid: number): bigint | null {
  const n = native();
  let fd: number;
  try {
    fd = n.open(`/proc/${pid}/ns/pid`, n.constants.O_RDONLY);
  } catch {
    // the process is gone (ENOENT, ESRCH): no pid namespace to compare
    return null;
  }
  try {
    return n.fstat(fd).ino;
  } finally {
    n.close(fd);
  }
}

function instanceOwner(dir: string): number | null {
  try {
    const inst = LocalInstance.open(dir);
    try {
      return inst.state().owner.uid;
    } finally {
      inst.close();
    }
  } catch {
    // no instance or no state (ENOENT, not JSON): no owner to tell
    return null;
  }
}
