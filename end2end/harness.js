// Starts the real parts for the end-to-end tests — HAProxy, demo-app backends, `baton serve`,
// Chromium — and ends every process it started, by PID, even when a test fails.

import { spawn, execFile } from 'node:child_process';
import { mkdtempSync, writeFileSync, mkdirSync, rmSync, readdirSync, readFileSync, existsSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const here = dirname(fileURLToPath(import.meta.url));
export const artifacts = join(here, 'artifacts');

/** Every child process started here, and every folder whose backends Baton started. */
const started = new Set();
const stateDirs = new Set();

/** Backends run detached from Baton (on purpose): end them by the PIDs Baton recorded. */
function killRecordedBackends(stateDir) {
  if (!existsSync(stateDir)) return;
  for (const service of readdirSync(stateDir, { withFileTypes: true })) {
    if (!service.isDirectory()) continue;
    const folder = join(stateDir, service.name);
    for (const file of readdirSync(folder)) {
      if (!file.endsWith('.json')) continue;
      try {
        const { pid } = JSON.parse(readFileSync(join(folder, file), 'utf8'));
        if (Number.isInteger(pid) && pid > 1) {
          // Each backend leads its own process group (Baton calls setsid).
          try { process.kill(-pid, 'SIGKILL'); } catch { try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ } }
        }
      } catch { /* a record being rewritten: its process is in another record or gone */ }
    }
  }
}

process.on('exit', () => {
  for (const child of started) {
    try { child.kill('SIGKILL'); } catch { /* gone */ }
  }
  for (const dir of stateDirs) killRecordedBackends(dir);
});

/** A TOML value: strings quoted (JSON's escapes are TOML's), arrays of them, numbers and booleans. */
function tomlValue(value) {
  if (Array.isArray(value)) return `[${value.map(tomlValue).join(', ')}]`;
  return typeof value === 'string' ? JSON.stringify(value) : String(value);
}

/** One table's `key = value` lines, leaving out keys whose value is undefined. */
function tomlKeys(keys) {
  return Object.entries(keys)
    .filter(([, value]) => value !== undefined)
    .map(([key, value]) => `${key} = ${tomlValue(value)}`)
    .join('\n');
}

/**
 * Baton's configuration: the `edge` HAProxy load balancer (its runtime API on `haproxy.sock`
 * beside the file) and `services`, each `{ name, settings, health, drain, runtime, backends }`:
 * `settings` holds more keys of `[[service]]` itself, `health`, `drain` and `runtime` the keys
 * of those tables (`initial_version` is "v1" unless given), and `backends` maps each backend's
 * name to its port on 127.0.0.1, or to `{ port, host }` for a backend on a `[[host]]`.
 */
export function batonConfig(services) {
  const service = ({ name, settings = {}, health, drain, runtime, backends }) => [
    '[[service]]',
    tomlKeys({ name, load_balancer: 'edge', ...settings }),
    ...(health ? ['[service.health]', tomlKeys(health)] : []),
    ...(drain ? ['[service.drain]', tomlKeys(drain)] : []),
    '[service.runtime]',
    tomlKeys({ initial_version: 'v1', ...runtime }),
    ...Object.entries(backends).flatMap(([backend, where]) => [
      '[[service.backend]]',
      typeof where === 'number'
        ? tomlKeys({ name: backend, address: `127.0.0.1:${where}` })
        : tomlKeys({ name: backend, address: `127.0.0.1:${where.port}`, host: where.host }),
    ]),
  ].join('\n');
  const edge = ['[[load_balancer]]', tomlKeys({ name: 'edge', kind: 'haproxy', runtime_api: ['unix:haproxy.sock'] })].join('\n');
  return `${[edge, ...services.map(service)].join('\n\n')}\n`;
}

