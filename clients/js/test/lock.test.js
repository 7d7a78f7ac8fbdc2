// The seed's API against the real lockservice: acquire, update, release,
// withLock, tryAcquireLock, wait, delete, timeouts and fencing tokens.

import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import { DistributedLock, NotHeldError, TimeoutError, create } from '../src/index.js';
import { forceLock, newConnection, startService, uniqueKey, watch } from './helpers.js';

/** @type {Awaited<ReturnType<typeof startService>>} */
let svc;
/** @type {import('@nats-io/transport-node').NatsConnection} */
let nc;
/** @type {DistributedLock} */
let lock;

before(async () => {
  svc = await startService();
  nc = await newConnection(svc.url);
  lock = await DistributedLock.create(nc, { namespace: 'js-test', defaultLockDurationMs: 10_000 });
});

after(async () => {
  await lock?.close();
  await nc?.close();
  await svc?.stop();
});

describe('acquireLock, update, releaseLock', () => {
  it('writes the updated state on release and returns it to the next holder', async () => {
    const key = uniqueKey('state');
    const w = await lock.acquireLock(key, 1000);
    assert.equal(w.value, null);
    assert.equal(typeof w.token, 'bigint');
    assert.ok(w.token > 0n, `token ${w.token}, want > 0`);
    assert.match(w.lockId, /^[-_a-zA-Z0-9]{22}$/);
    assert.equal(w.key, `js-test.${key}`);

    const updated = w.update({ orders: 42 });
    assert.equal(w.value, null, 'update must not change the original Writable');
    assert.deepEqual(updated.value, { orders: 42 });
    assert.equal(updated.lockId, w.lockId);
    assert.equal(await lock.releaseLock(key, updated), true);
    assert.equal(w.signal.aborted, true, 'the signal is aborted once released');

    const w2 = await lock.acquireLock(key, 1000);
    assert.deepEqual(w2.value, { orders: 42 });
    assert.ok(w2.token > w.token, `token ${w2.token} after ${w.token}, want greater`);
    // Releasing the Writable that acquire returned keeps the state.
    assert.equal(await lock.releaseLock(key, w2), true);
    const info = await lock.get(key);
    assert.deepEqual({ locked: info.locked, hasValue: info.hasValue, value: info.value }, { locked: false, hasValue: true, value: { orders: 42 } });
  });

  it('answers false and writes nothing when the lease was lost', async () => {
    const key = uniqueKey('lost');
    const w = await lock.acquireLock(key, 1000);
    await forceLock(nc, `js-test.${key}`);
    assert.equal(await lock.releaseLock(key, w.update('late')), false);
    assert.equal((await lock.get(key)).hasValue, false);
  });

  it('uses the seed configuration name lockTimeoutMs for the lease', async () => {
    const seed = await create(nc, { namespace: 'js-test', lockTimeoutMs: 7000 });
    const key = uniqueKey('seedcfg');
    const w = await seed.acquireLock(key, 1000);
    const info = await seed.get(key);
    assert.equal(info.ttlMs, 7000);
    assert.equal(info.token, w.token);
    assert.equal(await seed.releaseLock(key, w), true);
    await seed.close();
  });

  it('maps the namespace to a key prefix', async () => {
    const key = uniqueKey('ns');
    const w = await lock.acquireLock(key, 1000);
    const m = await nc.request(`lock.get.js-test.${key}`, '', { timeout: 5000 });
    assert.equal(JSON.parse(m.string()).locked, true);
    await lock.releaseLock(key, w);
  });

  it('parses tokens as BigInt and keeps them across a lease', async () => {
    const key = uniqueKey('token');
    const w = await lock.acquireLock(key, 1000);
    const info = await lock.get(key);
    assert.equal(typeof info.token, 'bigint');
    assert.equal(info.token, w.token);
    await lock.releaseLock(key, w);
  });
});

