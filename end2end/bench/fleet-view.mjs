// Benchmark: does the fleet page stay responsive in a real browser while 500 backends roll out?
//
//   BATON_BIN=target/release/baton node end2end/bench/fleet-view.mjs   (or: scripts/dev bench fleet-view)
//
// Starts HAProxy, 500 demo-app backends (batches of 50) and `baton serve` through the end-to-end
// harness, opens the hydrated fleet page in Debian's Chromium, and rolls the service out while
// the page receives the fleet's live snapshots. Inside the page it measures what a user feels:
// how late a 0 ms timer fires (the main thread's delay, every 50 ms), the long tasks Chromium
// reports (over 50 ms), and how long typing in the Filter box takes to show on the page. Prints
// the figures and writes them to target/bench/fleet-view.txt. Not run in CI.

import { mkdirSync, writeFileSync } from 'node:fs';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { startFleet, launchBrowser, openHydrated } from '../harness.js';

const BACKENDS = 500;
const BATCH = 50;
const FILTER_PROBES = 20;
const root = join(dirname(fileURLToPath(import.meta.url)), '..', '..');

const percentile = (values, p) => {
  if (values.length === 0) return NaN;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
};
const ms = (value) => `${value.toFixed(1)} ms`;

const fleet = await startFleet({ backends: BACKENDS, batchSize: BATCH, upTimeoutMs: 120_000, drainTimeout: '5s' });
const browser = await launchBrowser();
try {
  const page = await (await browser.newContext()).newPage();
  await fleet.signIn(page, 'deployer');
  await openHydrated(page, fleet.url);
  await page.waitForFunction(
    (n) => document.querySelectorAll('[data-testid="backend-version"]').length === n,
    BACKENDS,
    { timeout: 30_000 },
  );

  // The page's own instruments: timer lag sampled every 50 ms, long tasks, and DOM mutations
  // (each live snapshot that changed what is shown).
  await page.evaluate(() => {
    window.__bench = { lags: [], longTasks: [], probes: [], mutations: 0 };
    const sample = () => {
      const asked = performance.now();
      setTimeout(() => {
        window.__bench.lags.push(performance.now() - asked);
        if (!window.__bench.stop) setTimeout(sample, 50);
      }, 0);
    };
    sample();
    new PerformanceObserver((list) => {
      for (const entry of list.getEntries()) {
        window.__bench.longTasks.push({ start: entry.startTime, duration: entry.duration });
      }
    }).observe({ type: 'longtask', buffered: false });
    new MutationObserver(() => { window.__bench.mutations += 1; })
      .observe(document.querySelector('.services'), { subtree: true, childList: true, characterData: true });
  });

  const started = Date.now();
  const id = await fleet.deploy('v2');

  // While it runs: type in the Filter box and time until the page shows the result.
  const filter = page.getByLabel('Filter');
  const filterTimes = [];
  for (let i = 0; i < FILTER_PROBES; i += 1) {
    const text = i % 2 === 0 ? 'zzz' : '';
    const expected = i % 2 === 0 ? 'Showing 0 of 1 services' : 'Showing 1 of 1 services';
    const took = await page.evaluate(async ({ text, expected }) => {
      const input = document.querySelector('input[name="filter"]');
      const count = () => document.querySelector('[data-testid="service-count"]')?.textContent;
      const t0 = performance.now();
      input.value = text;
      input.dispatchEvent(new Event('input', { bubbles: true }));
      while (count() !== expected) {
        await new Promise((resolve) => requestAnimationFrame(resolve));
        if (performance.now() - t0 > 10_000) return -1;
      }
      const t1 = performance.now();
      window.__bench.probes.push([t0, t1]);
      return t1 - t0;
    }, { text, expected });
    if (took >= 0) filterTimes.push(took);
    await page.waitForTimeout(300);
  }
  await filter.fill('');

  const deployment = await fleet.finished(id, { timeoutMs: 180_000 });
  const wall = Date.now() - started;
  const bench = await page.evaluate(() => { window.__bench.stop = true; return window.__bench; });
  const rows = await page.locator('[data-testid="backend-version"]').allTextContents();
  // A long task that begins while the Filter box re-builds the list (a probe) is the filter's;
  // the others are the live snapshots'.
  const duringProbe = (task) => bench.probes.some(([t0, t1]) => task.start >= t0 - 5 && task.start <= t1 + 5);
  const tasks = (list) => {
    const durations = list.map((task) => task.duration);
    return `${durations.length}, longest ${ms(Math.max(0, ...durations))}, total ${ms(durations.reduce((a, b) => a + b, 0))}`;
  };

  const lines = [
    `fleet view benchmark: ${BACKENDS} backends, batches of ${BATCH}, rollout ${deployment.status} in ${(wall / 1000).toFixed(1)} s`,
    `backends shown on v2 at the end: ${rows.filter((v) => v.trim().startsWith('v2')).length} of ${rows.length}`,
    `page updates during the rollout (DOM mutation batches): ${bench.mutations}`,
    `main-thread delay of a 0 ms timer, sampled every 50 ms (${bench.lags.length} samples): p50 ${ms(percentile(bench.lags, 50))}, p99 ${ms(percentile(bench.lags, 99))}, max ${ms(Math.max(...bench.lags))}`,
    `long tasks (over 50 ms): ${tasks(bench.longTasks)}`,
    `  of which while following the live snapshots: ${tasks(bench.longTasks.filter((t) => !duringProbe(t)))}`,
    `  of which while the Filter box re-built the list: ${tasks(bench.longTasks.filter(duringProbe))}`,
    `typing in Filter until the page shows it (${filterTimes.length} of ${FILTER_PROBES}): p50 ${ms(percentile(filterTimes, 50))}, max ${ms(Math.max(...filterTimes))}`,
    'how: the delay is how late a setTimeout(0) fires (what a click waits for); long tasks are Chromium\'s PerformanceObserver entries; Filter times run from the input event to the changed count, read each animation frame',
  ];
  const text = `${lines.join('\n')}\n`;
  process.stdout.write(text);
  mkdirSync(join(root, 'target', 'bench'), { recursive: true });
  writeFileSync(join(root, 'target', 'bench', 'fleet-view.txt'), text);
  if (deployment.status !== 'succeeded') process.exitCode = 1;
} finally {
  await browser.close();
  await fleet.stop();
}
