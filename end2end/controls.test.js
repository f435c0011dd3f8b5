// The rollout page while a rollout runs, against a real fleet: a reload and a Baton restart in
// the middle lose and duplicate nothing; pause, resume, abort and roll back do what they say.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startFleet, launchBrowser, openHydrated, screenshotPath, signedInContext, watchErrors } from './harness.js';

let fleet;
let browser;
/** Signed in as the deployer: every page shares its cookie. */
let context;

before(async () => {
  // Every version here is `slowstart` (3 s to listen): a rollout lasts ~10 s, long enough to act.
  fleet = await startFleet({ startTimeout: '6s' });
  browser = await launchBrowser();
  context = await signedInContext(browser, fleet, 'deployer');
});

after(async () => {
  await browser?.close();
  await fleet?.stop();
});

async function waitStatus(page, status, timeout = 60_000) {
  await page.locator(`.page-head [data-status="${status}"]`).waitFor({ timeout });
}

/** Asserts the page shows exactly the API's steps, once each, with the same outcomes. */
async function assertTimelineMatchesApi(page, id) {
  const api = await fleet.api(`/api/deployments/${id}`);
  const shown = await page.locator('[data-step-id]').evaluateAll((steps) => steps.map((s) => ({
    id: Number(s.dataset.stepId),
    step: s.dataset.step,
    outcome: s.dataset.outcome,
    row: s.closest('[data-row]').dataset.row,
  })));
  const ids = shown.map((s) => s.id);
  assert.equal(new Set(ids).size, ids.length, `duplicate steps on the page: ${ids}`);
  const byId = (a, b) => a.id - b.id;
  assert.deepEqual(
    [...shown].sort(byId),
    api.steps.map((s) => ({ id: s.id, step: s.step, outcome: s.outcome ?? 'running', row: s.backend ?? '' })).sort(byId),
  );
  return api;
}

test('a reload in the middle of a rollout shows the whole timeline, without duplicates', async () => {
  const id = await fleet.deploy('v2-slowstart');
  const page = await context.newPage();
  const errors = watchErrors(page);
  await openHydrated(page, `${fleet.url}/deployments/${id}`);
  // Wait until web2 is being replaced: web1 is done, web3 untouched.
  await page.locator('[data-row="web2"] [data-step]').first().waitFor({ timeout: 20_000 });
  assert.equal((await fleet.api(`/api/deployments/${id}`)).status, 'running');

  // Before any wasm runs, the server's HTML already has the steps so far.
  const html = await (await fetch(`${fleet.url}/deployments/${id}`, {
    headers: { authorization: `Bearer ${fleet.token}` },
  })).text();
  assert.match(html, /data-row="web1"[\s\S]*data-step="confirm_up"/);

  await page.reload();
  await page.waitForSelector('html[data-hydrated="true"]', { timeout: 15_000 });
  await page.getByTestId('connection').filter({ hasText: 'Live' }).waitFor({ timeout: 10_000 });
  await waitStatus(page, 'succeeded');
  await page.locator('[data-row="web3"] [data-step="confirm_up"][data-outcome="ok"]').waitFor({ timeout: 5_000 });
  await assertTimelineMatchesApi(page, id);
  assert.deepEqual(errors, []);
  await page.close();
});

test('Baton restarting in the middle: the page reconnects and replays exactly what it missed', async () => {
  const id = await fleet.deploy('v3-slowstart');
  const page = await context.newPage();
  await openHydrated(page, `${fleet.url}/deployments/${id}`);
  await page.getByTestId('connection').filter({ hasText: 'Live' }).waitFor({ timeout: 10_000 });
  await page.locator('[data-row="web1"] [data-step="start"]').waitFor({ timeout: 20_000 });
  await page.evaluate(() => { window.__sameDocument = true; });

  // A crash (SIGKILL): the backends and HAProxy keep running; a new Baton resumes the rollout.
  await fleet.restartBaton({ signal: 'SIGKILL' });
  await waitStatus(page, 'succeeded', 60_000);
  await page.getByTestId('connection').filter({ hasText: 'Live' }).waitFor({ timeout: 10_000 });
  assert.equal(await page.evaluate(() => window.__sameDocument), true, 'the page reloaded');
  await assertTimelineMatchesApi(page, id);
  await page.close();
});

