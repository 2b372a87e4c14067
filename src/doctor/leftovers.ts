/**
 * What crashes and vanished instances and containers leave behind, as gc sees it
 * (machine-gc.ts previewGc: the rules of every pass gc runs, read-only): instances of
 * containers that are gone, devices still tagged for instances that no longer exist, stale
 * or missing nodes inside instances, and instance states nobody can read. gc settles the
 * first three at any time; the last needs a human.
 */
import { runtimeDir } from '../instance/runtime.js';
import { GC_FIX, type Check, type DoctorContext } from './check.js';
import { previewGc, type GcLeftover } from './machine-gc.js';

type LeftoverKind = GcLeftover['kind'];
type Leftover<K extends LeftoverKind = LeftoverKind> = Extract<GcLeftover, { kind: K }>;

const seen = new WeakMap<DoctorContext, GcLeftover[] | Error>();

/** One gc preview per doctor run, shared by the checks below (one consistent view). */
function leftovers(ctx: DoctorContext): GcLeftover[] | Error {
  let v = seen.get(ctx);
  if (v === undefined) {
    try {
      v = previewGc(ctx.env);
    } catch (e) {
      v = e instanceof Error ? e : new Error(String(e));
    }
    seen.set(ctx, v);
  }
  return v;
}

type InstanceLeftover = Leftover<Exclude<LeftoverKind, 'vanished-container'>>;

const dev = (l: InstanceLeftover) => `loop${l.minor}${l.bound ? ' (bound)' : ''}`;

const describeInstance: Record<InstanceLeftover['kind'], (l: InstanceLeftover) => string> = {
  'orphan-device': (l) => `${dev(l)}: tagged for instance ${l.id} (${l.dir}), which no longer exists`,
  'vanished-instance': (l) => `${l.dir}: registered instance ${l.id} is gone`,
  'junk-claim': (l) => `claim file loop${l.minor} does not parse`,
  'unrecorded-claim': (l) => `${l.dir}: ${dev(l)} claimed but not recorded (a crash while reserving)`,
  'unclaimed-device': (l) => `${l.dir}: ${dev(l)} recorded without the instance's claim`,
  'half-released': (l) => `${l.dir}: ${dev(l)} half-released`,
  'missing-node': (l) => `${l.dir}/loop${l.minor}: node missing or wrong`,
  'stray-node': (l) => `${l.dir}/${l.name}: not a node of any device the instance holds`,
  'unreadable-instance': (l) => `${l.dir}: instance ${l.id} has a state that cannot be read`,
  'unregistered-instance': (l) => `${l.dir}: instance ${l.id} holds devices but is not registered (its registry entry was lost)`,
};

/** One finding in one line. */
function describe(l: GcLeftover): string {
  if (l.kind === 'vanished-container') return `${l.dir}: container ${l.container} is gone; its instance is still there`;
  return describeInstance[l.kind](l);
}

function leftoverCheck(id: string, title: string, kinds: LeftoverKind[], okDetail: string, problem: (n: number) => string): Check {
  return {
    id,
    title,
    run(ctx) {
      // instance states are root's (DIR/.loopfs is 0700): anybody else would see every
      // instance as unreadable
      if (!ctx.root) return { status: 'skip', detail: `needs root (instance states and ${runtimeDir(ctx.env)} are root's)` };
      const all = leftovers(ctx);
      if (all instanceof Error) return { status: 'fail', detail: `cannot read ${runtimeDir(ctx.env)}: ${all.message}` };
      const found = all.filter((l) => kinds.includes(l.kind));
      if (found.length === 0) return { status: 'ok', detail: okDetail };
      return { status: 'fail', detail: problem(found.length), items: found.map(describe), fix: GC_FIX };
    },
  };
}

export const orphanDevicesCheck = leftoverCheck(
  'orphan-devices',
  'devices of vanished instances',
  ['vanished-container', 'orphan-device', 'vanished-instance', 'junk-claim'],
  'every tagged device belongs to a live instance',
  (n) => `${n} leftover(s) of containers or instances that no longer exist`,
);

export const staleNodesCheck = leftoverCheck(
  'stale-nodes',
  'instance nodes and records',
  ['unrecorded-claim', 'unclaimed-device', 'half-released', 'missing-node', 'stray-node', 'unregistered-instance'],
  'every instance node matches a device it holds',
  (n) => `${n} stale node(s) or record(s) inside instances`,
);

export const unreadableCheck: Check = {
  id: 'instance-state',
  title: 'instance states',
  run(ctx) {
    if (!ctx.root) return { status: 'skip', detail: 'needs root (instance states are root\'s)' };
    const all = leftovers(ctx);
    if (all instanceof Error) return { status: 'skip', detail: 'see devices of vanished instances' };
    const bad = all.filter((l) => l.kind === 'unreadable-instance');
    if (bad.length === 0) return { status: 'ok', detail: 'every registered instance state reads' };
    // The instance is unusable either way; removing its state makes gc treat it as
    // vanished and give its devices back. Never automatic: somebody may want to look first.
    return {
      status: 'fail',
      detail: `${bad.length} instance(s) with a state that cannot be read (gc leaves them alone)`,
      items: bad.map(describe),
      fix: { command: `rm -r ${bad[0].dir}/.loopfs && loopfs gc`, safe: false },
    };
  },
};
