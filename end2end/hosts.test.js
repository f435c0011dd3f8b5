// The fleet view groups backends by the host they run on, and says so when a host cannot be
// reached instead of showing what Baton saw before.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { writeFileSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { batonConfig, freePort, startBaton, launchBrowser, openHydrated, screenshotPath, signedInContext } from './harness.js';

const keys = mkdtempSync(join(tmpdir(), 'baton-e2e-hosts-'));
writeFileSync(join(keys, 'known_hosts'), '');
// Nothing listens on this port of the loopback: the host is refused at once, on this machine.
const sshPort = await freePort();
const CONFIG = `${batonConfig([
  {
    name: 'web',
    runtime: { kind: 'process', command: ['true'] },
    backends: { web1: 18101, web2: { port: 18102, host: 'app1' }, web3: { port: 18103, host: 'app1' } },
  },
])}
[[host]]
name = "app1"
ssh = "deploy@127.0.0.1:${sshPort}"
known_hosts = ${JSON.stringify(join(keys, 'known_hosts'))}
`;

let baton;
let browser;
let context;

before(async () => {
  baton = await startBaton(CONFIG);
  browser = await launchBrowser();
  context = await signedInContext(browser, baton, 'viewer');
});

after(async () => {
  await browser?.close();
  await baton?.stop();
});

test('backends are grouped by host, and a host out of reach says so live', async () => {
  const page = await context.newPage();
  const errors = [];
  page.on('pageerror', (error) => errors.push(error.message));
  await openHydrated(page, baton.url);

  const reachability = page.locator('[data-host="app1"] [data-testid="host-reachability"]');
  await page.waitForFunction(
    () => document.querySelector('[data-host="app1"] [data-testid="host-reachability"]')?.textContent === 'unreachable',
    null,
    { timeout: 15_000 },
  );
  assert.equal(await reachability.textContent(), 'unreachable');
  assert.match(await page.locator('[data-host="app1"] [data-testid="host-error"]').textContent(), /host app1 is unreachable/);

  // Rows in order: this machine's group, then app1's with its two backends.
  const rows = await page.locator('table.backends tbody tr').evaluateAll((trs) =>
    trs.map((tr) => (tr.dataset.host !== undefined ? `host:${tr.dataset.host}` : tr.dataset.backend)));
  assert.deepEqual(rows, ['host:', 'web1', 'host:app1', 'web2', 'web3']);
  for (const backend of ['web2', 'web3']) {
    assert.equal(
      await page.locator(`[data-backend="${backend}"] [data-testid="backend-unreachable"]`).textContent(),
      'unknown: host app1 is unreachable',
    );
  }
  assert.equal(await page.locator('[data-backend="web1"] [data-testid="backend-version"]').textContent(), 'v1');
  await page.waitForFunction(
    () => document.querySelector('[data-testid="version-summary"]')?.textContent === 'v1 on 1 of 3; 2 unknown: host out of reach',
    null,
    { timeout: 5_000 },
  );
  await page.screenshot({ path: screenshotPath('hosts.png'), fullPage: true });
  assert.deepEqual(errors, []);
});
