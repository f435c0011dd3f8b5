// The top bar's line on replicas in a real browser: server-rendered, then kept current by the
// hydrated client (it asks again every 5 s, so a takeover shows without a reload).

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { batonConfig, startBaton, launchBrowser, openHydrated, signedInContext, watchErrors } from './harness.js';

const idle = { kind: 'process', command: ['true'] };
const CONFIG = batonConfig([{ name: 'api', runtime: idle, backends: { s1: 18001 } }]);

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

test('the top bar says which replica answers and that it leads, and keeps asking', async () => {
  const view = await (await fetch(`${baton.url}/api/replica`, {
    headers: { authorization: `Bearer ${baton.token}` },
  })).json();
  const page = await context.newPage();
  const errors = watchErrors(page);
  await openHydrated(page, baton.url);

  const line = page.locator('[data-testid="replica"]');
  assert.equal(await line.getAttribute('data-role'), 'leader');
  assert.equal(await page.locator('[data-testid="replica-name"]').textContent(), view.replica);
  assert.equal(await page.locator('[data-testid="replica-leader"]').textContent(), 'this replica leads');
  assert.match(await page.locator('[data-testid="replica-since"]').textContent(), /^ since \S/);

  // The hydrated client asks again (the server function behind the line) within its period.
  await page.waitForRequest((request) => request.url().endsWith('/rpc/replica_status'), { timeout: 8_000 });
  await page.waitForFunction(
    () => document.querySelector('[data-testid="replica-leader"]')?.textContent === 'this replica leads',
    null,
    { timeout: 5_000 },
  );
  assert.deepEqual(errors, []);
});

test('every page hydrates with the replica line in the bar', async () => {
  const page = await context.newPage();
  const errors = watchErrors(page);
  for (const path of ['/', '/deployments']) {
    await openHydrated(page, `${baton.url}${path}`);
    assert.equal(await page.locator('[data-testid="replica"]').count(), 1, path);
  }
  assert.deepEqual(errors, []);
});
