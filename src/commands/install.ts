import { Flags } from '@oclif/core';
import { LoopfsCommand } from '../cli/base-command.js';
import { ENGINES, EngineConfigError, parseEngines } from '../install/engines.js';
import { defaultRecord, HELPER_DIR, install, InstallError, type InstallResult } from '../install/install.js';

export default class Install extends LoopfsCommand {
  static summary = 'Install mount.loop for mount(8), losetup where you choose, and the manual pages.';
  static description =
    `Links mount.loop into ${HELPER_DIR} (where mount(8) looks for helpers; /usr/sbin on Debian) and losetup into ` +
    'PREFIX/sbin, copies the man pages to PREFIX/share/man/man8, and records every change for `loopfs uninstall`. ' +
    "util-linux's /usr/sbin/losetup is only replaced with --replace-losetup, after a backup to /usr/sbin/losetup.util-linux. " +
    '--runtime registers bin/loopfs-runtime as the runtime `loopfs` with Docker (daemon.json), containerd (config.toml) ' +
    'or podman (containers.conf.d/loopfs.conf) and writes /etc/loopfs/runtime.json when missing; it may follow an earlier install.';
  static examples = [
    '<%= config.bin %> install',
    '<%= config.bin %> install --no-losetup',
    '<%= config.bin %> install --replace-losetup',
    '<%= config.bin %> install --oci-hooks /etc/containers/oci/hooks.d',
    '<%= config.bin %> install --runtime docker,containerd,podman',
  ];
  static flags = {
    prefix: Flags.string({ default: '/usr/local', description: 'prefix for losetup and the man pages' }),
    'helper-dir': Flags.string({ default: HELPER_DIR, description: 'where mount(8) finds helpers' }),
    'losetup-dir': Flags.string({ description: 'where to link losetup (default: PREFIX/sbin)' }),
    'no-losetup': Flags.boolean({ description: 'do not install losetup' }),
    'replace-losetup': Flags.boolean({ description: "replace util-linux's /usr/sbin/losetup (kept as a backup)" }),
    record: Flags.string({ description: 'where to record the changes (default: /var/lib/loopfs/install.json)' }),
    'oci-hooks': Flags.string({
      description: 'also write the OCI hook files (loopfs oci-hook) into this hooks directory, e.g. /etc/containers/oci/hooks.d',
    }),
    runtime: Flags.string({
      multiple: true,
      description: `register bin/loopfs-runtime as runtime loopfs with these engines (${ENGINES.join(', ')}; repeat or comma list)`,
    }),
    'docker-config': Flags.string({ description: "Docker's daemon.json (default: /etc/docker/daemon.json)" }),
    'containerd-config': Flags.string({ description: "containerd's config.toml (default: /etc/containerd/config.toml)" }),
    'containers-conf-dir': Flags.string({ description: "podman's drop-in directory (default: /etc/containers/containers.conf.d)" }),
    'runtime-config': Flags.string({ description: "the wrapper's configuration (default: /etc/loopfs/runtime.json)" }),
  };

  async run(): Promise<InstallResult> {
    const { flags } = await this.parse(Install);
    try {
      const result = install({
        prefix: flags.prefix,
        helperDir: flags['helper-dir'],
        losetupDir: flags['no-losetup'] ? null : (flags['losetup-dir'] ?? `${flags.prefix}/sbin`),
        replaceLosetup: flags['replace-losetup'],
        record: flags.record ?? defaultRecord(),
        ociHooksDir: flags['oci-hooks'] ?? null,
        runtimes: parseEngines(flags.runtime ?? []),
        dockerConfig: flags['docker-config'],
        containerdConfig: flags['containerd-config'],
        containersConfDir: flags['containers-conf-dir'],
        runtimeConfig: flags['runtime-config'],
      });
      for (const c of result.added) {
        if (c.kind === 'symlink') this.log(`${c.path} -> ${c.target}`);
        else if (c.kind === 'file') this.log(c.path);
        else if (c.kind === 'backup') this.log(`${c.path} saved as ${c.backup}`);
        else if (c.kind === 'edit') this.log(`${c.path}: runtime loopfs added`);
      }
      for (const n of result.notes) this.log(n);
      return result;
    } catch (e) {
      if (e instanceof InstallError || e instanceof EngineConfigError) this.fail(e.message);
      throw e;
    }
  }
}