describe('withLock', () => {
  it('writes and returns what the callback returns', async () => {
    const key = uniqueKey('counter');
    const inc = (/** @type {number | null} */ n) => (n ?? 0) + 1;
    const first = await lock.withLock(key, 1000, async (n) => inc(n));
    assert.equal(first.value, 1);
    const second = await lock.withLock(key, 1000, async (n) => inc(n));
    assert.equal(second.value, 2);
    assert.ok(second.token > first.token, `token ${second.token} after ${first.token}, want greater`);
    assert.equal((await lock.get(key)).value, 2);
  });

  it('releases without writing and rethrows when the callback throws', async () => {
    const key = uniqueKey('throws');
    await lock.withLock(key, 1000, () => 'before');
    const boom = new Error('boom');
    await assert.rejects(lock.withLock(key, 1000, () => {
      throw boom;
    }), (err) => err === boom);
    const info = await lock.get(key);
    assert.deepEqual({ locked: info.locked, value: info.value }, { locked: false, value: 'before' });
  });

  it('keeps the state when the callback returns undefined', async () => {
    const key = uniqueKey('undef');
    await lock.withLock(key, 1000, () => ({ a: 1 }));
    const r = await lock.withLock(key, 1000, () => undefined);
    assert.deepEqual(r.value, { a: 1 });
    assert.deepEqual((await lock.get(key)).value, { a: 1 });
  });

  it('passes null for a new key and stores null when the callback returns null', async () => {
    const key = uniqueKey('null');
    let seen;
    const r = await lock.withLock(key, 1000, (s) => {
      seen = s;
      return null;
    });
    assert.equal(seen, null);
    assert.equal(r.value, null);
    const info = await lock.get(key);
    assert.deepEqual({ hasValue: info.hasValue, value: info.value }, { hasValue: true, value: null });
  });
});

describe('tryAcquireLock', () => {
  it('does not get a held key and names its holder', async () => {
    const key = uniqueKey('try');
    const owner = await create(nc, { namespace: 'js-test', owner: 'worker-1' });
    const held = await owner.tryAcquireLock(key, 10_000);
    assert.equal(held.acquired, true);
    const r = await lock.tryAcquireLock(key);
    assert.equal(r.acquired, false);
    assert.equal(r.value, undefined);
    assert.equal(r.holder?.token, held.value?.token);
    assert.equal(r.holder?.owner, 'worker-1');
    assert.equal(await owner.releaseLock(key, /** @type {any} */ (held.value)), true);
    const again = await lock.tryAcquireLock(key);
    assert.equal(again.acquired, true);
    await lock.releaseLock(key, /** @type {any} */ (again.value));
    await owner.close();
  });
});

describe('wait', () => {
  it('returns at once when the key is not locked', async () => {
    const key = uniqueKey('wait-free');
    await lock.withLock(key, 1000, () => 'v');
    assert.equal((await lock.wait(key, 0)).value, 'v');
  });

  it('is woken by the release and returns the state it wrote', async () => {
    const key = uniqueKey('wait');
    const requests = await watch(nc, `lock.wait.js-test.${key}`);
    const w = await lock.acquireLock(key, 1000);
    let settled = false;
    const waiting = lock.wait(key, 20_000).finally(() => (settled = true));
    await requests.count(1); // the wait request is on its way
    await lock.get(key); // a round trip to the service after it
    assert.equal(settled, false, 'wait returned while the key was locked');
    assert.equal(await lock.releaseLock(key, w.update('released state')), true);
    assert.equal((await waiting).value, 'released state');
    requests.stop();
  });

  it('throws a TimeoutError when the key stays locked', async () => {
    const key = uniqueKey('wait-timeout');
    const w = await lock.acquireLock(key, 1000);
    await assert.rejects(lock.wait(key, 300), TimeoutError);
    await assert.rejects(lock.wait(key, 0), TimeoutError);
    await lock.releaseLock(key, w);
  });
});

