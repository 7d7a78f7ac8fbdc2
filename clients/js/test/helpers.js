// Test helpers: the real lockservice binary in embedded mode on a free
// port, NATS connections to it, and a relay that stands between a client
// and the service to lose or replace answers.

import { execFileSync, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { EventEmitter, once } from 'node:events';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

import { connect, headers } from '@nats-io/transport-node';

const repoRoot = resolve(dirname(fileURLToPath(import.meta.url)), '../../..');

/** lockserviceBinary returns $LOCKSERVICE_BIN, or builds the binary from this checkout. */
function lockserviceBinary(dir) {
  if (process.env.LOCKSERVICE_BIN) return process.env.LOCKSERVICE_BIN;
  const bin = join(dir, 'lockservice');
  execFileSync('go', ['build', '-o', bin, './cmd/lockservice'], { cwd: repoRoot, stdio: 'inherit' });
  return bin;
}

async function freePort() {
  const srv = createServer();
  srv.listen(0, '127.0.0.1');
  await once(srv, 'listening');
  const { port } = /** @type {import('node:net').AddressInfo} */ (srv.address());
  srv.close();
  await once(srv, 'close');
  return port;
}

/**
 * startService starts lockservice (embedded nats-server with JetStream, a
 * temporary data directory, a free port) and resolves once the service
 * answers. Call stop() when done.
 * @param {string[]} [extraArgs]
 */
export async function startService(extraArgs = []) {
  const dir = mkdtempSync(join(tmpdir(), 'lockservice-js-'));
  const bin = lockserviceBinary(dir);
  const port = await freePort();
  const url = `nats://127.0.0.1:${port}`;
  const proc = spawn(bin, ['serve', '--host', '127.0.0.1', '--port', String(port), '--data-dir', join(dir, 'data'), ...extraArgs], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  proc.stdout.on('data', (d) => (output += d));
  proc.stderr.on('data', (d) => (output += d));
  const exited = once(proc, 'exit');

  const stop = async () => {
    if (proc.exitCode === null && proc.signalCode === null) {
      proc.kill('SIGTERM');
      await exited;
    }
    rmSync(dir, { recursive: true, force: true });
  };

  // Ready when a get is answered: nats-server first, then the service.
  const deadline = Date.now() + 30_000;
  let nc;
  try {
    for (;;) {
      if (proc.exitCode !== null) throw new Error(`lockservice exited with ${proc.exitCode}:\n${output}`);
      if (Date.now() > deadline) throw new Error(`lockservice did not answer within 30 s:\n${output}`);
      try {
        nc ??= await connect({ servers: url, timeout: 1000 });
        await nc.request('lock.get.ready', '', { timeout: 1000 });
        break;
      } catch {
        await Promise.race([new Promise((r) => setTimeout(r, 50)), exited]);
      }
    }
  } catch (err) {
    await nc?.close();
    await stop();
    throw err;
  } finally {
    await nc?.close();
  }
  return { url, stop, output: () => output };
}

/** newConnection connects to url; close it when done. */
export function newConnection(url) {
  return connect({ servers: url });
}

/** uniqueKey returns a key no other test uses. */
export function uniqueKey(name) {
  return `${name}.${randomBytes(6).toString('hex')}`;
}

/**
 * forceLock takes the lease of key away from its holder through the admin
 * endpoint, as an operator would.
 * @param {import('@nats-io/transport-node').NatsConnection} nc
 * @param {string} key the full key (with the namespace)
 */
export async function forceLock(nc, key) {
  const m = await nc.request(`lock.admin.force.${key}`, JSON.stringify({ reason: 'test' }), { timeout: 5000 });
  return JSON.parse(m.string());
}

/**
 * nextEvent resolves with the next (or a past) value for which pred holds
 * among the values emitted as 'event' by emitter; `list` holds the past ones.
 * @template T
 * @param {EventEmitter} emitter
 * @param {T[]} list
 * @param {(v: T) => boolean} pred
 * @returns {Promise<T>}
 */
export function nextEvent(emitter, list, pred) {
  const found = list.find(pred);
  if (found) return Promise.resolve(found);
  return new Promise((resolve) => {
    const on = (v) => {
      if (pred(v)) {
        emitter.off('event', on);
        resolve(v);
      }
    };
    emitter.on('event', on);
  });
}

/**
 * watch subscribes (without answering) to `subject` and records each
 * message's decoded JSON body.
 * @param {import('@nats-io/transport-node').NatsConnection} nc
 * @param {string} subject
 */
export async function watch(nc, subject) {
  const events = new EventEmitter();
  /** @type {Array<Record<string, any>>} */
  const seen = [];
  const sub = nc.subscribe(subject, {
    callback: (_err, m) => {
      const body = m.data.length ? JSON.parse(m.string()) : {};
      seen.push(body);
      events.emit('event', body);
    },
  });
  await nc.flush();
  return {
    seen,
    /** @param {(b: Record<string, any>) => boolean} pred */
    next: (pred) => nextEvent(events, seen, pred),
    /** resolves when `n` messages have been seen */
    count: (n) => nextEvent(events, seen, () => seen.length >= n),
    stop: () => sub.unsubscribe(),
  };
}

/**
 * @typedef {object} Relayed
 * @property {string} op
 * @property {string} key
 * @property {Record<string, any>} body the request
 * @property {'pass' | 'lose' | '503'} action
 * @property {Record<string, any>} [answer] the service's answer (when it answered)
 */

/**
 * relay stands between clients speaking to subject prefix `from` and the
 * service on `to` (default "lock"): it forwards every request to the
 * service and, for each, asks decide what the client gets: the service's
 * answer ('pass'), nothing ('lose': the answer is lost in transit), or a
 * 503 ('503': the service acted, the client is told it is unavailable).
 * A request the service does not answer gets no answer either.
 * @param {import('@nats-io/transport-node').NatsConnection} nc
 * @param {string} from
 * @param {(r: Relayed) => 'pass' | 'lose' | '503'} decide
 */
export async function relay(nc, from, decide, to = 'lock') {
  const events = new EventEmitter();
  /** @type {Relayed[]} */
  const seen = [];
  const sub = nc.subscribe(`${from}.>`, {
    callback: async (_err, m) => {
      const rest = m.subject.slice(from.length + 1);
      const dot = rest.indexOf('.');
      /** @type {Relayed} */
      const r = {
        op: rest.slice(0, dot),
        key: rest.slice(dot + 1),
        body: m.data.length ? JSON.parse(m.string()) : {},
        action: 'pass',
      };
      r.action = m.reply ? decide(r) : 'pass';
      seen.push(r);
      events.emit('event', r);
      const target = `${to}.${rest}`;
      if (!m.reply) {
        nc.publish(target, m.data);
        return;
      }
      let answer;
      try {
        answer = await nc.request(target, m.data, { timeout: 20_000 });
      } catch {
        return; // the service did not answer (e.g. an alive nobody confirms)
      }
      if (answer.data.length) r.answer = JSON.parse(answer.string());
      events.emit('answer', r);
      if (r.action === 'pass') {
        m.respond(answer.data, { headers: answer.headers });
      } else if (r.action === '503') {
        const h = headers();
        h.set('Nats-Service-Error-Code', '503');
        h.set('Nats-Service-Error', 'injected by the test relay');
        m.respond('', { headers: h });
      }
    },
  });
  await nc.flush();
  return {
    seen,
    /** @param {(r: Relayed) => boolean} pred */
    next: (pred) => nextEvent(events, seen, pred),
    /** resolves with r once the service's answer to it arrived */
    answered: (r) => (r.answer ? Promise.resolve(r) : new Promise((resolve) => {
      const on = (x) => {
        if (x === r) {
          events.off('answer', on);
          resolve(r);
        }
      };
      events.on('answer', on);
    })),
    stop: () => sub.unsubscribe(),
  };
}
