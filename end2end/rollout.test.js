// A rollout driven from the web UI against a real fleet: HAProxy, three demo-app backends and
// Baton. Redeploy from the dashboard, watch the steps arrive live, see a failing version rolled
// back, and find both in the history.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startFleet, launchBrowser, openHydrated, screenshotPath, signedInContext, watchErrors } from './harness.js';

let fleet;
let browser;
/** Signed in as the deployer: every page shares its cookie. */
let context;

before(async () => {
  // `slowstart` versions take 3 s to listen: long enough to watch; 5 s is the health deadline.
  fleet = await startFleet({ startTimeout: '5s' });
  browser = await launchBrowser();
  context = await signedInContext(browser, fleet, 'deployer');
});

after(async () => {
  await browser?.close();
  await fleet?.stop();
});

/** The step ids shown on the rollout page, in page order. */
function shownStepIds(page) {
  return page.locator('[data-step-id]').evaluateAll((steps) => steps.map((s) => Number(s.dataset.stepId)));
}

/** Waits until the page's status badge says `status`. */
async function waitStatus(page, status, timeout = 60_000) {
  await page.locator(`.page-head [data-status="${status}"]`).waitFor({ timeout });
}

/** Opens the Redeploy form of `web` from the dashboard and asks for `version`. */
async function redeploy(page, version) {
  await page.getByRole('button', { name: 'Redeploy web' }).click();
  const input = page.getByLabel('Version');
  await input.fill(version);
  await page.getByRole('button', { name: 'Continue' }).click();
  await page.getByText(`Deploy ${version} to web (3 backends)?`).waitFor({ timeout: 5_000 });
  await page.getByRole('button', { name: 'Deploy', exact: true }).click();
}

test('Redeploy from the dashboard: steps appear live, then success and the new version everywhere', async () => {
  const page = await context.newPage();
  const errors = watchErrors(page);
  await openHydrated(page, fleet.url);
  await page.evaluate(() => { window.__sameDocument = true; });

  const card = page.locator('[data-service="web"]');
  assert.equal(await card.getByTestId('version-summary').textContent(), 'v1 on all 3 backends');
  assert.deepEqual(await card.locator('[data-lb-status]').allTextContents(), ['UP', 'UP', 'UP']);

  // The form opens on the version field, prefilled with the version last deployed.
  await page.getByRole('button', { name: 'Redeploy web' }).click();
  const input = page.getByLabel('Version');
  assert.equal(await input.inputValue(), 'v1');
  assert.equal(await page.evaluate(() => document.activeElement?.id), 'redeploy-web-version');
  // Escape closes it and gives the focus back to the button.
  await page.keyboard.press('Escape');
  await input.waitFor({ state: 'detached', timeout: 2_000 });
  assert.equal(await page.evaluate(() => document.activeElement?.textContent), 'Redeploy web');

  await redeploy(page, 'v2-slowstart');
  await page.waitForURL(/\/deployments\/\d+$/, { timeout: 10_000 });
  const id = Number(new URL(page.url()).pathname.split('/').pop());
  await page.getByRole('heading', { name: `Rollout #${id} · web` }).waitFor();

  // The page was rendered before web3 started; its steps can only arrive over the stream.
  const web3 = page.locator('[data-row="web3"]');
  const early = await web3.locator('[data-step]').count();
  assert.equal(early, 0, 'web3 had steps already: the rollout was not watched live');
  const lane = (name) => page.locator(`[data-testid="gantt"] [data-backend="${name}"]`);
  assert.equal(await lane('web3').locator('.bar').count(), 0, 'the chart had web3 bars already');
  await page.getByTestId('connection').filter({ hasText: 'Live' }).waitFor({ timeout: 10_000 });
  // A running step shows its elapsed time ticking.
  const running = page.locator('[data-outcome="running"]').first();
  await running.waitFor({ timeout: 20_000 });
  await web3.locator('[data-step="drain"]').waitFor({ timeout: 30_000 });
  await web3.locator('[data-step="confirm_up"][data-outcome="ok"]').waitFor({ timeout: 30_000 });
  await waitStatus(page, 'succeeded');
  assert.match(await page.getByTestId('result').textContent(), /Succeeded: every backend runs v2-slowstart/);
  for (const row of ['web1', 'web2', 'web3']) {
    assert.equal(await page.locator(`[data-row="${row}"] [data-testid="row-state"]`).textContent(), 'Done: runs v2-slowstart');
  }
  for (const label of ['Drain', 'Wait for sessions', 'Stop', 'Start', 'Healthy', 'LB check', 'Enabled']) {
    assert.equal(await web3.locator('.step-label', { hasText: label }).count() >= 1, true, `web3 lacks ${label}`);
  }

  // Exactly the steps the API has, once each.
  const api = await fleet.api(`/api/deployments/${id}`);
  const shown = await shownStepIds(page);
  assert.equal(new Set(shown).size, shown.length, `duplicate steps: ${shown}`);
  assert.deepEqual([...shown].sort((a, b) => a - b), api.steps.map((s) => s.id).sort((a, b) => a - b));
  // The Gantt chart grew live as well: every lane ends confirmed UP, one backend after another.
  for (const row of ['web1', 'web2', 'web3']) {
    await lane(row).locator('[data-step="confirm_up"][data-outcome="ok"]').waitFor({ timeout: 5_000 });
  }
  const extent = (name) => lane(name).locator('.bar').evaluateAll((bars) => bars.map((bar) => {
    const left = parseFloat(bar.style.left);
    return [left, left + parseFloat(bar.style.width)];
  }));
  const [web1Bars, web2Bars] = [await extent('web1'), await extent('web2')];
  const web1End = Math.max(...web1Bars.map(([, end]) => end));
  const web2Start = Math.min(...web2Bars.map(([start]) => start));
  // (Half a percent of slack: the narrowest bar is drawn 0.4 % wide.)
  assert.ok(web1End <= web2Start + 0.5, `web2 began at ${web2Start}% before web1 ended at ${web1End}%`);
  await page.screenshot({ path: screenshotPath('rollout-succeeded.png'), fullPage: true });

  // Back on the dashboard (client-side), every backend runs the new version and is UP.
  await page.getByRole('link', { name: 'Services' }).click();
  await page.getByRole('heading', { name: 'Services' }).waitFor();
  await page.waitForFunction(() => {
    const versions = [...document.querySelectorAll('[data-service="web"] [data-testid="backend-version"]')];
    return versions.length === 3 && versions.every((v) => v.textContent.trim() === 'v2-slowstart');
  }, null, { timeout: 10_000 });
  await page.waitForFunction(() => {
    const states = [...document.querySelectorAll('[data-service="web"] [data-lb-status]')];
    return states.length === 3 && states.every((s) => s.textContent === 'UP');
  }, null, { timeout: 10_000 });
  assert.equal(await page.evaluate(() => window.__sameDocument), true, 'the page reloaded');
  assert.deepEqual(errors, []);
  await page.close();
});

