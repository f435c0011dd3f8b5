// Signing in, roles and the audit log in a real browser, against a real fleet: a visitor who is
// not signed in sees only the login page; a deployer redeploys; a viewer sees no Redeploy button
// and is refused by the API itself; an admin reads who did what in the audit log.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import {
  startFleet, launchBrowser, openHydrated, screenshotPath, signIn, signedInContext, watchErrors, USERS,
} from './harness.js';

let fleet;
let browser;

before(async () => {
  fleet = await startFleet();
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  await fleet?.stop();
});

test('sign in, redeploy, sign out: a visitor who is not signed in only ever sees the login page', async () => {
  const context = await browser.newContext();
  const page = await context.newPage();
  const errors = watchErrors(page);

  // Asking for a page lands on the login form, which remembers the page.
  await page.goto(`${fleet.url}/deployments`);
  let url = new URL(page.url());
  assert.equal(url.pathname, '/login');
  assert.equal(url.searchParams.get('next'), '/deployments');
  assert.equal(await page.title(), 'Sign in · Baton');
  await page.getByRole('heading', { name: 'Sign in to Baton' }).waitFor();
  // Nothing of the app shows: no navigation, no service, nobody signed in.
  assert.equal(await page.getByRole('navigation', { name: 'Main' }).count(), 0);
  assert.equal(await page.locator('[data-service]').count(), 0);
  assert.equal(await page.getByTestId('signed-in').count(), 0);
  // The cursor is in the name field, ready to type.
  assert.equal(await page.evaluate(() => document.activeElement?.id), 'login-name');

  // A wrong password: the form says so and keeps the page asked for.
  await page.keyboard.type(USERS.deployer.name);
  await page.getByLabel('Password').fill('not the password at all');
  await page.keyboard.press('Enter');
  await page.getByRole('alert').filter({ hasText: 'Wrong user name or password' }).waitFor({ timeout: 10_000 });
  url = new URL(page.url());
  assert.equal(url.pathname, '/login');
  assert.equal(url.searchParams.get('next'), '/deployments');
  assert.equal(await page.getByLabel('User name').getAttribute('aria-invalid'), 'true');
  await page.screenshot({ path: screenshotPath('login-error.png'), fullPage: true });

  // The right password: back to the page asked for, signed in as the deployer.
  await page.getByLabel('User name').fill(USERS.deployer.name);
  await page.getByLabel('Password').fill(USERS.deployer.password);
  await Promise.all([
    page.waitForURL((target) => target.pathname === '/deployments', { timeout: 15_000 }),
    page.getByRole('button', { name: 'Sign in' }).click(),
  ]);
  await page.waitForSelector('html[data-hydrated="true"]', { timeout: 15_000 });
  await page.getByRole('heading', { name: 'Deployments' }).waitFor();
  assert.equal(await page.getByTestId('caller-name').textContent(), USERS.deployer.name);
  assert.equal(await page.getByTestId('caller-role').textContent(), 'deployer');
  // A deployer is no admin: no audit log in the navigation.
  assert.equal(await page.getByRole('link', { name: 'Audit log' }).count(), 0);

  // Redeploy works, from the dashboard.
  await page.getByRole('navigation', { name: 'Main' }).getByRole('link', { name: 'Services' }).click();
  await page.getByRole('button', { name: 'Redeploy web' }).click();
  await page.getByLabel('Version').fill('v2');
  await page.getByRole('button', { name: 'Continue' }).click();
  await page.getByRole('button', { name: 'Deploy', exact: true }).click();
  await page.waitForURL(/\/deployments\/\d+$/, { timeout: 10_000 });
  const id = Number(new URL(page.url()).pathname.split('/').pop());
  await page.locator(`.page-head [data-status="succeeded"]`).waitFor({ timeout: 60_000 });
  assert.match(await page.locator('.facts').textContent(), new RegExp(`Requested by${USERS.deployer.name}`));
  const deployment = await fleet.api(`/api/deployments/${id}`);
  assert.equal(deployment.status, 'succeeded');
  await fleet.waitAllUp({ version: 'v2' });

  // Sign out: back on the login page, and the app is closed again.
  await Promise.all([
    page.waitForURL((target) => target.pathname === '/login', { timeout: 10_000 }),
    page.getByRole('button', { name: 'Sign out' }).click(),
  ]);
  await page.getByRole('heading', { name: 'Sign in to Baton' }).waitFor();
  await page.goto(fleet.url);
  url = new URL(page.url());
  assert.equal(url.pathname, '/login');
  assert.equal(url.searchParams.get('next'), '/');
  assert.equal(await page.getByTestId('signed-in').count(), 0);
  await page.screenshot({ path: screenshotPath('login.png'), fullPage: true });
  assert.deepEqual(errors, []);
  await context.close();
});

