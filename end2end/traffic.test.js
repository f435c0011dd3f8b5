// The traffic chart on the rollout page, against a real fleet: HAProxy, three demo-app backends
// and Baton, under a light steady load through HAProxy. While the rollout runs the chart grows
// live; once it has ended it shows that every backend served, that nothing answered 5xx, and
// where each backend left rotation and came back.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import http from 'node:http';
import { startFleet, launchBrowser, openHydrated, screenshotPath, signedInContext, watchErrors } from './harness.js';

let fleet;
let browser;
/** Signed in as a viewer: the chart needs no more. */
let context;

before(async () => {
  // `slowstart` versions take 3 s to listen, so the rollout lasts long enough to watch.
  fleet = await startFleet({ startTimeout: '5s' });
  browser = await launchBrowser();
  context = await signedInContext(browser, fleet, 'viewer');
});

after(async () => {
  await browser?.close();
  await fleet?.stop();
});

/** One GET of `/` through HAProxy on a connection of its own; resolves to the status (0: none). */
function getOnce(url) {
  return new Promise((resolve) => {
    const request = http.get(url, { agent: false, timeout: 5_000 }, (response) => {
      response.resume();
      response.on('end', () => resolve(response.statusCode));
    });
    request.on('timeout', () => request.destroy());
    request.on('error', () => resolve(0));
  });
}

/** About 40 requests a second through HAProxy until `stop()`; counts what did not answer 200. */
function steadyLoad(url) {
  let running = true;
  const seen = { sent: 0, failed: [] };
  const loop = (async () => {
    while (running) {
      const status = await getOnce(url);
      seen.sent += 1;
      if (status !== 200) seen.failed.push(status);
      await new Promise((resolve) => setTimeout(resolve, 25));
    }
  })();
  return {
    seen,
    async stop() {
      running = false;
      await loop;
    },
  };
}

test('the traffic chart grows while a rollout runs and shows every backend served with no 5xx', async () => {
  const load = steadyLoad(`${fleet.frontend}/`);
  try {
    const page = await context.newPage();
    const errors = watchErrors(page);
    const id = await fleet.deploy('v2-slowstart');
    await openHydrated(page, `${fleet.url}/deployments/${id}`);
    const chart = page.getByTestId('traffic');
    const summary = chart.getByTestId('traffic-summary');
    const samples = async () => Number(await summary.getAttribute('data-samples'));

    // The first samples arrive while the rollout runs, and more follow without a reload.
    await summary.waitFor({ timeout: 15_000 });
    const early = await samples();
    const status = await page.locator('.page-head [data-status]').getAttribute('data-status');
    assert.ok(['running', 'queued'].includes(status), `the rollout had already ${status}`);
    await page.waitForFunction(
      (before) => Number(document.querySelector('[data-testid="traffic-summary"]')?.dataset.samples) > before,
      early,
      { timeout: 10_000 },
    );

    await page.locator('.page-head [data-status="succeeded"]').waitFor({ timeout: 60_000 });
    // The last refetch comes as the rollout ends; by then the whole rollout is sampled.
    await page.waitForFunction(
      (before) => Number(document.querySelector('[data-testid="traffic-summary"]')?.dataset.samples) >= before + 5,
      early,
      { timeout: 10_000 },
    );

    // Every backend served, and nothing answered 5xx.
    for (const name of fleet.backendNames) {
      const entry = chart.locator(`.legend [data-backend="${name}"]`);
      const requests = Number(await entry.getAttribute('data-requests'));
      assert.ok(requests > 0, `${name} served nothing on the chart`);
      assert.equal(await entry.getAttribute('data-errors'), '0', `${name} answered 5xx`);
      assert.equal(await chart.locator(`polyline.requests[data-backend="${name}"]`).count(), 1);
      assert.equal(await chart.locator(`polyline.errors[data-backend="${name}"]`).count(), 1);
    }
    assert.equal(await summary.getAttribute('data-errors'), '0');
    assert.match(await summary.textContent(), /^\d+ requests, 0 5xx$/);
    assert.ok(Number(await summary.getAttribute('data-requests')) > 0);

    // Each backend is marked where it left rotation and where it came back, in rollout order.
    const marks = await chart.getByTestId('traffic-mark').evaluateAll((marks) =>
      marks.map((mark) => [mark.dataset.backend, mark.dataset.step]));
    for (const name of fleet.backendNames) {
      assert.ok(marks.some(([b, s]) => b === name && s === 'drain'), `${name} has no drain mark: ${marks}`);
      assert.ok(marks.some(([b, s]) => b === name && s === 'confirm_up'), `${name} has no confirm_up mark: ${marks}`);
    }
    const x = (name, step) => chart.locator(`[data-testid="traffic-mark"][data-backend="${name}"][data-step="${step}"] line`)
      .first().getAttribute('x1').then(Number);
    assert.ok(await x('web1', 'confirm_up') <= await x('web2', 'drain'), 'web2 left rotation before web1 came back');

    await page.screenshot({ path: screenshotPath('rollout-traffic.png'), fullPage: true });
    assert.deepEqual(errors, []);
  } finally {
    await load.stop();
  }
  // What the load saw agrees with the chart: every request answered.
  assert.ok(load.seen.sent > 50, `only ${load.seen.sent} requests were sent`);
  assert.deepEqual(load.seen.failed, [], 'requests through HAProxy failed during the rollout');
});