test('the dashboard follows a rollout started elsewhere without a reload', async () => {
  const page = await context.newPage();
  await openHydrated(page, fleet.url);
  const card = page.locator('[data-service="web"]');
  await page.getByTestId('connection').filter({ hasText: 'Live' }).waitFor({ timeout: 10_000 });
  assert.equal(await card.getByTestId('active-rollout').count(), 0);

  const id = await fleet.deploy('v3-slowstart');
  // The rollout in progress appears: which backend, which step, how far, with a link.
  const active = card.getByTestId('active-rollout');
  await active.filter({ hasText: `Rolling out: v3-slowstart (rollout #${id})` }).waitFor({ timeout: 10_000 });
  await card.getByTestId('acting').first().waitFor({ timeout: 10_000 });
  await page.waitForFunction(() => /of 3 backends done/.test(document.querySelector('[data-testid="active-rollout"]')?.textContent ?? ''));
  // Draining shows in the load-balancer column, in words.
  await card.locator('[data-lb-status="DRAIN"], [data-lb-status="MAINT"]').first().waitFor({ timeout: 15_000 });
  assert.equal(await active.getByRole('link', { name: 'View rollout' }).getAttribute('href'), `/deployments/${id}`);
  await page.screenshot({ path: screenshotPath('dashboard-during-rollout.png'), fullPage: true });

  await fleet.finished(id);
  await active.waitFor({ state: 'detached', timeout: 10_000 });
  await page.waitForFunction(() => document.querySelector('[data-service="web"] [data-testid="version-summary"]')?.textContent === 'v3-slowstart on all 3 backends', null, { timeout: 10_000 });
  await page.close();
});

test('a version the server refuses is explained beside the field, which keeps the text', async () => {
  const page = await context.newPage();
  await openHydrated(page, fleet.url);
  await redeploy(page, 'v2 bad!');
  const alert = page.locator('[data-service="web"] [role="alert"]');
  await alert.waitFor({ timeout: 5_000 });
  assert.match(await alert.textContent(), /invalid version "v2 bad!": expected 1 to 128 characters/);
  const input = page.getByLabel('Version');
  assert.equal(await input.inputValue(), 'v2 bad!');
  assert.equal(await input.getAttribute('aria-invalid'), 'true');
  assert.equal(await page.evaluate(() => document.activeElement?.id), 'redeploy-web-version');
  assert.equal(new URL(page.url()).pathname, '/', 'a refused version must not start a rollout');
  await page.close();
});

