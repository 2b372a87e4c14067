/**
 * JSON that survives a parse and a stringify with every number exactly as written.
 * Seccomp argument values are 64-bit (masks such as 0xffffffffffffffff); JSON.parse turns
 * integers beyond 2^53 into the nearest double, which would silently change an engine's
 * filter. The edits here never compute with numbers, so those literals are carried as
 * opaque placeholders and written back verbatim.
 */
import { randomBytes } from 'node:crypto';

export interface ExactJson {
  doc: unknown;
  /** JSON.stringify, with every big integer literal of the source put back. */
  stringify(v: unknown, indent?: number): string;
}

/** Like JSON.parse (throws SyntaxError on malformed text). */
export function parseExact(text: string): ExactJson {
  const big: string[] = [];
  let tag = '';
  let out = '';
  let last = 0;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (c === '"') {
      // skip the string, escapes included
      for (i++; i < text.length && text[i] !== '"'; i++) if (text[i] === '\\') i++;
      continue;
    }
    if (c !== '-' && (c < '0' || c > '9')) continue;
    const m = /^-?\d+(\.\d+)?([eE][+-]?\d+)?/.exec(text.slice(i, i + 400));
    if (!m) continue;
    if (m[1] === undefined && m[2] === undefined && !Number.isSafeInteger(Number(m[0]))) {
      if (!tag) {
        do tag = `loopfs-exact-${randomBytes(6).toString('hex')}-`;
        while (text.includes(tag));
      }
      out += `${text.slice(last, i)}"${tag}${big.length}"`;
      big.push(m[0]);
      last = i + m[0].length;
    }
    i += m[0].length - 1;
  }
  const doc: unknown = JSON.parse(big.length ? out + text.slice(last) : text);
  const back = tag ? new RegExp(`"${tag}(\\d+)"`, 'g') : null;
  return {
    doc,
    stringify: (v, indent) => {
      const s = JSON.stringify(v, null, indent);
      return back ? s.replace(back, (_, n: string) => big[Number(n)]) : s;
    },
  };
}
