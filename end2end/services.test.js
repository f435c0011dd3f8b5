// The Services page in a real browser: server-rendered, then hydrated and interactive.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { batonConfig, startBaton, launchBrowser, openHydrated, screenshotPath, signedInContext } from './harness.js';

const idle = { kind: 'process', command: ['true'] };
const CONFIG = batonConfig([
  { name: 'api', runtime: idle, backends: { s1: 18001 } },
  { name: 'worker', runtime: idle, backends: { w1: 18011 } },
]);

let baton;
let browser;
/** Signed in as the deployer: every page shares its cookie. */
let context;

before(async () => {
  baton = await startBaton(CONFIG);
  browser = await launchBrowser();
  context = await signedInContext(browser, baton, 'deployer');
});

after(async () => {
  await browser?.close();
  await baton?.stop();
});

test('the filter narrows the service list once the client has hydrated', async () => {
  const page = await context.newPage();
  const errors = [];
  page.on('pageerror', (error) => errors.push(error.message));
  await openHydrated(page, baton.url);

  const count = page.locator('[data-testid="service-count"]');
  assert.equal(await count.textContent(), 'Showing 2 of 2 services');

  await page.getByLabel('Filter').fill('work');
  await page.waitForFunction(
    () => document.querySelector('[data-testid="service-count"]')?.textContent === 'Showing 1 of 2 services',
    null,
    { timeout: 5_000 },
  );
  // The other card is hidden, not rebuilt each time the filter lets it through again.
  assert.deepEqual(await page.locator('.services > [data-service]:not([hidden])').evaluateAll((cards) => cards.map((c) => c.dataset.service)), ['worker']);
  assert.equal(await page.locator('.services > [data-service="api"]').isVisible(), false);
  await page.screenshot({ path: screenshotPath('services.png'), fullPage: true });
  assert.deepEqual(errors, []);
});

test('navigation happens in the client without reloading the page', async () => {
  const page = await context.newPage();
  await openHydrated(page, baton.url);
  await page.evaluate(() => { window.__sameDocument = true; });

  await page.getByRole('link', { name: 'Deployments' }).click();
  await page.getByRole('heading', { name: 'Deployments' }).waitFor();
  assert.equal(new URL(page.url()).pathname, '/deployments');
  assert.equal(await page.evaluate(() => window.__sameDocument), true, 'the click reloaded the page');
  assert.equal(await page.title(), 'Deployments · Baton');
});