test('pause takes effect after the current backend, and resume carries on', async () => {
  const id = await fleet.deploy('v4-slowstart');
  const page = await context.newPage();
  const errors = watchErrors(page);
  await openHydrated(page, `${fleet.url}/deployments/${id}`);
  await page.getByTestId('connection').filter({ hasText: 'Live' }).waitFor({ timeout: 10_000 });
  await page.locator('[data-row="web1"] [data-step]').first().waitFor({ timeout: 10_000 });

  const pause = page.getByRole('button', { name: 'Pause' });
  const resume = page.getByRole('button', { name: 'Resume' });
  assert.equal(await resume.isDisabled(), true, 'Resume applies only to a paused rollout');
  await pause.click();
  const pending = page.getByTestId('pending');
  await pending.filter({ hasText: 'Pause requested' }).waitFor({ timeout: 5_000 });
  assert.equal(await pause.isDisabled(), true);

  // A reload while web1's new version is still starting: the pause is still queued, and the
  // page says so (the server renders it, before any live event could).
  assert.equal((await fleet.api(`/api/deployments/${id}`)).status, 'running', 'the pause is still pending');
  await page.reload();
  await page.waitForSelector('html[data-hydrated="true"]', { timeout: 15_000 });
  assert.match(await pending.textContent({ timeout: 1_000 }), /^Pause requested by dora: /);
  assert.equal(await pause.isDisabled(), true, 'a pause already asked for is not offered again');
  await page.getByTestId('connection').filter({ hasText: 'Live' }).waitFor({ timeout: 10_000 });

  await waitStatus(page, 'paused', 20_000);
  await pending.waitFor({ state: 'detached', timeout: 5_000 });
  assert.equal(await page.locator('[data-row="web1"] [data-testid="row-state"]').textContent(), 'Done: runs v4-slowstart');
  assert.equal(await resume.isDisabled(), false);
  assert.equal(await pause.isDisabled(), true);
  // Paused means paused: the next backend is not touched.
  await page.waitForTimeout(1_000);
  assert.equal(await page.locator('[data-row="web2"] [data-step]').count(), 0);
  await page.screenshot({ path: screenshotPath('rollout-paused.png'), fullPage: true });

  await resume.focus();
  await page.keyboard.press('Enter');
  await waitStatus(page, 'running', 10_000);
  await waitStatus(page, 'succeeded');
  await assertTimelineMatchesApi(page, id);
  assert.deepEqual(errors, []);
  await page.close();
});

test('abort asks first, stops after the current step, and leaves every backend serving', async () => {
  const id = await fleet.deploy('v5-slowstart');
  const page = await context.newPage();
  const errors = watchErrors(page);
  await openHydrated(page, `${fleet.url}/deployments/${id}`);
  await page.getByTestId('connection').filter({ hasText: 'Live' }).waitFor({ timeout: 10_000 });
  // Abort while web1 is out of rotation, its new version starting.
  await page.locator('[data-row="web1"] [data-step="start"]').waitFor({ timeout: 20_000 });

  await page.getByRole('button', { name: 'Abort', exact: true }).click();
  const dialog = page.getByRole('alertdialog');
  await dialog.waitFor({ timeout: 2_000 });
  assert.match(await dialog.textContent(), /Abort this rollout\?/);
  // Escape keeps the rollout going.
  await page.keyboard.press('Escape');
  await dialog.waitFor({ state: 'detached', timeout: 2_000 });
  await page.getByRole('button', { name: 'Abort', exact: true }).click();
  assert.equal(await page.evaluate(() => document.activeElement?.textContent), 'Abort rollout');
  await page.keyboard.press('Enter');
  await page.getByTestId('pending').filter({ hasText: 'Abort requested' }).waitFor({ timeout: 5_000 });

  await waitStatus(page, 'cancelled', 30_000);
  assert.match(await page.getByTestId('result').textContent(), /^Cancelled: /);
  for (const row of ['web2', 'web3']) {
    assert.equal(await page.locator(`[data-row="${row}"] [data-testid="row-state"]`).textContent(), 'Not changed');
  }
  await assertTimelineMatchesApi(page, id);
  await page.screenshot({ path: screenshotPath('rollout-aborted.png'), fullPage: true });

  // Every backend is UP on the dashboard.
  await page.getByRole('link', { name: 'Services' }).click();
  await page.waitForFunction(() => {
    const states = [...document.querySelectorAll('[data-service="web"] [data-lb-status]')];
    return states.length === 3 && states.every((s) => s.textContent === 'UP');
  }, null, { timeout: 15_000 });
  await fleet.waitAllUp();
  assert.deepEqual(errors, []);
  await page.close();
});

test('roll back starts a rollout to the previous good version', async () => {
  const services = await fleet.api('/api/services');
  const target = services[0].rollback_version;
  assert.ok(target, 'the service has a version to go back to');
  const { deployments } = await fleet.api('/api/deployments?limit=1');
  const page = await context.newPage();
  const errors = watchErrors(page);
  await openHydrated(page, `${fleet.url}/deployments/${deployments[0].id}`);

  const button = page.getByRole('button', { name: `Roll back to ${target}` });
  await button.waitFor({ timeout: 5_000 });
  await button.click();
  await page.getByRole('alertdialog').filter({ hasText: `Roll web back to ${target}?` }).waitFor();
  await page.getByRole('button', { name: 'Roll back', exact: true }).click();
  await page.waitForURL((url) => url.pathname !== `/deployments/${deployments[0].id}`, { timeout: 10_000 });
  const id = Number(new URL(page.url()).pathname.split('/').pop());
  assert.ok(id > deployments[0].id);
  await page.getByRole('heading', { name: `Rollout #${id} · web` }).waitFor();
  await waitStatus(page, 'succeeded');
  assert.equal((await fleet.api(`/api/deployments/${id}`)).trigger, 'rollback');
  assert.match(await page.locator('.facts').textContent(), /Rollback/);
  await fleet.waitAllUp({ version: target });
  assert.deepEqual(errors, []);
  await page.close();
});
