/**
 * The worker thread of one served instance: runs InstanceOps (ops.ts) one request at a
 * time, off the event loop that serves the sockets. File descriptors are process-wide, so
 * fds received on the main thread are used here by number and fds made here (mount fds,
 * holder fds) go back by number; the main thread owns and closes all of them.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { InstanceOps, toErrorBody, type OpsConfig } from './ops.js';
import type { WorkerReply, WorkerRequest } from './worker-api.js';

const ops = new InstanceOps(workerData as OpsConfig);
const port = parentPort!;

/** How often devices whose detach the kernel deferred (mounted) are checked again. */
const DEFERRED_RETRY_MS = 1000;

function run(m: WorkerRequest): unknown {
  switch (m.op) {
    case 'list':
      return ops.list();
    case 'get-free':
      return ops.getFree(m.session === true);
    case 'attach':
      return ops.attach(m.fd, m.req);
    case 'detach':
      return ops.detach(m.minor, m.autoclearHeld === true);
    case 'set-capacity':
      return ops.setCapacity(m.minor);
    case 'set-direct-io':
      return ops.setDirectIo(m.minor, m.on);
    case 'set-block-size':
      return ops.setBlockSize(m.minor, m.size);
    case 'mount':
      return ops.mount(m.minor, m.req, m.peer);
    case 'end-session':
      return ops.endSession(m.sessions, m.released);
    case 'pending':
      return ops.pending();
    case 'recover':
      return ops.recover();
  }
}

port.on('message', (m: WorkerRequest) => {
  let reply: WorkerReply;
  try {
    reply = { seq: m.seq, ok: true, result: run(m) ?? null };
  } catch (e) {
    reply = { seq: m.seq, ok: false, error: toErrorBody(e) };
  }
  port.postMessage(reply);
});

setInterval(() => {
  try {
    ops.retryDeferred();
  } catch {
    /* next round */
  }
}, DEFERRED_RETRY_MS).unref();