test('a viewer sees the fleet but no Redeploy button, and the API refuses a deploy anyway', async () => {
  // A rollout of its own to look at (through the harness's token).
  const own = await fleet.deploy('v3');
  await fleet.finished(own);
  const context = await signedInContext(browser, fleet, 'viewer');
  const page = await context.newPage();
  await openHydrated(page, fleet.url);
  const card = page.locator('[data-service="web"]');
  await card.getByTestId('version-summary').waitFor();
  assert.equal(await page.getByTestId('caller-name').textContent(), USERS.viewer.name);
  assert.equal(await page.getByTestId('caller-role').textContent(), 'viewer');
  assert.equal(await card.locator('[data-lb-status]').count(), 3, 'the viewer sees the backends');
  assert.equal(await page.getByRole('button', { name: /Redeploy/ }).count(), 0);

  // Nor any control on a rollout's page.
  const { deployments } = await fleet.api('/api/deployments?limit=1');
  assert.equal(deployments[0].id, own);
  await openHydrated(page, `${fleet.url}/deployments/${deployments[0].id}`);
  await page.getByRole('heading', { name: `Rollout #${deployments[0].id} · web` }).waitFor();
  for (const name of ['Pause', 'Resume', 'Abort']) {
    assert.equal(await page.getByRole('button', { name, exact: true }).count(), 0, `${name} is shown`);
  }
  assert.equal(await page.getByRole('button', { name: /Roll back/ }).count(), 0);

  // The same request the hidden button would make, from the viewer's own page and cookie.
  const status = await page.evaluate(async () => {
    const response = await fetch('/api/services/web/deployments', {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ version: 'v3' }),
    });
    return response.status;
  });
  assert.equal(status, 403);
  const after = await fleet.api('/api/deployments?limit=1');
  assert.equal(after.deployments[0].id, deployments[0].id, 'a rollout started');
  await context.close();
});

test('an admin reads the audit log: the deployer signing in and deploying, newest first', async () => {
  const context = await signedInContext(browser, fleet, 'admin', { timezoneId: 'Asia/Tokyo' });
  const page = await context.newPage();
  const errors = watchErrors(page);
  await openHydrated(page, fleet.url);
  await page.getByRole('link', { name: 'Audit log' }).click();
  await page.getByRole('heading', { name: 'Audit log' }).waitFor();
  assert.equal(new URL(page.url()).pathname, '/audit');
  const rows = page.locator('[data-testid="audit"] tbody tr');
  await rows.first().waitFor({ timeout: 10_000 });

  const entries = await rows.evaluateAll((trs) => trs.map((tr) => ({
    id: Number(tr.dataset.auditId),
    action: tr.dataset.action,
    actor: tr.dataset.actor,
    text: tr.textContent,
  })));
  const ids = entries.map((e) => e.id);
  assert.deepEqual(ids, [...ids].sort((a, b) => b - a), 'newest first');
  const deployer = USERS.deployer.name;
  const login = entries.find((e) => e.action === 'login' && e.actor === deployer);
  const deploy = entries.find((e) => e.action === 'deploy' && e.actor === deployer);
  assert.ok(login, `the deployer's login is listed: ${JSON.stringify(entries)}`);
  assert.ok(deploy, `the deployer's deploy is listed: ${JSON.stringify(entries)}`);
  assert.ok(deploy.id > login.id);
  assert.match(login.text, /127\.0\.0\.1/, 'the address it came from');
  assert.ok(entries.some((e) => e.action === 'login_failed' && e.actor === deployer), 'the failed login is listed');
  // Times are in the browser's zone, not UTC.
  assert.doesNotMatch(await rows.first().locator('time').textContent(), /UTC/);

  // Filter by who and what, through the address.
  await page.getByLabel('Who').fill(deployer);
  await page.getByLabel('Action').selectOption('deploy');
  await page.getByRole('button', { name: 'Apply' }).click();
  await page.waitForURL((url) => url.searchParams.get('actor') === deployer && url.searchParams.get('action') === 'deploy', { timeout: 10_000 });
  await page.waitForFunction(
    () => [...document.querySelectorAll('[data-testid="audit"] tbody tr')].every((tr) => tr.dataset.action === 'deploy'),
    null,
    { timeout: 10_000 },
  );
  const filtered = await rows.evaluateAll((trs) => trs.map((tr) => [tr.dataset.actor, tr.dataset.action]));
  assert.ok(filtered.length >= 1);
  assert.ok(filtered.every(([actor, action]) => actor === deployer && action === 'deploy'), JSON.stringify(filtered));
  await page.getByRole('link', { name: 'Clear filters' }).click();
  await page.waitForURL((url) => url.search === '', { timeout: 10_000 });
  await page.locator('[data-testid="audit"] tbody tr[data-action="login"]').first().waitFor();
  await page.screenshot({ path: screenshotPath('audit.png'), fullPage: true });

  // The pages one page at a time: with one entry a page, Older goes back in time.
  await openHydrated(page, `${fleet.url}/audit?limit=1`);
  const first = Number(await rows.first().getAttribute('data-audit-id'));
  await page.getByRole('link', { name: 'Older →' }).click();
  await page.waitForURL((url) => url.searchParams.get('before') === String(first), { timeout: 10_000 });
  await page.waitForFunction(
    (newest) => Number(document.querySelector('[data-testid="audit"] tbody tr')?.dataset.auditId) < newest,
    first,
    { timeout: 10_000 },
  );
  assert.deepEqual(errors, []);
  await context.close();
});