test('a version that never becomes healthy is rolled back live and the fleet stays on the old version', async () => {
  const before = await fleet.api('/api/services');
  const old = before[0].backends[0].version;
  const page = await context.newPage();
  const errors = watchErrors(page);
  await openHydrated(page, fleet.url);
  await redeploy(page, 'v4-unhealthy');
  await page.waitForURL(/\/deployments\/\d+$/, { timeout: 10_000 });
  const id = Number(new URL(page.url()).pathname.split('/').pop());
  await page.getByTestId('connection').filter({ hasText: 'Live' }).waitFor({ timeout: 10_000 });

  // web1 fails its health check (after the 5 s deadline), then is put back on the old version.
  const web1 = page.locator('[data-row="web1"]');
  const failed = web1.locator('[data-step="wait_healthy"][data-outcome="failed"]');
  await failed.waitFor({ timeout: 20_000 });
  assert.match(await failed.locator('.step-detail').textContent(), /\S/, 'the failure says why');
  const rollback = web1.getByTestId('rollback-steps');
  await rollback.waitFor({ timeout: 10_000 });
  assert.match(await rollback.locator('h4').textContent(), new RegExp(`Rollback to ${old}`));
  await rollback.locator('[data-step="confirm_up"][data-outcome="ok"]').waitFor({ timeout: 20_000 });
  await waitStatus(page, 'rolled_back', 20_000);
  assert.match(await page.getByTestId('result').textContent(), /^Rolled back: /);
  assert.equal(await page.locator('[data-row="web1"] [data-testid="row-state"]').textContent(), `Rolled back: runs ${old}`);
  assert.equal(await page.locator('[data-row="web2"] [data-step]').count(), 0, 'web2 must not be touched');
  // The log web1's new version wrote appeared live under the failure: the answer to "why?".
  const log = page.getByTestId('logs').locator('[data-log-backend="web1"]');
  await log.getByTestId('log-lines').waitFor({ timeout: 10_000 });
  assert.match(await log.getByTestId('log-lines').textContent(), /web1 version v4-unhealthy listening .*never healthy: true/);
  assert.match(await log.locator('h3').textContent(), /^web1 · when Healthy failed$/);
  // The Gantt chart marks the failed step in web1's lane.
  await page.locator('[data-testid="gantt"] [data-backend="web1"] [data-step="wait_healthy"][data-outcome="failed"]').waitFor({ timeout: 5_000 });
  await page.screenshot({ path: screenshotPath('rollout-rolled-back.png'), fullPage: true });

  const api = await fleet.api(`/api/deployments/${id}`);
  const shown = await shownStepIds(page);
  assert.deepEqual([...shown].sort((a, b) => a - b), api.steps.map((s) => s.id).sort((a, b) => a - b));

  await page.getByRole('link', { name: 'Services' }).click();
  await page.waitForFunction((old) => {
    const versions = [...document.querySelectorAll('[data-service="web"] [data-testid="backend-version"]')];
    const states = [...document.querySelectorAll('[data-service="web"] [data-lb-status]')];
    return versions.length === 3 && versions.every((v) => v.textContent.trim() === old)
      && states.length === 3 && states.every((s) => s.textContent === 'UP');
  }, old, { timeout: 15_000 });
  assert.deepEqual(errors, []);
  await page.close();
});

