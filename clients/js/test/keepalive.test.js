// Keep-alive, lost leases, the max hold and close, against the real
// lockservice.

import assert from 'node:assert/strict';
import { performance } from 'node:perf_hooks';
import { after, before, describe, it } from 'node:test';

import { ClosedError, LeaseExpiredError, MaxHoldError, NotHeldError, ReleasedError, create } from '../src/index.js';
import { forceLock, newConnection, startService, uniqueKey, watch } from './helpers.js';

/** @type {Awaited<ReturnType<typeof startService>>} */
let svc;
/** @type {import('@nats-io/transport-node').NatsConnection} */
let nc;
/** @type {import('../src/index.js').DistributedLock} */
let lock;

before(async () => {
  svc = await startService();
  nc = await newConnection(svc.url);
  lock = await create(nc, { namespace: 'ka' });
});

after(async () => {
  await lock?.close();
  await nc?.close();
  await svc?.stop();
});

/** aborted resolves with signal's reason once it is aborted. */
function aborted(/** @type {AbortSignal} */ signal) {
  if (signal.aborted) return Promise.resolve(signal.reason);
  return new Promise((resolve) => signal.addEventListener('abort', () => resolve(signal.reason), { once: true }));
}

// Independent keys: the tests run at the same time. Leases kept alive are
// 2 s (a refresh every 667 ms) so that a loaded machine does not lose them.
describe('keep-alive', { concurrency: true }, () => {
  it('keeps the lease of withLock past its TTL while the callback runs', async () => {
    const key = uniqueKey('long');
    const ttl = 2000;
    const refreshes = await watch(nc, `lock.refresh.ka.${key}`);
    const other = await create(nc, { namespace: 'ka' });
    const start = Date.now();
    const r = await lock.withLock(key, 1000, async (state, signal) => {
      // Run for one and a half TTLs, and at least three refreshes (one
      // every TTL/3).
      await refreshes.next(() => refreshes.seen.length >= 3 && Date.now() - start > 1.5 * ttl);
      const held = await other.tryAcquireLock(key);
      assert.equal(held.acquired, false, 'the key was free while the callback ran');
      assert.equal(signal.aborted, false);
      return 'done';
    }, ttl);
    assert.equal(r.value, 'done');
    assert.equal((await lock.get(key)).value, 'done');
    const info = await lock.get(key);
    assert.equal(info.locked, false);
    refreshes.stop();
    await other.close();
  });

  it('aborts the callback signal when the lease is lost, and writes nothing', async () => {
    const key = uniqueKey('forced');
    /** @type {unknown} */
    let reason;
    await assert.rejects(lock.withLock(key, 1000, async (_s, signal) => {
      await forceLock(nc, `ka.${key}`);
      reason = await aborted(signal); // the next refresh is answered 409
      return 'must not be written';
    }, 2000), (err) => {
      assert.ok(err instanceof NotHeldError, `got ${err}`);
      return true;
    });
    assert.ok(reason instanceof NotHeldError, `signal reason ${reason}, want a NotHeldError`);
    assert.equal(/** @type {NotHeldError} */ (reason).status, 409);
    const info = await lock.get(key);
    assert.deepEqual({ locked: info.locked, hasValue: info.hasValue }, { locked: false, hasValue: false });
  });

  it('keeps an acquired lock alive on request and reports its loss on the Writable', async () => {
    const key = uniqueKey('acq');
    const refreshes = await watch(nc, `lock.refresh.ka.${key}`);
    const w = await lock.acquireLock(key, 1000, 2000, { keepAlive: true });
    await refreshes.count(4); // more than a TTL
    assert.equal(w.signal.aborted, false);
    assert.equal((await lock.get(key)).token, w.token);
    await forceLock(nc, `ka.${key}`);
    assert.ok((await aborted(w.signal)) instanceof NotHeldError);
    assert.equal(await lock.releaseLock(key, w.update('late')), false);
    refreshes.stop();
  });

  it('without keep-alive, ends the lock at its deadline', async () => {
    const key = uniqueKey('expire');
    const start = performance.now();
    const w = await lock.acquireLock(key, 1000, 1000);
    const reason = await aborted(w.signal);
    assert.ok(reason instanceof LeaseExpiredError, `got ${reason}`);
    assert.ok(reason instanceof NotHeldError);
    const held = performance.now() - start;
    assert.ok(held >= 995, `ended after ${held} ms, before the 1000 ms lease`);
  });

  it('stops renewing when released', async () => {
    const key = uniqueKey('stop');
    const refreshes = await watch(nc, `lock.refresh.ka.${key}`);
    const w = await lock.acquireLock(key, 1000, 1000, { keepAlive: true });
    await refreshes.count(1);
    assert.equal(await lock.releaseLock(key, w), true);
    assert.ok(w.signal.reason instanceof ReleasedError);
    const n = refreshes.seen.length;
    // Another holder takes the key for longer than the old keep-alive's period:
    // a refresh by the old lock id would show up here.
    const w2 = await lock.acquireLock(key, 1000, 1000, { keepAlive: true });
    await refreshes.count(n + 3);
    assert.ok(refreshes.seen.slice(n).every((b) => b.lock_id === w2.lockId), 'the released lock was refreshed');
    await lock.releaseLock(key, w2);
    refreshes.stop();
  });

  it('gives the lock up at maxHoldMs', async () => {
    const key = uniqueKey('maxhold');
    await assert.rejects(lock.withLock(key, 1000, async (_s, signal) => {
      await aborted(signal);
      return 'x';
    }, 10_000, { maxHoldMs: 300 }), MaxHoldError);
    const r = await lock.tryAcquireLock(key);
    assert.equal(r.acquired, true, 'the lock was not released at the max hold');
    await lock.releaseLock(key, /** @type {any} */ (r.value));
  });
});

describe('close', () => {
  it('ends a waiting acquire with a ClosedError and withdraws it', async () => {
    const key = uniqueKey('close');
    const holder = await lock.acquireLock(key, 1000, 30_000);
    const acquires = await watch(nc, `lock.acquire.ka.${key}`);
    const closing = await create(nc, { namespace: 'ka' });
    const waiting = closing.acquireLock(key, 20_000, 60_000);
    await acquires.count(1);
    await lock.get(key);
    const cancels = await watch(nc, `lock.cancel.ka.${key}`);
    await closing.close();
    await assert.rejects(waiting, ClosedError);
    await cancels.count(1);
    assert.equal(cancels.seen[0].lock_id, acquires.seen[0].lock_id);
    await assert.rejects(closing.tryAcquireLock(key), ClosedError);
    // The withdrawn request is not granted when the holder releases.
    assert.equal(await lock.releaseLock(key, holder), true);
    const r = await lock.tryAcquireLock(key);
    assert.equal(r.acquired, true);
    await lock.releaseLock(key, /** @type {any} */ (r.value));
    acquires.stop();
    cancels.stop();
  });
});