/** A TCP port nobody listens on right now. */
export function freePort() {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.unref();
    server.on('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

/** Waits for `child` to exit, SIGKILLing it after `graceMs`. */
async function endChild(child, signal = 'SIGTERM', graceMs = 15_000) {
  if (child.exitCode === null && child.signalCode === null) {
    const exited = new Promise((resolve) => child.once('exit', resolve));
    child.kill(signal);
    const timer = setTimeout(() => child.kill('SIGKILL'), graceMs);
    await exited;
    clearTimeout(timer);
  }
  started.delete(child);
}

/**
 * Who the tests sign in as: one user per role, with known passwords. The users and the harness's
 * own API token are made with the real CLI before Baton starts, as an operator would.
 */
export const USERS = {
  admin: { name: 'ada', password: 'admin password 4f81c2', role: 'admin' },
  deployer: { name: 'dora', password: 'deployer password 93b0e7', role: 'deployer' },
  viewer: { name: 'vic', password: 'viewer password 2d6a51', role: 'viewer' },
};

/** Runs the `baton` CLI with `args`, `input` on stdin; resolves with its stdout. */
function batonCli(args, input = '') {
  const bin = process.env.BATON_BIN;
  return new Promise((resolve, reject) => {
    const child = execFile(bin, args, { timeout: 30_000 }, (error, stdout, stderr) => {
      if (error) reject(new Error(`baton ${args.join(' ')} failed: ${error.message}\n${stderr}`));
      else resolve(stdout);
    });
    started.add(child);
    child.once('exit', () => started.delete(child));
    child.stdin.end(input);
  });
}

/**
 * Adds the users of `USERS` to the database of `<dir>/baton.toml` and creates an admin API token
 * for the harness's own API calls; resolves with the token.
 */
async function createAccounts(dir) {
  const config = join(dir, 'baton.toml');
  for (const { name, password, role } of Object.values(USERS)) {
    await batonCli(['user', 'add', name, '--role', role, '--config', config], `${password}\n`);
  }
  const printed = await batonCli(['token', 'create', 'e2e-harness', '--role', 'admin', '--config', config]);
  const token = printed.split('\n').map((line) => line.trim()).find((line) => line.startsWith('baton_'));
  if (!token) throw new Error(`baton token create printed no token:\n${printed}`);
  return token;
}

/**
 * Signs in through the login form at `url` (Baton's address) and waits until the browser has
 * left the login page; resolves with the page's URL then. `next` is the page to land on.
 */
export async function signIn(page, url, { name, password }, { next } = {}) {
  const address = next ? `${url}/login?next=${encodeURIComponent(next)}` : `${url}/login`;
  await page.goto(address);
  await page.getByLabel('User name').fill(name);
  await page.getByLabel('Password').fill(password);
  await Promise.all([
    page.waitForURL((target) => target.pathname !== '/login', { timeout: 15_000 }),
    page.getByRole('button', { name: 'Sign in' }).click(),
  ]);
  return page.url();
}

/**
 * A browser context (its own cookies; `options` as for `browser.newContext`) signed in as the
 * user of `role` on `baton` (what `startBaton` or `startFleet` returned).
 */
export async function signedInContext(browser, baton, role = 'deployer', options = {}) {
  const context = await browser.newContext(options);
  const page = await context.newPage();
  await signIn(page, baton.url, USERS[role]);
  await page.close();
  return context;
}

/** Headers for the harness's own API calls. */
function bearer(token, headers = {}) {
  return { ...headers, authorization: `Bearer ${token}` };
}

/** Runs `baton serve --config <dir>/baton.toml`; resolves with its address once it prints it. */
async function serveBaton(dir, { listen = '127.0.0.1:0', timeoutMs = 30_000 } = {}) {
  const bin = process.env.BATON_BIN;
  if (!bin) throw new Error('BATON_BIN must name the baton binary (scripts/dev test sets it)');
  const child = spawn(bin, ['serve', '--config', join(dir, 'baton.toml')], {
    env: { ...process.env, BATON_LISTEN: listen, RUST_LOG: process.env.RUST_LOG ?? 'warn' },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  started.add(child);
  let stderr = '';
  child.stderr.on('data', (chunk) => {
    stderr += chunk;
    if (process.env.BATON_E2E_LOG) process.stderr.write(chunk);
  });
  const url = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`Baton did not start within ${timeoutMs} ms:\n${stderr}`)), timeoutMs);
    let stdout = '';
    child.stdout.on('data', (chunk) => {
      stdout += chunk;
      const found = stdout.match(/Baton is serving on (http:\/\/\S+)/);
      if (found) { clearTimeout(timer); resolve(found[1]); }
    });
    child.once('exit', (code) => { clearTimeout(timer); reject(new Error(`Baton exited with ${code}:\n${stderr}`)); });
  });
  return { child, url, stderr: () => stderr };
}

