/**
 * Messages between the broker's event loop (server.ts, connection.ts) and an instance worker (worker.ts),
 * and the main-thread handle of a worker: a promise per request, requests run in order.
 */
import { Worker } from 'node:worker_threads';
import type { MountPeer } from '../mounting/detached-mount.js';
import type { AttachOutcome, MountOutcome, OpsConfig } from './ops.js';
import type { AttachRequestMsg, ErrorBody, GetFreeReply, ListReply, MountRequest } from '../protocol/broker.js';

export type WorkerRequest = { seq: number } & (
  | { op: 'list' }
  | { op: 'get-free'; session?: boolean }
  | { op: 'attach'; fd: number; req: AttachRequestMsg }
  | { op: 'detach'; minor: number; autoclearHeld?: boolean }
  | { op: 'set-capacity'; minor: number }
  | { op: 'set-direct-io'; minor: number; on: boolean }
  | { op: 'set-block-size'; minor: number; size: number }
  | { op: 'mount'; minor: number; req: MountRequest; peer: MountPeer }
  | { op: 'end-session'; sessions: number[]; released: number[] }
  | { op: 'pending' }
  | { op: 'recover' }
);

export type WorkerReply = { seq: number; ok: true; result: unknown } | { seq: number; ok: false; error: ErrorBody };

type Body<T> = T extends unknown ? Omit<T, 'seq'> : never;
export type WorkerCall = Body<WorkerRequest>;

/** A failed worker request: the error reply body. */
export class WorkerError extends Error {
  constructor(readonly body: ErrorBody) {
    super(body.message);
    this.name = 'WorkerError';
  }
}

interface Pending {
  resolve: (v: unknown) => void;
  reject: (e: WorkerError) => void;
}

/**
 * The worker of one instance. If the thread dies (it should not: every op catches), the
 * requests in flight fail with EIO and the next request starts a new thread.
 */
export class InstanceWorker {
  private worker: Worker | null = null;
  private seq = 0;
  private readonly pending = new Map<number, Pending>();
  private stopping = false;

  constructor(
    private readonly cfg: OpsConfig,
    private readonly log: (line: string) => void,
  ) {}

  private thread(): Worker {
    if (this.worker) return this.worker;
    const w = new Worker(new URL('./worker.js', import.meta.url), { workerData: this.cfg });
    w.on('message', (m: WorkerReply) => {
      const p = this.pending.get(m.seq);
      if (!p) return;
      this.pending.delete(m.seq);
      if (m.ok) p.resolve(m.result);
      else p.reject(new WorkerError(m.error));
    });
    w.on('error', (e) => this.log(`${this.cfg.dir}: worker failed: ${e.message}`));
    w.on('exit', (code) => {
      if (this.worker === w) this.worker = null;
      if (!this.stopping) this.log(`${this.cfg.dir}: worker exited (${code})`);
      for (const [seq, p] of this.pending) {
        this.pending.delete(seq);
        p.reject(new WorkerError({ code: 'EIO', message: 'the broker worker stopped', kind: 'internal' }));
      }
    });
    this.worker = w;
    return w;
  }

  call(req: { op: 'list' }): Promise<ListReply>;
  call(req: { op: 'get-free'; session?: boolean }): Promise<GetFreeReply>;
  call(req: { op: 'attach'; fd: number; req: AttachRequestMsg }): Promise<AttachOutcome>;
  call(req: { op: 'mount'; minor: number; req: MountRequest; peer: MountPeer }): Promise<MountOutcome>;
  call(req: { op: 'pending' }): Promise<number[]>;
  call(req: { op: 'recover' }): Promise<number[]>;
  call(req: WorkerCall): Promise<unknown>;
  call(req: WorkerCall): Promise<unknown> {
    if (this.stopping) return Promise.reject(new WorkerError({ code: 'ESHUTDOWN', message: 'the broker is stopping', kind: 'internal' }));
    const seq = ++this.seq;
    return new Promise((resolve, reject) => {
      this.pending.set(seq, { resolve, reject });
      this.thread().postMessage({ ...req, seq });
    });
  }

  /** Requests not answered yet. */
  get busy(): number {
    return this.pending.size;
  }

  /** Wait (bounded) for requests in flight, then stop the thread. */
  async stop(timeoutMs: number): Promise<void> {
    const end = Date.now() + timeoutMs;
    while (this.pending.size > 0 && Date.now() < end) await new Promise((r) => setTimeout(r, 20));
    this.stopping = true;
    if (this.worker) await this.worker.terminate();
  }
}
