// Shared by the browser scripts: a free port, herald started and stopped, and a headless
// Chromium with the flags this machine needs (no background networking: the network is closed).
import { chromium } from 'playwright-core';
import { spawn } from 'node:child_process';
import { createServer } from 'node:net';
import assert from 'node:assert/strict';

const bin = process.env.HERALD_BIN;
assert.ok(bin, 'HERALD_BIN must point at the herald binary');

export function freePort() {
  return new Promise((resolve, reject) => {
    const probe = createServer();
    probe.once('error', reject);
    probe.listen(0, '127.0.0.1', () => {
      const { port } = probe.address();
      probe.close(() => resolve(port));
    });
  });
}

export function startHerald(port, dataDir, flags = []) {
  return new Promise((resolve, reject) => {
    const child = spawn(bin, ['--listen', `127.0.0.1:${port}`, '--data', dataDir, ...flags], {
      stdio: ['ignore', 'pipe', 'inherit'],
      env: { ...process.env, RUST_LOG: 'herald=warn' },
    });
    child.once('error', reject);
    child.stdout.once('data', (line) => {
      if (String(line).startsWith('herald listening')) resolve(child);
      else reject(new Error(`unexpected output: ${line}`));
    });
  });
}

export function stopped(child) {
  return new Promise((resolve) => child.once('exit', resolve));
}


export function launchChromium(profile, extraArgs = []) {
  return chromium.launchPersistentContext(profile, {
    executablePath: '/usr/bin/chromium',
    headless: true,
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      ...extraArgs,
    ],
  });
}
