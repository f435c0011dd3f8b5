// Starts a real Baton and a real Chromium for the end-to-end tests, and cleans both up.

import { spawn } from 'node:child_process';
import { mkdtempSync, writeFileSync, mkdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const here = dirname(fileURLToPath(import.meta.url));
export const artifacts = join(here, 'artifacts');

const started = new Set();
process.on('exit', () => {
  for (const child of started) child.kill('SIGKILL');
});

/** Runs `baton serve` on a fresh folder and port; resolves once it prints its address. */
export async function startBaton(config, { timeoutMs = 30_000 } = {}) {
  const bin = process.env.BATON_BIN;
  if (!bin) throw new Error('BATON_BIN must name the baton binary (scripts/dev test sets it)');
  const dir = mkdtempSync(join(tmpdir(), 'baton-e2e-'));
  const configPath = join(dir, 'baton.toml');
  writeFileSync(configPath, config);
  const child = spawn(bin, ['serve', '--config', configPath], {
    env: { ...process.env, BATON_LISTEN: '127.0.0.1:0', RUST_LOG: process.env.RUST_LOG ?? 'warn' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  started.add(child);
  let stderr = '';
  child.stderr.on('data', (chunk) => { stderr += chunk; });
  const url = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`Baton did not start within ${timeoutMs} ms:\n${stderr}`)), timeoutMs);
    let stdout = '';
    child.stdout.on('data', (chunk) => {
      stdout += chunk;
      const found = stdout.match(/Baton is serving on (http:\/\/\S+)/);
      if (found) { clearTimeout(timer); resolve(found[1]); }
    });
    child.on('exit', (code) => { clearTimeout(timer); reject(new Error(`Baton exited with ${code}:\n${stderr}`)); });
  });
  return {
    url,
    dir,
    async stop() {
      if (child.exitCode === null) {
        const exited = new Promise((resolve) => child.once('exit', resolve));
        child.kill('SIGTERM');
        await exited;
      }
      started.delete(child);
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** Debian's Chromium, headless, with no background traffic (playwright gives it a fresh profile). */
export async function launchBrowser() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM_BIN ?? '/usr/bin/chromium',
    args: [
      '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
    ],
  });
}

/** Opens `url` and waits until the wasm client has loaded and hydrated the page. */
export async function openHydrated(page, url) {
  const wasm = page.waitForResponse((response) => response.url().endsWith('.wasm') && response.ok());
  await page.goto(url);
  await wasm;
  await page.waitForSelector('html[data-hydrated="true"]', { timeout: 15_000 });
}

export function screenshotPath(name) {
  mkdirSync(artifacts, { recursive: true });
  return join(artifacts, name);
}
