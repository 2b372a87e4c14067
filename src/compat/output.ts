/**
 * util-linux style output: stdout is buffered and written in one go (a listing of
 * thousands of devices is one write, not thousands), stderr lines are written at once
 * after flushing stdout so that interleaving on a terminal stays in program order.
 * Messages follow glibc's warn()/warnx()/err()/errx(): "PROG: msg[: strerror]".
 */
import { writeSync } from 'node:fs';

/** Thrown to end the program with a status, after the message has been printed. */
export class Exit extends Error {
  constructor(readonly status: number) {
    super(`exit ${status}`);
    this.name = 'Exit';
  }
}

function writeAll(fd: number, text: string): void {
  let buf = Buffer.from(text, 'utf8');
  while (buf.length > 0) {
    try {
      const n = writeSync(fd, buf);
      buf = buf.subarray(n);
    } catch (e) {
      // a non-blocking pipe that is full: wait for the reader instead of dropping output
      if ((e as NodeJS.ErrnoException).code === 'EAGAIN') continue;
      throw e;
    }
  }
}

export class Output {
  private pending: string[] = [];

  /** @param prog program_invocation_short_name: the prefix of every message */
  constructor(readonly prog: string) {}

  out(text: string): void {
    this.pending.push(text);
  }

  /** glibc warnx(): "PROG: msg" */
  warnx(msg: string): void {
    this.errRaw(`${this.prog}: ${msg}\n`);
  }

  /** glibc warn(): "PROG: msg: strerror" */
  warn(msg: string, description: string): void {
    this.errRaw(`${this.prog}: ${msg}: ${description}\n`);
  }

  /** glibc errx(): warnx() and exit. */
  errx(msg: string, status = 1): never {
    this.warnx(msg);
    throw new Exit(status);
  }

  /** glibc err(): warn() and exit. */
  err(msg: string, description: string, status = 1): never {
    this.warn(msg, description);
    throw new Exit(status);
  }

  /** A raw stderr line (getopt's own messages carry argv[0], not PROG). */
  errRaw(text: string): void {
    this.flush();
    writeAll(2, text);
  }

  flush(): void {
    if (this.pending.length === 0) return;
    const text = this.pending.join('');
    this.pending = [];
    writeAll(1, text);
  }
}
