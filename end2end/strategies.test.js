// Approvals and canaries on the rollout page, against a real fleet whose service has both
// (`approval = "start"`, `canary = 1`): Approve is offered to deployers other than the
// requester, Promote once the canary serves, and Abort at the canary puts it back.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { startFleet, launchBrowser, openHydrated, screenshotPath, signedInContext, watchErrors } from './harness.js';

let fleet;
let browser;
/** Signed in as the deployer, dora. */
let deployer;
/** Signed in as the admin, ada. */
let admin;
/** Signed in as the viewer, vic. */
let viewer;

before(async () => {
  fleet = await startFleet({ serviceSettings: { canary: 1, approval: 'start' } });
  browser = await launchBrowser();
  deployer = await signedInContext(browser, fleet, 'deployer');
  admin = await signedInContext(browser, fleet, 'admin');
  viewer = await signedInContext(browser, fleet, 'viewer');
});

after(async () => {
  await browser?.close();
  await fleet?.stop();
});

async function waitStatus(page, status, timeout = 60_000) {
  await page.locator(`.page-head [data-status="${status}"]`).waitFor({ timeout });
}

/** Opens rollout `id` in a new page of `context`, hydrated and following the live stream. */
async function openRollout(context, id) {
  const page = await context.newPage();
  const errors = watchErrors(page);
  await openHydrated(page, `${fleet.url}/deployments/${id}`);
  await page.getByTestId('connection').filter({ hasText: 'Live' }).waitFor({ timeout: 10_000 });
  return { page, errors };
}

test('another deployer approves, the canary then waits for Promote, and Promote finishes the rollout', async () => {
  // Requested with the harness's token, e2e-harness: dora is someone else.
  const id = await fleet.deploy('v2');
  await fleet.waitDeployment(id, (d) => d.status === 'awaiting_approval', { what: 'awaiting approval' });
  const { page, errors } = await openRollout(deployer, id);
  await waitStatus(page, 'awaiting_approval', 5_000);
  assert.match(
    await page.getByTestId('waiting').textContent(),
    /^Awaiting approval: a deployer or admin other than e2e-harness approves it to begin\./,
  );
  const approve = page.getByRole('button', { name: 'Approve', exact: true });
  assert.equal(await approve.isDisabled(), false);
  assert.equal(await page.getByRole('button', { name: 'Promote', exact: true }).count(), 0);
  assert.equal(await page.locator('[data-row] [data-step]').count(), 0, 'nothing touched yet');

  // A viewer sees what the rollout waits for, and no button to press.
  const watching = await openRollout(viewer, id);
  await watching.page.getByTestId('waiting').waitFor({ timeout: 5_000 });
  assert.equal(await watching.page.getByRole('button', { name: 'Approve', exact: true }).count(), 0);

  await approve.click();
  await waitStatus(page, 'awaiting_promote', 30_000);
  assert.equal(await page.getByTestId('approved-by').textContent(), 'dora');
  assert.equal(await approve.count(), 0, 'Approve is gone once approved');
  assert.match(
    await page.getByTestId('waiting').textContent(),
    /^The canaries run v2 and serve: Promote rolls out the other backends; Abort puts the canaries back\.$/,
  );
  assert.equal(await page.locator('[data-row="web1"] [data-testid="row-state"]').textContent(), 'Done: runs v2');
  for (const row of ['web2', 'web3']) {
    assert.equal(await page.locator(`[data-row="${row}"] [data-step]`).count(), 0, `${row} untouched`);
  }
  // The viewer's page followed it live, and still offers nothing to press.
  await waitStatus(watching.page, 'awaiting_promote', 10_000);
  assert.equal(await watching.page.getByRole('button', { name: 'Promote', exact: true }).count(), 0);
  await page.screenshot({ path: screenshotPath('rollout-awaiting-promote.png'), fullPage: true });

  const promote = page.getByRole('button', { name: 'Promote', exact: true });
  assert.equal(await promote.isDisabled(), false);
  await promote.click();
  await waitStatus(page, 'succeeded', 60_000);
  assert.equal(await page.getByTestId('promoted-by').textContent(), 'dora');
  assert.equal(await page.getByTestId('waiting').count(), 0);
  await waitStatus(watching.page, 'succeeded', 10_000);
  assert.equal(await watching.page.getByTestId('promoted-by').textContent(), 'dora');
  await fleet.waitAllUp({ version: 'v2' });
  assert.deepEqual(errors, []);
  assert.deepEqual(watching.errors, []);
  await watching.page.close();
  await page.close();
});