/** Runs `baton serve` on a fresh folder and port with the given configuration. */
export async function startBaton(config, { timeoutMs = 30_000 } = {}) {
  const dir = mkdtempSync(join(tmpdir(), 'baton-e2e-'));
  writeFileSync(join(dir, 'baton.toml'), config);
  stateDirs.add(join(dir, 'state'));
  const token = await createAccounts(dir);
  const { child, url } = await serveBaton(dir, { timeoutMs });
  return {
    url,
    dir,
    token,
    users: USERS,
    /** Signs `page` in as the user of `role` (`admin`, `deployer` or `viewer`). */
    signIn(page, role = 'deployer', options) {
      return signIn(page, url, USERS[role], options);
    },
    async stop() {
      await endChild(child);
      killRecordedBackends(join(dir, 'state'));
      stateDirs.delete(join(dir, 'state'));
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/**
 * A real fleet: HAProxy (stats socket, `option httpchk GET /alive`, fast checks) in front of
 * `backends` demo-app backends that Baton starts, and `baton serve`, all on free ports in a
 * fresh folder. Resolves once HAProxy reports every backend UP. `serviceSettings` adds keys of
 * the `[[service]]` (`{ canary: 1, approval: 'start' }`, say).
 */
export async function startFleet({
  backends = 3,
  startTimeout = '10s',
  drainTimeout = '5s',
  healthInterval = '50ms',
  initialVersion = 'v1',
  batchSize = 1,
  upTimeoutMs = 30_000,
  serviceSettings = {},
} = {}) {
  const bin = process.env.BATON_BIN;
  if (!bin) throw new Error('BATON_BIN must name the baton binary (scripts/dev test sets it)');
  const demoApp = join(dirname(bin), 'baton-demo-app');
  if (!existsSync(demoApp)) throw new Error(`${demoApp} is missing: build it with scripts/dev build`);

  const dir = mkdtempSync(join(tmpdir(), 'baton-fleet-'));
  const stateDir = join(dir, 'state');
  stateDirs.add(stateDir);
  const frontendPort = await freePort();
  const batonPort = await freePort();
  const ports = [];
  while (ports.length < backends) {
    const port = await freePort();
    if (port !== frontendPort && port !== batonPort && !ports.includes(port)) ports.push(port);
  }
  const names = ports.map((_, i) => `web${i + 1}`);
  const socket = join(dir, 'haproxy.sock');

  writeFileSync(join(dir, 'haproxy.cfg'), [
    'global',
    `    stats socket ${socket} mode 600 level admin`,
    'defaults',
    '    mode http',
    '    timeout connect 2s',
    '    timeout client 30s',
    '    timeout server 30s',
    '    retries 0',
    'frontend fe',
    `    bind 127.0.0.1:${frontendPort}`,
    '    default_backend web',
    'backend web',
    '    option httpchk GET /alive',
    '    default-server inter 100ms fastinter 50ms downinter 100ms rise 2 fall 2',
    ...names.map((name, i) => `    server ${name} 127.0.0.1:${ports[i]} check`),
    '',
  ].join('\n'));

  writeFileSync(join(dir, 'baton.toml'), batonConfig([{
    name: 'web',
    settings: { haproxy_backend: 'web', batch_size: batchSize, auto_rollback: true, ...serviceSettings },
    health: { path: '/alive', interval: healthInterval, timeout: '1s', healthy_threshold: 2, start_timeout: startTimeout },
    drain: { timeout: drainTimeout },
    runtime: { kind: 'process', command: [demoApp], initial_version: initialVersion, stop_timeout: '5s' },
    backends: Object.fromEntries(names.map((name, i) => [name, ports[i]])),
  }]));

  const haproxy = spawn('/usr/sbin/haproxy', ['-db', '-f', join(dir, 'haproxy.cfg')], {
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  started.add(haproxy);
  let haproxyErrors = '';
  haproxy.stderr.on('data', (chunk) => { haproxyErrors += chunk; });

  let baton;
  let token;
  const fleet = {
    dir,
    frontend: `http://127.0.0.1:${frontendPort}`,
    backendNames: names,
    users: USERS,
    get url() { return baton.url; },
    /** The harness's admin API token (`Authorization: Bearer`). */
    get token() { return token; },

    /** Signs `page` in as the user of `role` (`admin`, `deployer` or `viewer`). */
    signIn(page, role = 'deployer', options) {
      return signIn(page, baton.url, USERS[role], options);
    },

    /** Calls the JSON API with the harness's token; throws on a 4xx/5xx. */
    async api(path, init = {}) {
      const response = await fetch(`${baton.url}${path}`, { ...init, headers: bearer(token, init.headers) });
      const body = await response.json();
      if (!response.ok) throw new Error(`${init?.method ?? 'GET'} ${path}: ${response.status} ${JSON.stringify(body)}`);
      return body;
    },

    /** Starts a rollout through the JSON API; returns its id. */
    async deploy(version) {
      const { id } = await fleet.api('/api/services/web/deployments', {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ version }),
      });
      return id;
    },

    /** Polls `GET /api/deployments/{id}` until `done(deployment)`; bounded. */
    async waitDeployment(id, done, { timeoutMs = 60_000, what = 'the condition' } = {}) {
      const deadline = Date.now() + timeoutMs;
      let last;
      while (Date.now() < deadline) {
        last = await fleet.api(`/api/deployments/${id}`);
        if (done(last)) return last;
        await new Promise((resolve) => setTimeout(resolve, 100));
      }
      throw new Error(`rollout ${id}: ${what} not reached within ${timeoutMs} ms: ${JSON.stringify(last)}`);
    },

    /** Waits until the rollout has ended; returns it with its steps. */
    finished(id, options) {
      const going = ['queued', 'running', 'paused', 'awaiting_approval', 'awaiting_promote'];
      return fleet.waitDeployment(id, (d) => !going.includes(d.status), { what: 'the end', ...options });
    },

    /** Waits until every backend is UP in HAProxy (and, if given, runs `version`). */
    async waitAllUp({ version, timeoutMs = 30_000 } = {}) {
      const deadline = Date.now() + timeoutMs;
      let last;
      while (Date.now() < deadline) {
        try {
          last = await fleet.api('/api/services');
          const backends = last[0].backends;
          if (backends.length === names.length
            && backends.every((b) => b.load_balancer.length > 0 && b.load_balancer.every((n) => n.status === 'UP'))
            && (!version || backends.every((b) => b.version === version))) {
            return last;
          }
        } catch { /* starting */ }
        await new Promise((resolve) => setTimeout(resolve, 100));
      }
      throw new Error(`the fleet did not come up${version ? ` on ${version}` : ''} within ${timeoutMs} ms: ${JSON.stringify(last)}\n${haproxyErrors}`);
    },

    /**
     * Stops Baton (SIGTERM as an operator would, or SIGKILL as a crash) and starts it again on
     * the same address and database.
     */
    async restartBaton({ signal = 'SIGTERM' } = {}) {
      await endChild(baton.child, signal);
      baton = await serveBaton(dir, { listen: `127.0.0.1:${batonPort}` });
    },

    async stop() {
      if (baton) await endChild(baton.child);
      await endChild(haproxy, 'SIGKILL');
      killRecordedBackends(stateDir);
      stateDirs.delete(stateDir);
      if (!process.env.BATON_E2E_KEEP) rmSync(dir, { recursive: true, force: true });
    },
  };

  try {
    token = await createAccounts(dir);
    baton = await serveBaton(dir, { listen: `127.0.0.1:${batonPort}` });
    await fleet.waitAllUp({ version: initialVersion, timeoutMs: upTimeoutMs });
  } catch (error) {
    await fleet.stop();
    throw error;
  }
  return fleet;
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
  const wasm = page.waitForResponse((response) => response.url().endsWith('.wasm') && response.ok(), { timeout: 15_000 });
  await page.goto(url);
  await wasm;
  await page.waitForSelector('html[data-hydrated="true"]', { timeout: 15_000 });
}

/** Collects uncaught page errors and console errors, to assert there were none. */
export function watchErrors(page) {
  const errors = [];
  page.on('pageerror', (error) => errors.push(`pageerror: ${error.message}`));
  page.on('console', (message) => {
    if (message.type() === 'error') errors.push(`console: ${message.text()}`);
  });
  return errors;
}

export function screenshotPath(name) {
  mkdirSync(artifacts, { recursive: true });
  return join(artifacts, name);
}
