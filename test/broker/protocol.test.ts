// The broker protocol's validation (src/protocol/broker.ts), no kernel needed: every request
// shape the broker accepts, and the error (code, id) for everything it must refuse.
import { describe, expect, it } from 'vitest';
import {
  decodeReply,
  decodeRequest,
  encodeMessage,
  errorReply,
  FDS_FOR,
  MAX_MESSAGE_BYTES,
  okReply,
  OPS,
  ProtocolError,
} from '../../src/protocol/broker.js';

const enc = (o: unknown) => Buffer.from(JSON.stringify(o));

function refusal(data: Uint8Array, nfds = 0): { code: string; id: number | null; message: string } {
  try {
    decodeRequest(data, nfds);
  } catch (e) {
    if (e instanceof ProtocolError) return { code: e.code, id: e.id, message: e.message };
    throw e;
  }
  throw new Error('expected a ProtocolError');
}

describe('decodeRequest: accepted requests', () => {
  it('every op in its minimal and its fullest form', () => {
    const ok: Array<[object, number]> = [
      [{ op: 'hello' }, 0],
      [{ op: 'hello', client: 'losetup' }, 0],
      [{ op: 'list' }, 0],
      [{ op: 'get-free' }, 0],
      [{ op: 'get-free', session: true }, 0],
      [{ op: 'attach' }, 1],
      [
        {
          op: 'attach',
          name: '/srv/a b.img',
          offset: '18446744073709551615',
          sizelimit: '0',
          readOnly: true,
          partscan: false,
          directIo: true,
          autoclear: true,
          blockSize: 4096,
          session: true,
        },
        1,
      ],
      [{ op: 'detach', minor: 0 }, 0],
      [{ op: 'set-capacity', minor: 1048575 }, 0],
      [{ op: 'mount', minor: 3 }, 0],
      [{ op: 'mount', minor: 3, fstype: 'ext4', readOnly: true, attrs: ['noexec', 'noatime', 'nosymfollow'] }, 0],
    ];
    for (const [body, nfds] of ok) {
      const req = decodeRequest(enc({ v: 1, id: 42, ...body }), nfds);
      expect(req).toMatchObject({ v: 1, id: 42, ...body });
    }
    expect(OPS.every((op) => FDS_FOR[op] === (op === 'attach' ? 1 : 0))).toBe(true);
  });

  it('ids span 0..2^32-1', () => {
    expect(decodeRequest(enc({ v: 1, id: 0, op: 'list' }), 0).id).toBe(0);
    expect(decodeRequest(enc({ v: 1, id: 0xffffffff, op: 'list' }), 0).id).toBe(0xffffffff);
  });
});

describe('decodeRequest: refusals', () => {
  it('framing: size, UTF-8, JSON, object', () => {
    expect(refusal(Buffer.alloc(MAX_MESSAGE_BYTES + 1, 0x20)).code).toBe('EMSGSIZE');
    expect(refusal(Buffer.from([0xff, 0xfe, 0x7b])).code).toBe('EBADMSG');
    expect(refusal(Buffer.from('{"v":1,"id":1,"op":"list"')).code).toBe('EBADMSG');
    for (const t of ['[]', 'null', '1', '"x"', 'true']) expect(refusal(Buffer.from(t)).code, t).toBe('EBADMSG');
    expect(refusal(Buffer.from('{"v":1,"id":1,"op":"list"} trailing')).code).toBe('EBADMSG');
  });

  it('id, version and op; the id is echoed once it could be read', () => {
    for (const id of [-1, 2 ** 32, 1.5, '7', null, undefined]) {
      expect(refusal(enc({ v: 1, id, op: 'list' }))).toMatchObject({ code: 'EBADMSG', id: null });
    }
    for (const v of [0, 3, '1', 1.5, null, undefined]) expect(refusal(enc({ v, id: 9, op: 'list' }))).toMatchObject({ code: 'EPROTONOSUPPORT', id: 9 });
    for (const op of ['', 'ATTACH', 'attach ', 'rm', 7, null, undefined, ['list']]) {
      expect(refusal(enc({ v: 1, id: 9, op }))).toMatchObject({ code: 'EOPNOTSUPP', id: 9 });
    }
  });

  it('unknown fields, including prototype names', () => {
    expect(refusal(enc({ v: 1, id: 5, op: 'list', extra: 1 }))).toMatchObject({ code: 'EINVAL', id: 5 });
    expect(refusal(enc({ v: 1, id: 5, op: 'hello', session: true }))).toMatchObject({ code: 'EINVAL' });
    expect(refusal(Buffer.from('{"v":1,"id":5,"op":"list","__proto__":{"x":1}}'))).toMatchObject({ code: 'EINVAL', id: 5 });
    expect(refusal(enc({ v: 1, id: 5, op: 'list', constructor: 1 }))).toMatchObject({ code: 'EINVAL' });
    expect(refusal(enc({ v: 1, id: 5, op: 'list', toString: 'x' }))).toMatchObject({ code: 'EINVAL' });
  });

  it('field types and ranges', () => {
    const bad: object[] = [
      { op: 'get-free', session: 1 },
      { op: 'detach' },
      { op: 'detach', minor: -1 },
      { op: 'detach', minor: 1 << 20 },
      { op: 'detach', minor: 1.5 },
      { op: 'detach', minor: '3' },
      { op: 'attach', offset: 512 },
      { op: 'attach', offset: '-1' },
      { op: 'attach', offset: '01' },
      { op: 'attach', offset: '18446744073709551616' },
      { op: 'attach', sizelimit: '1e3' },
      { op: 'attach', blockSize: 513 },
      { op: 'attach', blockSize: 1 << 20 },
      { op: 'attach', blockSize: '512' },
      { op: 'attach', name: 'a\u0000b' },
      { op: 'attach', name: 'x'.repeat(4097) },
      { op: 'attach', readOnly: 'yes' },
      { op: 'hello', client: 'x'.repeat(65) },
      { op: 'mount', minor: 1, fstype: 'Ext4' },
      { op: 'mount', minor: 1, fstype: '../ext4' },
      { op: 'mount', minor: 1, attrs: ['suid'] },
      { op: 'mount', minor: 1, attrs: 'noexec' },
      { op: 'mount', minor: 1, attrs: [1] },
      { op: 'mount', minor: 1, attrs: Array(9).fill('noexec') },
    ];
    for (const body of bad) {
      const nfds = (body as { op: string }).op === 'attach' ? 1 : 0;
      expect(refusal(enc({ v: 1, id: 3, ...body }), nfds), JSON.stringify(body)).toMatchObject({ code: 'EINVAL', id: 3 });
    }
  });

  it('the number of fds must match the op', () => {
    expect(refusal(enc({ v: 1, id: 1, op: 'attach' }), 0)).toMatchObject({ code: 'EBADF', id: 1 });
    expect(refusal(enc({ v: 1, id: 1, op: 'attach' }), 2).code).toBe('EBADF');
    expect(refusal(enc({ v: 1, id: 1, op: 'list' }), 1).code).toBe('EBADF');
    expect(refusal(enc({ v: 1, id: 1, op: 'mount', minor: 1 }), 1).code).toBe('EBADF');
  });
});