test('the requester cannot approve their own rollout; another user does, and Abort at the canary puts it back', async () => {
  const page = await deployer.newPage();
  const errors = watchErrors(page);
  await openHydrated(page, `${fleet.url}/`);
  // dora requests it herself, with her own cookie, as the Redeploy form would.
  const id = await page.evaluate(async () => {
    const response = await fetch('/api/services/web/deployments', {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ version: 'v3' }),
    });
    return (await response.json()).id;
  });
  assert.ok(Number.isInteger(id), `a rollout id: ${id}`);
  await fleet.waitDeployment(id, (d) => d.status === 'awaiting_approval', { what: 'awaiting approval' });
  await page.close();

  const own = await openRollout(deployer, id);
  const approve = own.page.getByRole('button', { name: 'Approve', exact: true });
  await approve.waitFor({ timeout: 5_000 });
  assert.equal(await approve.isDisabled(), true, 'the requester may not approve');
  assert.equal(
    await approve.getAttribute('title'),
    'You requested this rollout: another deployer or admin must approve it',
  );
  assert.match(await own.page.getByTestId('waiting').textContent(), /other than dora approves it/);
  // The same request the disabled button would make is refused by the server, with the reason.
  const refused = await own.page.evaluate(async (rollout) => {
    const response = await fetch(`/api/deployments/${rollout}/approve`, { method: 'POST' });
    return { status: response.status, body: await response.json() };
  }, id);
  assert.equal(refused.status, 403);
  assert.equal(refused.body.error, `rollout ${id} was requested by dora: it needs the approval of another deployer or admin`);

  // ada approves from her own page; dora's page follows.
  const other = await openRollout(admin, id);
  await other.page.getByRole('button', { name: 'Approve', exact: true }).click();
  await waitStatus(own.page, 'awaiting_promote', 30_000);
  assert.equal(await own.page.getByTestId('approved-by').textContent(), 'ada');
  await other.page.close();

  // Abort at the canary says what it does, then puts web1 back on v2.
  await own.page.getByRole('button', { name: 'Abort', exact: true }).click();
  const dialog = own.page.getByRole('alertdialog');
  await dialog.waitFor({ timeout: 2_000 });
  assert.match(await dialog.textContent(), /The canaries are put back on their previous version/);
  await own.page.getByRole('button', { name: 'Abort rollout', exact: true }).click();
  await waitStatus(own.page, 'cancelled', 60_000);
  assert.match(await own.page.getByTestId('result').textContent(), /^Cancelled: aborted by an operator before the canaries were promoted; web1 went back to v2/);
  assert.equal(await own.page.locator('[data-row="web1"] [data-testid="row-state"]').textContent(), 'Rolled back: runs v2');
  for (const row of ['web2', 'web3']) {
    assert.equal(await own.page.locator(`[data-row="${row}"] [data-testid="row-state"]`).textContent(), 'Not changed');
  }
  assert.equal(await own.page.getByTestId('promoted-by').count(), 0);
  await fleet.waitAllUp({ version: 'v2' });
  // The one refusal asked for on purpose above shows in the console; nothing else may.
  const refusal = 'console: Failed to load resource: the server responded with a status of 403 (Forbidden)';
  assert.ok(own.errors.filter((error) => error === refusal).length <= 1, own.errors.join('\n'));
  assert.deepEqual(own.errors.filter((error) => error !== refusal), []);
  assert.deepEqual(errors, []);
  await own.page.close();
});
