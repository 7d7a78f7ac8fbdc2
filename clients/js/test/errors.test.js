// Bad input and unavailable services get typed errors that say what to fix.

import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import {
  BadRequestError, ClosedError, LockError, NotHeldError, TimeoutError, UnavailableError, create,
} from '../src/index.js';
import { decodeAnswer, encodeRequest, keyProblem, topLevelToken } from '../src/wire.js';
import { newConnection, startService, uniqueKey } from './helpers.js';

/** @type {Awaited<ReturnType<typeof startService>>} */
let svc;
/** @type {import('@nats-io/transport-node').NatsConnection} */
let nc;
/** @type {import('../src/index.js').DistributedLock} */
let lock;

before(async () => {
  svc = await startService();
  nc = await newConnection(svc.url);
  lock = await create(nc, { namespace: 'errs' });
});

after(async () => {
  await lock?.close();
  await nc?.close();
  await svc?.stop();
});

/**
 * rejectsWith asserts that p rejects with an instance of Class whose code
 * is code and whose message matches re.
 */
async function rejectsWith(p, Class, code, re) {
  await assert.rejects(p, (err) => {
    assert.ok(err instanceof Class, `got ${err?.name}: ${err?.message}, want a ${Class.name}`);
    assert.ok(err instanceof LockError);
    assert.equal(err.code, code);
    assert.match(err.message, re);
    return true;
  });
}

describe('bad input', () => {
  it('rejects invalid keys before sending, naming the character', async () => {
    await rejectsWith(lock.acquireLock('orders:42', 100), BadRequestError, 'LOCK_BAD_REQUEST', /":" at position 6/);
    await rejectsWith(lock.tryAcquireLock('a..b'), BadRequestError, 'LOCK_BAD_REQUEST', /empty token/);
    await rejectsWith(lock.wait('', 100), BadRequestError, 'LOCK_BAD_REQUEST', /empty/);
    await rejectsWith(lock.get(/** @type {any} */ (42)), BadRequestError, 'LOCK_BAD_REQUEST', /must be a string/);
  });

  it('rejects bad durations and timeouts', async () => {
    await rejectsWith(lock.acquireLock('k', -1), BadRequestError, 'LOCK_BAD_REQUEST', /timeoutMs must be a number of milliseconds >= 0/);
    await rejectsWith(lock.acquireLock('k', Number.NaN), BadRequestError, 'LOCK_BAD_REQUEST', /timeoutMs/);
    await rejectsWith(lock.tryAcquireLock('k', 0), BadRequestError, 'LOCK_BAD_REQUEST', /lockDuration must be a number of milliseconds >= 1/);
    await rejectsWith(lock.withLock('k', 100, /** @type {any} */ ('not a function')), BadRequestError, 'LOCK_BAD_REQUEST', /callback must be a function/);
  });

  it('passes the service 400 on with its status and message', async () => {
    const key = uniqueKey('ttl');
    await assert.rejects(lock.tryAcquireLock(key, 3_600_000), (err) => {
      assert.ok(err instanceof BadRequestError, `got ${err}`);
      assert.equal(err.status, 400);
      assert.equal(err.op, 'acquire');
      assert.equal(err.key, `errs.${key}`);
      assert.match(err.message, /ttl_ms 3600000 exceeds the maximum/);
      return true;
    });
  });

  it('rejects a value that is not JSON, and a Writable of another key', async () => {
    const key = uniqueKey('value');
    const w = await lock.acquireLock(key, 1000);
    await rejectsWith(lock.releaseLock(key, w.update(/** @type {any} */ (1n))), BadRequestError, 'LOCK_BAD_REQUEST', /cannot be encoded as JSON/);
    await rejectsWith(lock.releaseLock('other', w), BadRequestError, 'LOCK_BAD_REQUEST', /holds "errs\..*", not "errs.other"/);
    await rejectsWith(lock.releaseLock(key, /** @type {any} */ ({ value: 1, lockId: w.lockId })), BadRequestError, 'LOCK_BAD_REQUEST', /must be the Writable/);
    assert.equal(await lock.releaseLock(key, w), true);
  });

  it('rejects a callback result that is not JSON, writing nothing', async () => {
    const key = uniqueKey('result');
    await rejectsWith(lock.withLock(key, 1000, () => /** @type {any} */ (1n)), BadRequestError, 'LOCK_BAD_REQUEST', /cannot be encoded as JSON/);
    const info = await lock.get(key);
    assert.deepEqual({ locked: info.locked, hasValue: info.hasValue }, { locked: false, hasValue: false });
  });

  it('rejects bad configurations', async () => {
    await rejectsWith(create(nc, { namespace: 'a b' }), BadRequestError, 'LOCK_BAD_REQUEST', /namespace .* contains " "/);
    await rejectsWith(create(nc, { namespace: 'a', lockTimeoutMs: 1000, defaultLockDurationMs: 2000 }), BadRequestError, 'LOCK_BAD_REQUEST', /not both/);
    await rejectsWith(create(nc, { namespace: 'a', aliveWindowMs: 500 }), BadRequestError, 'LOCK_BAD_REQUEST', /aliveWindowMs 500 is out of range/);
    await rejectsWith(create(nc, { namespace: 'a', namespaceAs: /** @type {any} */ ('bucket') }), BadRequestError, 'LOCK_BAD_REQUEST', /namespaceAs/);
    await rejectsWith(create(/** @type {any} */ ({}), { namespace: 'a' }), BadRequestError, 'LOCK_BAD_REQUEST', /NATS connection/);
  });

  it('warns that objectExpiryMs belongs to the service', async () => {
    const warned = new Promise((resolve) => {
      const on = (/** @type {any} */ w) => {
        if (w.code === 'LOCKSERVICE_OBJECT_EXPIRY') {
          process.off('warning', on);
          resolve(w);
        }
      };
      process.on('warning', on);
    });
    const l = await create(nc, { namespace: 'a', lockTimeoutMs: 1000, objectExpiryMs: 300_000 });
    const w = /** @type {any} */ (await warned);
    assert.equal(w.code, 'LOCKSERVICE_OBJECT_EXPIRY');
    assert.match(w.message, /--object-ttl/);
    await l.close();
  });
});