test('the history lists every rollout newest first, filters by result through the address, and links to each', async () => {
  // A browser in another time zone: times are shown in it, not in UTC.
  const own = await signedInContext(browser, fleet, 'deployer', { timezoneId: 'Asia/Tokyo' });
  const page = await own.newPage();
  const errors = watchErrors(page);
  await openHydrated(page, `${fleet.url}/deployments`);
  const rows = page.locator('[data-deployment-id]');
  const ids = await rows.evaluateAll((trs) => trs.map((tr) => Number(tr.dataset.deploymentId)));
  assert.ok(ids.length >= 3, `expected the rollouts so far, got ${ids}`);
  assert.deepEqual(ids, [...ids].sort((a, b) => b - a), 'newest first');
  assert.match(await rows.first().textContent(), /v4-unhealthy/);
  assert.match(await rows.first().getByTestId('result').textContent(), /Rolled back/);

  // Timestamps in the browser's time zone once hydrated; the server sent UTC.
  const time = rows.first().locator('time');
  const { shown, expected } = await time.evaluate((el) => ({
    shown: el.textContent,
    expected: new Intl.DateTimeFormat(undefined, {
      year: 'numeric', month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit', second: '2-digit', timeZoneName: 'short',
    }).format(new Date(el.getAttribute('datetime'))),
  }));
  assert.equal(shown, expected);
  assert.doesNotMatch(shown, /UTC/);
  await page.screenshot({ path: screenshotPath('history.png'), fullPage: true });

  // Filter by result: the address says so (shareable), and only rolled-back rollouts remain.
  await page.getByLabel('Result').selectOption('rolled_back');
  await page.getByRole('button', { name: 'Apply' }).click();
  await page.waitForURL(/status=rolled_back/, { timeout: 5_000 });
  await page.waitForFunction(() => [...document.querySelectorAll('[data-deployment-id] [data-testid="result"]')]
    .every((cell) => cell.textContent.includes('Rolled back')));
  assert.equal(await rows.count(), 1);
  await page.screenshot({ path: screenshotPath('history-filtered.png'), fullPage: true });

  // Each row links to its rollout page, with the whole timeline.
  await rows.first().getByRole('link').click();
  await page.waitForURL(/\/deployments\/\d+$/);
  await page.locator('[data-row="web1"] [data-testid="rollback-steps"]').waitFor();
  assert.deepEqual(errors, []);
  await own.close();
});

test('the history shows a rollout started elsewhere without a reload', async () => {
  const page = await context.newPage();
  await openHydrated(page, `${fleet.url}/deployments`);
  await page.getByTestId('connection').filter({ hasText: 'Live' }).waitFor({ timeout: 10_000 });
  await page.evaluate(() => { window.__sameDocument = true; });
  const id = await fleet.deploy('v5');
  const row = page.locator(`[data-deployment-id="${id}"]`);
  await row.waitFor({ timeout: 10_000 });
  await row.locator('[data-status="succeeded"]').waitFor({ timeout: 30_000 });
  assert.equal(await page.locator('[data-deployment-id]').first().getAttribute('data-deployment-id'), String(id));
  assert.equal(await page.evaluate(() => window.__sameDocument), true, 'the page reloaded');
  await page.close();
});

test('a filter that matches nothing says so, and pages go older, newer and back to the newest', async () => {
  const page = await context.newPage();
  await openHydrated(page, `${fleet.url}/deployments?status=cancelled`);
  assert.match(await page.locator('.empty').textContent(), /No deployments match these filters/);

  await page.goto(`${fleet.url}/deployments?limit=2`);
  const ids = () => page.locator('[data-deployment-id]').evaluateAll((trs) => trs.map((tr) => Number(tr.dataset.deploymentId)));
  const first = await ids();
  assert.equal(first.length, 2);
  await page.getByRole('link', { name: 'Older →' }).click();
  await page.waitForURL(/before=/);
  await page.waitForFunction((newest) => {
    const shown = [...document.querySelectorAll('[data-deployment-id]')].map((tr) => Number(tr.dataset.deploymentId));
    return shown.length > 0 && shown.every((id) => id < newest);
  }, Math.min(...first));
  const sameAs = (rows) => page.waitForFunction((rows) => {
    const shown = [...document.querySelectorAll('[data-deployment-id]')].map((tr) => Number(tr.dataset.deploymentId));
    return JSON.stringify(shown) === JSON.stringify(rows);
  }, rows);
  // One page towards the newest: the rows the first page showed.
  await page.getByRole('link', { name: '← Newer' }).click();
  await page.waitForURL(/after=/);
  await sameAs(first);
  await page.getByRole('link', { name: 'Older →' }).click();
  await page.waitForURL(/before=/);
  await page.getByRole('link', { name: '← Newest' }).click();
  await sameAs(first);
  await page.close();
});

test('on a phone-sized screen nothing overflows sideways', async () => {
  const own = await signedInContext(browser, fleet, 'deployer', { viewport: { width: 390, height: 844 }, isMobile: true, hasTouch: true });
  const page = await own.newPage();
  // The rolled-back rollout has the most to show; alone, this test makes a rollout of its own.
  let { deployments } = await fleet.api('/api/deployments?status=rolled_back');
  if (deployments.length === 0) deployments = [await fleet.finished(await fleet.deploy('v6'))];
  for (const [path, name] of [['/', 'phone-dashboard.png'], [`/deployments/${deployments[0].id}`, 'phone-rollout.png'], ['/deployments', 'phone-history.png']]) {
    await openHydrated(page, `${fleet.url}${path}`);
    const width = await page.evaluate(() => document.documentElement.scrollWidth);
    assert.ok(width <= 390, `${path} is ${width}px wide on a 390px screen`);
    await page.screenshot({ path: screenshotPath(name), fullPage: true });
  }
  await own.close();
});
