// A connection flood for the chaos soak (test/chaos/driver.ts): connects to a broker socket
// up to N times and never speaks, holding every connection open. Prints "connected K" after
// each connect, so the parent sees when a connect() blocks (the broker stopped accepting and
// the listen backlog is full). Then waits to be killed. CommonJS and the addon only: it must
// start fast and depend on nothing the soak checks.
//
//   node flood.cjs ADDON SOCKET N
'use strict';
const fs = require('node:fs');
const [addonPath, socket, countText] = process.argv.slice(2);
const a = require(addonPath);
const held = [];
for (let k = 0; k < Number(countText); k++) {
  try {
    held.push(a.seqpacketConnect(socket));
  } catch (e) {
    fs.writeSync(1, `error ${e.code || e.message}\n`);
    break;
  }
  fs.writeSync(1, `connected ${held.length}\n`);
}
fs.writeSync(1, 'done\n');
setInterval(() => {}, 60_000);
