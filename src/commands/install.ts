import { Flags } from '@oclif/core';
import { LoopfsCommand } from '../cli/base-command.js';
import { defaultRecord, HELPER_DIR, install, InstallError, type InstallRecord } from '../install/install.js';

export default class Install extends LoopfsCommand {
  static summary = 'Install mount.loop for mount(8), losetup where you choose, and the manual pages.';
  static description =
    `Links mount.loop into ${HELPER_DIR} (where mount(8) looks for helpers; /usr/sbin on Debian) and losetup into ` +
    'PREFIX/sbin, copies the man pages to PREFIX/share/man/man8, and records every change for `loopfs uninstall`. ' +
    "util-linux's /usr/sbin/losetup is only replaced with --replace-losetup, after a backup to /usr/sbin/losetup.util-linux.";
  static examples = [
    '<%= config.bin %> install',
    '<%= config.bin %> install --no-losetup',
    '<%= config.bin %> install --replace-losetup',
    '<%= config.bin %> install --oci-hooks /etc/containers/oci/hooks.d',
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
  };

  async run(): Promise<InstallRecord> {
    const { flags } = await this.parse(Install);
    try {
      const rec = install({
        prefix: flags.prefix,
        helperDir: flags['helper-dir'],
        losetupDir: flags['no-losetup'] ? null : (flags['losetup-dir'] ?? `${flags.prefix}/sbin`),
        replaceLosetup: flags['replace-losetup'],
        record: flags.record ?? defaultRecord(),
        ociHooksDir: flags['oci-hooks'] ?? null,
      });
      for (const c of rec.changes) {
        if (c.kind === 'symlink') this.log(`${c.path} -> ${c.target}`);
        else if (c.kind === 'file') this.log(c.path);
        else if (c.kind === 'backup') this.log(`${c.path} saved as ${c.backup}`);
      }
      return rec;
    } catch (e) {
      if (e instanceof InstallError) this.fail(e.message);
      throw e;
    }
  }
}