describe('unavailable and closed', () => {
  it('reports no responders when no service listens on the prefix', async () => {
    const l = await create(nc, { namespace: 'nosuchprefix', namespaceAs: 'subject' });
    await assert.rejects(l.tryAcquireLock('k'), (err) => {
      assert.ok(err instanceof UnavailableError, `got ${err}`);
      assert.equal(err.noResponders, true);
      assert.match(err.message, /no lock service instance is listening on nosuchprefix\.acquire\.k/);
      return true;
    });
    // A blocking acquire (on its own inbox) too.
    await assert.rejects(l.acquireLock('k', 5000), (err) => err instanceof UnavailableError && err.noResponders);
    await l.close();
  });

  it('refuses calls after close, except releaseLock', async () => {
    const l = await create(nc, { namespace: 'errs' });
    const key = uniqueKey('closed');
    const w = await l.acquireLock(key, 1000);
    await l.close();
    await rejectsWith(l.tryAcquireLock(key), ClosedError, 'LOCK_CLOSED', /closed/);
    assert.ok(w.signal.reason instanceof ClosedError);
    assert.equal(await l.releaseLock(key, w), true);
  });
});

describe('wire format', () => {
  it('reads uint64 tokens exactly', () => {
    const text = '{"acquired":true,"key":"k","lock_id":"x","token":18446744073709551615,"value":{"token":1,"s":"\\"token\\":2"}}';
    assert.equal(topLevelToken(text), '18446744073709551615');
    const msg = /** @type {any} */ ({ data: new TextEncoder().encode(text), headers: undefined });
    const a = decodeAnswer('acquire', 'k', msg);
    assert.equal(a.token, 18446744073709551615n);
    assert.deepEqual(a.value, { token: 1, s: '"token":2' });
    assert.equal(topLevelToken('{"value":{"token":5},"key":"token"}'), undefined);
    assert.equal(topLevelToken('{ "token" : 9007199254740993 }'), '9007199254740993');
  });

  it('maps error answers to typed errors', () => {
    const errAnswer = (code) => /** @type {any} */ ({
      data: new Uint8Array(),
      headers: { get: (h) => (h === 'Nats-Service-Error-Code' ? String(code) : 'what went wrong') },
    });
    const cases = [[400, BadRequestError], [408, TimeoutError], [409, NotHeldError], [503, UnavailableError]];
    for (const [code, Class] of cases) {
      assert.throws(() => decodeAnswer('op', 'k', errAnswer(code)), (err) => err instanceof Class && err.status === code && /what went wrong/.test(err.message));
    }
    assert.throws(() => decodeAnswer('op', 'k', errAnswer(500)), (err) => err.code === 'LOCK_INTERNAL' && err.status === 500);
  });

  it('encodes requests with a raw JSON value', () => {
    assert.equal(encodeRequest({ lock_id: 'x', ttl_ms: undefined }, '{"a":1}'), '{"lock_id":"x","value":{"a":1}}');
    assert.equal(encodeRequest({}, 'null'), '{"value":null}');
    assert.equal(encodeRequest({ lock_id: 'x' }), '{"lock_id":"x"}');
  });

  it('validates keys as the service does', () => {
    for (const ok of ['orders.42', 'tenant-7/jobs.nightly', 'a=b', 'A_b']) assert.equal(keyProblem(ok), '', ok);
    for (const bad of ['orders:42', 'a*b', 'a.>', 'a..b', '.a', 'a.', '', 'é', 'x'.repeat(513)]) assert.notEqual(keyProblem(bad), '', bad);
  });
});