describe('versions', () => {
  it('v1 and v2 are both spoken; a v2 field in a v1 request is an unknown field, as it was in v1', () => {
    expect(decodeRequest(enc({ v: 1, id: 1, op: 'mount', minor: 3 }), 0)).toMatchObject({ v: 1, op: 'mount' });
    expect(decodeRequest(enc({ v: 2, id: 1, op: 'mount', minor: 3, fuse: true }), 0)).toMatchObject({ v: 2, fuse: true });
    expect(refusal(enc({ v: 1, id: 4, op: 'mount', minor: 3, fuse: true }))).toMatchObject({ code: 'EINVAL', id: 4 });
    expect(refusal(enc({ v: 2, id: 4, op: 'mount', minor: 3, fuse: 'yes' }))).toMatchObject({ code: 'EINVAL', id: 4 });
    expect(refusal(enc({ v: 2, id: 4, op: 'attach', fuse: true }), 1)).toMatchObject({ code: 'EINVAL', id: 4 });
  });
});

describe('replies', () => {
  it('round trip, and the size limit on our own messages', () => {
    const ok = encodeMessage(okReply(7, { minor: 3 }));
    expect(decodeReply(ok)).toEqual({ v: 2, id: 7, ok: true, minor: 3 });
    // a reply is in the version of its request; errors not tied to one are v1, which every client reads
    expect(decodeReply(encodeMessage(okReply(7, {}, 1)))).toEqual({ v: 1, id: 7, ok: true });
    const err = encodeMessage(errorReply(null, { code: 'EACCES', message: 'no', kind: 'denied' }));
    expect(decodeReply(err)).toEqual({ v: 1, id: null, ok: false, error: { code: 'EACCES', message: 'no', kind: 'denied' } });
    expect(() => encodeMessage({ pad: 'x'.repeat(MAX_MESSAGE_BYTES) })).toThrow(RangeError);
    expect(() => decodeReply(Buffer.from('{"v":3,"id":1,"ok":true}'))).toThrow(ProtocolError);
    expect(() => decodeReply(Buffer.from('{"v":1,"id":1,"ok":false}'))).toThrow(ProtocolError);
    expect(() => decodeReply(Buffer.from('nope'))).toThrow(ProtocolError);
  });
});

describe('list pages', () => {
  it('a long list comes in pages that each fit in one message, in order, nothing lost', async () => {
    const { listPage } = await import('../../src/broker/connection.js');
    const entry = (minor: number) => ({
      minor,
      bound: true,
      backingFile: `/srv/${'x'.repeat(minor % 7 === 0 ? 4000 : 40)}/${minor}.img`,
      offset: '0',
      sizelimit: '0',
      autoclear: false,
      readOnly: false,
      directIo: false,
      partscan: false,
      logSec: '512',
      backingDev: '65024',
      backingIno: String(1000 + minor),
    });
    const devices = Array.from({ length: 1000 }, (_, i) => entry(i));
    const got: number[] = [];
    let start = 0;
    let pages = 0;
    for (;;) {
      const page = listPage(devices, start);
      pages++;
      expect(encodeMessage(okReply(1, page)).length).toBeLessThanOrEqual(MAX_MESSAGE_BYTES);
      got.push(...page.devices.map((d) => d.minor));
      if (page.next === undefined) break;
      expect(page.next).toBeGreaterThan(start);
      start = page.next;
    }
    expect(got).toEqual(devices.map((d) => d.minor));
    expect(pages).toBeGreaterThan(1);
    expect(listPage([], 0)).toEqual({ devices: [] });
  });
});
