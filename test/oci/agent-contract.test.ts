// The listenerMetadata format shared by the runtime wrapper, `loopfs seccomp-profile` and
// the agent: every verdict survives a round trip, and anything else is refused (the agent
// then closes the connection: fail closed).
import { describe, expect, it } from 'vitest';
import { formatMetadata, parseMetadata, seccompSocketPath, type EngineVerdict } from '../../src/oci/agent-contract.js';

describe('agent contract', () => {
  it('round-trips every verdict through its exact text', () => {
    const cases: Array<[EngineVerdict, string]> = [
      [{ kind: 'allow' }, 'loopfs/1 mount=allow'],
      [{ kind: 'errno', errno: 1 }, 'loopfs/1 mount=errno:1'],
      [{ kind: 'errno', errno: 38 }, 'loopfs/1 mount=errno:38'],
      [{ kind: 'cap', cap: 21, errno: 1 }, 'loopfs/1 mount=cap:21:1'],
    ];
    for (const [v, s] of cases) {
      expect(formatMetadata(v)).toBe(s);
      expect(parseMetadata(s)).toEqual(v);
    }
  });

  it('refuses anything that is not exactly a verdict', () => {
    for (const s of [
      undefined,
      null,
      42,
      '',
      'loopfs/1',
      'loopfs/2 mount=allow',
      'loopfs/1 mount=allow ',
      ' loopfs/1 mount=allow',
      'loopfs/1 mount=deny',
      'loopfs/1 mount=errno:0',
      'loopfs/1 mount=errno:4096',
      'loopfs/1 mount=errno:-1',
      'loopfs/1 mount=errno:1\n',
      'loopfs/1 mount=cap:64:1',
      'loopfs/1 mount=cap:21',
      'loopfs/1 mount=cap:21:0',
      'loopfs/1 mount=allow\u0000',
    ]) {
      expect(parseMetadata(s), JSON.stringify(s)).toBeNull();
    }
  });

  it('puts the socket in the runtime directory', () => {
    expect(seccompSocketPath({ LOOPFS_RUNTIME_DIR: '/tmp/rt' })).toBe('/tmp/rt/seccomp.sock');
    expect(seccompSocketPath({})).toBe('/run/loopfs/seccomp.sock');
  });
});
