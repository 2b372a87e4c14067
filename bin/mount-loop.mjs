#!/usr/bin/env node
// mount.loop as an ES module: `node bin/mount-loop.mjs <helper path as invoked> <helper args...>`.
// The helper mount(8) runs is bin/mount.loop itself (a CommonJS script, faster to start); this
// entry point stays for callers of the earlier shim's target and loads the ES bundle.
import { mountLoop } from '../dist/bundle/mount.loop.mjs';

process.exitCode = await mountLoop({ argv0: process.argv[2] ?? 'mount.loop', args: process.argv.slice(3) });