test('an admin creates an API token that is shown once, and revoking it stops it at once', async () => {
  const context = await signedInContext(browser, fleet, 'admin');
  const page = await context.newPage();
  const errors = watchErrors(page);
  await openHydrated(page, fleet.url);
  await page.getByRole('navigation', { name: 'Main' }).getByRole('link', { name: 'Tokens' }).click();
  await page.getByRole('heading', { name: 'API tokens' }).waitFor();

  await page.getByLabel('Name').fill('ci-e2e');
  await page.getByLabel('Role').selectOption('deployer');
  await page.getByRole('button', { name: 'Create token' }).click();
  const secret = (await page.getByTestId('token-secret').textContent({ timeout: 10_000 })).trim();
  assert.match(secret, /^baton_\S+$/);
  await page.locator('[data-token="ci-e2e"]').waitFor({ timeout: 10_000 });
  const call = (token) => fetch(`${fleet.url}/api/services`, { headers: { authorization: `Bearer ${token}` } });
  assert.equal((await call(secret)).status, 200, 'the new token works');

  // Shown once: gone when dismissed, and never again after a reload.
  await page.getByRole('button', { name: 'I have copied it' }).click();
  await page.getByTestId('token-secret').waitFor({ state: 'detached' });
  await page.reload();
  await page.waitForSelector('html[data-hydrated="true"]', { timeout: 15_000 });
  assert.equal((await page.content()).includes(secret), false, 'the token is shown again');

  // Revoke asks first, then the token is refused.
  await page.getByRole('button', { name: 'Revoke ci-e2e' }).click();
  await page.getByRole('button', { name: 'Revoke token' }).click();
  await page.getByTestId('account-status').filter({ hasText: 'Revoked' }).waitFor({ timeout: 10_000 });
  await page.locator('[data-token="ci-e2e"].revoked').waitFor({ timeout: 10_000 });
  assert.equal((await call(secret)).status, 401, 'the revoked token still works');
  await page.screenshot({ path: screenshotPath('tokens.png'), fullPage: true });
  assert.deepEqual(errors, []);
  await context.close();
});

test('an admin adds a user who can then sign in, and deleting the user ends their session', async () => {
  const context = await signedInContext(browser, fleet, 'admin');
  const page = await context.newPage();
  const errors = watchErrors(page);
  await openHydrated(page, `${fleet.url}/users`);
  await page.getByRole('heading', { name: 'Users' }).waitFor();
  for (const user of Object.values(USERS)) {
    await page.locator(`[data-user="${user.name}"]`).waitFor();
  }

  const eve = { name: 'eve', password: 'eve password 0c7a3e' };
  await page.getByLabel('User name').fill(eve.name);
  await page.getByLabel('Role').selectOption('viewer');
  await page.getByLabel('Password').fill(eve.password);
  await page.getByRole('button', { name: 'Add user' }).click();
  await page.getByTestId('account-status').filter({ hasText: 'Added eve with the viewer role.' }).waitFor({ timeout: 15_000 });
  await page.locator('[data-user="eve"]').waitFor();
  assert.equal(await page.getByLabel('User name').inputValue(), '', 'the form is cleared');

  // Eve signs in elsewhere.
  const eves = await browser.newContext();
  const evePage = await eves.newPage();
  await signIn(evePage, fleet.url, eve);
  await evePage.waitForSelector('html[data-hydrated="true"]', { timeout: 15_000 });
  assert.equal(await evePage.getByTestId('caller-role').textContent(), 'viewer');

  await page.getByRole('button', { name: 'Delete eve' }).click();
  await page.getByRole('button', { name: 'Delete user' }).click();
  await page.getByTestId('account-status').filter({ hasText: 'Deleted eve' }).waitFor({ timeout: 10_000 });
  await page.locator('[data-user="eve"]').waitFor({ state: 'detached' });
  // Her session ended with her: the next page she asks for is the login page.
  await evePage.reload();
  assert.equal(new URL(evePage.url()).pathname, '/login');
  await page.screenshot({ path: screenshotPath('users.png'), fullPage: true });
  assert.deepEqual(errors, []);
  await eves.close();
  await context.close();
});
