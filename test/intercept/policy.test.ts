// The register-only part of `loopfs run`'s decision (src/intercept/policy.ts): which trapped
// mount(2) calls are remounts, pass-through operations or new mounts, from the flags alone.
// The end-to-end behaviour is in run.test.ts; these pin the flag arithmetic.
import { describe, expect, it } from 'vitest';
import { classify, MS, mountFlags, remountKeepsNosuidNodev, requestedAttrs } from '../../src/intercept/policy.js';

describe('loopfs run policy (flags)', () => {
  it('drops the MS_MGC_VAL magic old callers put in the upper 16 bits, and only that', () => {
    expect(mountFlags(0xc0ed0000n | BigInt(MS.RDONLY))).toBe(MS.RDONLY);
    expect(mountFlags(BigInt(MS.STRICTATIME | MS.SHARED))).toBe(MS.STRICTATIME | MS.SHARED);
    // the register is 64 bits; mount(2) takes an unsigned long but only the low 32 bits mean anything
    expect(mountFlags((1n << 40n) | BigInt(MS.NOSUID))).toBe(MS.NOSUID);
  });

  it('classifies remounts first, then bind/move/propagation, else a new mount', () => {
    expect(classify(MS.REMOUNT | MS.BIND)).toBe('remount');
    expect(classify(MS.REMOUNT)).toBe('remount');
    for (const f of [MS.BIND, MS.BIND | 0x4000, MS.MOVE, MS.PRIVATE | 0x4000, MS.SLAVE, MS.SHARED, MS.UNBINDABLE]) expect(classify(f)).toBe('passthrough');
    for (const f of [0, MS.RDONLY, MS.NOSUID | MS.NODEV | MS.NOEXEC, MS.RELATIME]) expect(classify(f)).toBe('new');
  });

  it('lets a remount through only when it keeps both nosuid and nodev', () => {
    expect(remountKeepsNosuidNodev(MS.REMOUNT | MS.BIND | MS.NOSUID | MS.NODEV | MS.RDONLY)).toBe(true);
    expect(remountKeepsNosuidNodev(MS.REMOUNT | MS.BIND | MS.NOSUID)).toBe(false);
    expect(remountKeepsNosuidNodev(MS.REMOUNT | MS.BIND | MS.NODEV)).toBe(false);
    expect(remountKeepsNosuidNodev(MS.REMOUNT)).toBe(false);
  });

  it('maps the per-mount flags a new mount asks for to the broker attribute names', () => {
    expect(requestedAttrs(0)).toEqual([]);
    expect(requestedAttrs(MS.NOEXEC | MS.NODIRATIME | MS.NOSYMFOLLOW)).toEqual(['noexec', 'nodiratime', 'nosymfollow']);
    expect(requestedAttrs(MS.NOATIME | MS.STRICTATIME)).toEqual(['noatime']);
    expect(requestedAttrs(MS.STRICTATIME)).toEqual(['strictatime']);
    expect(requestedAttrs(MS.RELATIME)).toEqual(['relatime']);
    // suid/dev cannot be asked for: their absence is not an attribute, nosuid,nodev are forced
    expect(requestedAttrs(MS.NOSUID | MS.NODEV | MS.RDONLY)).toEqual([]);
  });
});