describe('timeouts and tokens', () => {
  it('throws a TimeoutError when the lock cannot be had in time and leaves nothing held', async () => {
    const key = uniqueKey('timeout');
    const w = await lock.acquireLock(key, 1000);
    const other = await create(nc, { namespace: 'js-test' });
    const start = Date.now();
    await assert.rejects(other.acquireLock(key, 400, 60_000), (err) => {
      assert.ok(err instanceof TimeoutError, `got ${err}`);
      assert.equal(err.code, 'LOCK_TIMEOUT');
      return true;
    });
    assert.ok(Date.now() - start >= 350, `gave up after ${Date.now() - start} ms, want about 400`);
    // The holder still holds it; once released, the key is free (the timed
    // out request was not granted behind the holder's back).
    assert.equal(await lock.releaseLock(key, w), true);
    const r = await lock.tryAcquireLock(key);
    assert.equal(r.acquired, true);
    await lock.releaseLock(key, /** @type {any} */ (r.value));
    await other.close();
  });

  it('gives each holder a strictly greater token, also on hand-off to a waiter', async () => {
    const key = uniqueKey('tokens');
    let last = 0n;
    for (let i = 0; i < 5; i++) {
      const w = await lock.acquireLock(key, 1000);
      assert.ok(w.token > last, `holder ${i}: token ${w.token} after ${last}, want greater`);
      last = w.token;
      await lock.releaseLock(key, w);
    }
    const holder = await lock.acquireLock(key, 1000);
    const parked = await watch(nc, `lock.acquire.js-test.${key}`);
    const waiter = lock.acquireLock(key, 20_000);
    await parked.count(1);
    await lock.get(key);
    await lock.releaseLock(key, holder.update('handed over'));
    const w = await waiter;
    assert.ok(w.token > holder.token, `waiter's token ${w.token} after ${holder.token}, want greater`);
    assert.equal(w.value, 'handed over');
    await lock.releaseLock(key, w);
    parked.stop();
  });
});

describe('delete', () => {
  it('deletes the state and releases the lock', async () => {
    const key = uniqueKey('delete');
    await lock.withLock(key, 1000, () => 'x');
    const w = await lock.acquireLock(key, 1000);
    assert.equal(await lock.delete(key, w), true);
    const info = await lock.get(key);
    assert.deepEqual({ locked: info.locked, hasValue: info.hasValue }, { locked: false, hasValue: false });
    assert.equal(await lock.delete(key, w), false, 'a second delete finds the lock gone');
  });
});

describe('lost leases in withLock', () => {
  it('writes nothing and throws a NotHeldError when the lease was taken away', async () => {
    const key = uniqueKey('forced');
    await lock.withLock(key, 1000, () => 'kept');
    await assert.rejects(lock.withLock(key, 1000, async (_s, signal) => {
      await forceLock(nc, `js-test.${key}`);
      if (!signal.aborted) await new Promise((r) => signal.addEventListener('abort', r, { once: true }));
      return 'overwritten';
    }, 1000), NotHeldError);
    assert.equal((await lock.get(key)).value, 'kept');
  });
});

describe('lock-delay', () => {
  it('keeps a forced key from everyone for the delay, then grants it to a waiter', async () => {
    const key = uniqueKey('delay');
    const w = await lock.acquireLock(key, 1000, 10_000, { lockDelayMs: 1000 });
    await forceLock(nc, `js-test.${key}`);
    const r = await lock.tryAcquireLock(key);
    assert.equal(r.acquired, false);
    assert.equal(r.holder?.token, w.token);
    assert.ok((r.holder?.delayMs ?? 0) > 0, `holder ${JSON.stringify({ ...r.holder, token: String(r.holder?.token) })}, want a delayMs`);
    const info = await lock.get(key);
    assert.equal(info.locked, false);
    assert.ok((info.delayMs ?? 0) > 0);
    const next = await lock.acquireLock(key, 10_000);
    assert.ok(next.token > w.token);
    await lock.releaseLock(key, next);
  });
});
