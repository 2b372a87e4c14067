/**
 * What an OCI hook learns about its container: the runtime's state on stdin (`id`, `pid`,
 * `bundle`, `annotations`) and the bundle's `config.json` (root path, annotations, ID
 * mappings, device-cgroup rules, capabilities). Only the fields loopfs uses are read, and
 * each is checked: a malformed document is an error, never a guess.
 */
import { readFileSync } from 'node:fs';
import { isAbsolute, resolve } from 'node:path';

export class OciError extends Error {}

export interface IdMapping {
  containerID: number;
  hostID: number;
  size: number;
}

export interface DeviceRule {
  allow: boolean;
  type?: string;
  major?: number | null;
  minor?: number | null;
  access?: string;
}

export interface OciState {
  id: string;
  status: string;
  /** Container init in the hook's PID namespace; absent at poststop. */
  pid: number | null;
  bundle: string;
  annotations: Record<string, string>;
}

export interface BundleConfig {
  /** Absolute host path of the container's root filesystem. */
  rootPath: string;
  annotations: Record<string, string>;
  uidMappings: IdMapping[];
  gidMappings: IdMapping[];
  deviceRules: DeviceRule[];
  boundingCaps: string[];
}

/**
 * A container id that is safe as a single path component under the runtime directory:
 * podman and runc use 64 hex digits; anything with a slash, a leading dot or odd bytes
 * is refused.
 */
export const CONTAINER_ID = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$/;

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function stringMap(v: unknown, what: string): Record<string, string> {
  if (v === undefined || v === null) return {};
  if (!isObject(v)) throw new OciError(`${what}: expected an object`);
  const out: Record<string, string> = {};
  for (const [k, val] of Object.entries(v)) if (typeof val === 'string') out[k] = val;
  return out;
}

export function parseState(text: string): OciState {
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch {
    throw new OciError('OCI state on stdin is not JSON');
  }
  if (!isObject(doc)) throw new OciError('OCI state on stdin is not a JSON object');
  const { id, status, pid, bundle } = doc;
  if (typeof id !== 'string' || !CONTAINER_ID.test(id)) throw new OciError(`OCI state: invalid container id ${JSON.stringify(id)}`);
  if (typeof bundle !== 'string' || !isAbsolute(bundle)) throw new OciError('OCI state: bundle must be an absolute path');
  const p = typeof pid === 'number' && Number.isInteger(pid) && pid > 0 ? pid : null;
  return { id, status: typeof status === 'string' ? status : '', pid: p, bundle, annotations: stringMap(doc.annotations, 'OCI state annotations') };
}

function mappings(v: unknown, what: string): IdMapping[] {
  if (v === undefined || v === null) return [];
  if (!Array.isArray(v)) throw new OciError(`config.json ${what}: expected a list`);
  return v.map((m) => {
    const ok = isObject(m) && [m.containerID, m.hostID, m.size].every((n) => typeof n === 'number' && Number.isInteger(n) && n >= 0);
    if (!ok) throw new OciError(`config.json ${what}: invalid entry ${JSON.stringify(m)}`);
    return { containerID: m.containerID as number, hostID: m.hostID as number, size: m.size as number };
  });
}

export function parseConfig(text: string, bundle: string): BundleConfig {
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch {
    throw new OciError(`${bundle}/config.json is not JSON`);
  }
  if (!isObject(doc)) throw new OciError(`${bundle}/config.json is not a JSON object`);
  const root = isObject(doc.root) ? doc.root.path : undefined;
  if (typeof root !== 'string' || root === '') throw new OciError(`${bundle}/config.json: no root.path`);
  const linux = isObject(doc.linux) ? doc.linux : {};
  const resources = isObject(linux.resources) ? linux.resources : {};
  const rules = Array.isArray(resources.devices) ? resources.devices.filter(isObject) : [];
  const proc = isObject(doc.process) ? doc.process : {};
  const caps = isObject(proc.capabilities) && Array.isArray(proc.capabilities.bounding) ? proc.capabilities.bounding : [];
  return {
    rootPath: isAbsolute(root) ? root : resolve(bundle, root),
    annotations: stringMap(doc.annotations, 'config.json annotations'),
    uidMappings: mappings(linux.uidMappings, 'linux.uidMappings'),
    gidMappings: mappings(linux.gidMappings, 'linux.gidMappings'),
    deviceRules: rules.map((r) => ({
      allow: r.allow === true,
      type: typeof r.type === 'string' ? r.type : undefined,
      major: typeof r.major === 'number' ? r.major : null,
      minor: typeof r.minor === 'number' ? r.minor : null,
      access: typeof r.access === 'string' ? r.access : undefined,
    })),
    boundingCaps: caps.filter((c): c is string => typeof c === 'string'),
  };
}

export function readConfig(bundle: string): BundleConfig {
  let text: string;
  try {
    text = readFileSync(`${bundle}/config.json`, 'utf8');
  } catch (e) {
    throw new OciError(`${bundle}/config.json: ${(e as Error).message}`);
  }
  return parseConfig(text, bundle);
}

/**
 * The host ID that container ID `id` maps to; the identity when there is no mapping
 * (no user namespace: the container's root is the host's root).
 */
export function hostIdOf(id: number, maps: IdMapping[]): number | null {
  if (maps.length === 0) return id;
  for (const m of maps) if (id >= m.containerID && id < m.containerID + m.size) return m.hostID + (id - m.containerID);
  return null;
}

/**
 * Whether the device cgroup lets the container open block devices of `major` (the last
 * matching rule wins, as runc applies them). A rule of type "a" or without a major covers
 * every device.
 */
export function cgroupAllowsBlockMajor(rules: DeviceRule[], major: number): boolean {
  let allowed = false;
  for (const r of rules) {
    const type = r.type ?? 'a';
    if (type !== 'a' && type !== 'b') continue;
    if (r.major !== null && r.major !== undefined && r.major !== -1 && r.major !== major) continue;
    // a rule for one minor does not decide the question for the major as a whole
    if (r.minor !== null && r.minor !== undefined && r.minor !== -1 && r.allow) continue;
    const access = r.access ?? 'rwm';
    if (r.allow && !(access.includes('r') && access.includes('w'))) continue;
    allowed = r.allow;
  }
  return allowed;
}
