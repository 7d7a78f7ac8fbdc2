// Lost replies and unknown outcomes (docs/PROTOCOL.md "Lost replies,
// retries, giving up" and "Liveness window"), against the real lockservice.
// The client speaks to the subject prefix "relay"; the test relay forwards
// every request to the service ("lock") and loses or replaces the answers
// the test picks, as a network or an overloaded instance would.

import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import { UnavailableError, create } from '../src/index.js';
import { newConnection, relay, startService, uniqueKey, watch } from './helpers.js';

/** @type {Awaited<ReturnType<typeof startService>>} */
let svc;
/** @type {import('@nats-io/transport-node').NatsConnection} */
let nc;
/** @type {import('../src/index.js').DistributedLock} */
let direct;

before(async () => {
  svc = await startService();
  nc = await newConnection(svc.url);
  direct = await create(nc, { namespace: '' });
});

after(async () => {
  await direct?.close();
  await nc?.close();
  await svc?.stop();
});

/**
 * faulty returns a DistributedLock whose requests go through a relay that
 * applies actions[i] to the i-th acquire (then 'pass'); both end with t.
 * @param {import('node:test').TestContext} t
 * @param {Array<'pass' | 'lose' | '503'>} actions
 */
async function faulty(t, actions) {
  let n = 0;
  const r = await relay(nc, 'relay', (req) => (req.op === 'acquire' ? actions[n++] ?? 'pass' : 'pass'));
  const lock = await create(nc, { namespace: '', subjectPrefix: 'relay', requestTimeoutMs: 1000, aliveWindowMs: 1000 });
  t.after(async () => {
    await lock.close();
    r.stop();
  });
  return { r, lock };
}

describe('unknown outcomes of an acquire', () => {
  it('asks again with the same lock id and wait_ms 0 after a lost answer, and gets the grant', async (t) => {
    const key = uniqueKey('lost');
    const { r, lock } = await faulty(t, ['lose']);
    const got = await lock.tryAcquireLock(key, 60_000);
    assert.equal(got.acquired, true);
    const acquires = r.seen.filter((x) => x.op === 'acquire');
    assert.equal(acquires.length, 2, 'want the request and one retry');
    const [first, retry] = acquires;
    assert.equal(retry.body.lock_id, first.body.lock_id, 'the retry must use the same lock id');
    assert.ok(!retry.body.wait_ms, 'the retry must not wait');
    await r.answered(first);
    assert.equal(first.answer?.acquired, true, 'the lost answer was a grant');
    assert.equal(got.value?.lockId, first.body.lock_id);
    assert.equal(got.value?.token, BigInt(first.answer?.token), 'the retry returned the lost grant');
    assert.equal(await lock.releaseLock(key, /** @type {any} */ (got.value)), true);
  });

  it('withdraws the lock id (cancel, then release) when the retry fails too, leaving nothing held', async (t) => {
    const key = uniqueKey('withdraw');
    const { r, lock } = await faulty(t, ['503', '503']);
    await assert.rejects(lock.tryAcquireLock(key, 60_000), (err) => {
      assert.ok(err instanceof UnavailableError, `got ${err}`);
      assert.equal(err.status, 503);
      return true;
    });
    const first = r.seen.find((x) => x.op === 'acquire');
    assert.ok(first);
    await r.answered(first);
    assert.equal(first.answer?.acquired, true, 'the service granted the lock behind the 503');
    assert.ok(r.seen.some((x) => x.op === 'cancel' && x.body.lock_id === first.body.lock_id), 'no cancel for the lock id');
    assert.ok(r.seen.some((x) => x.op === 'release' && x.body.lock_id === first.body.lock_id), 'no release for the lock id');
    // The grant had a 60 s lease: the key is free only because it was
    // withdrawn (by the cancel or the release, whichever came first).
    const now = await direct.tryAcquireLock(key);
    assert.equal(now.acquired, true);
    await direct.releaseLock(key, /** @type {any} */ (now.value));
  });

  it('a blocking acquire answered 503 gets its grant back by asking again', async (t) => {
    const key = uniqueKey('blocking503');
    const { r, lock } = await faulty(t, ['503']);
    const w = await lock.acquireLock(key, 10_000, 60_000);
    const [first, retry] = r.seen.filter((x) => x.op === 'acquire');
    assert.ok(first.body.wait_ms > 0 && first.body.alive_ms === 1000, `first request ${JSON.stringify(first.body)}`);
    assert.equal(retry.body.lock_id, first.body.lock_id);
    assert.ok(!retry.body.wait_ms, 'the retry must not wait');
    await r.answered(first);
    assert.equal(w.token, BigInt(first.answer?.token));
    assert.equal(await lock.releaseLock(key, w), true);
  });
});

describe('the liveness window', () => {
  it('keeps a parked acquire parked past its window while renewals are answered', async (t) => {
    const key = uniqueKey('parked');
    // A 2 s window: renewals every 667 ms, each confirmed within 667 ms.
    const lock = await create(nc, { namespace: '', aliveWindowMs: 2000 });
    const holder = await direct.acquireLock(key, 1000, 30_000);
    const acquires = await watch(nc, `lock.acquire.${key}`);
    const alive = await watch(nc, `lock.alive.${key}`);
    const waiting = lock.acquireLock(key, 20_000);
    await alive.count(4); // more than a window (renewals every window/3)
    assert.equal(await direct.releaseLock(key, holder), true);
    const w = await waiting;
    assert.equal(acquires.seen.length, 1, 'the parked acquire was sent again');
    assert.equal(w.lockId, acquires.seen[0].lock_id);
    assert.ok(alive.seen.every((b) => b.id === w.lockId));
    assert.equal(await lock.releaseLock(key, w), true);
    acquires.stop();
    alive.stop();
    await lock.close();
  });

  it('withdraws a request whose renewal nobody confirms and asks again under a new lock id', async (t) => {
    // The answer to the first acquire (a grant: the key is free) is lost, so
    // the service no longer has the request and does not confirm its
    // renewal.
    const key = uniqueKey('unconfirmed');
    const { r, lock } = await faulty(t, ['lose']);
    const w = await lock.acquireLock(key, 20_000, 60_000);
    const acquires = r.seen.filter((x) => x.op === 'acquire');
    assert.equal(acquires.length, 2);
    const [first, second] = acquires;
    assert.notEqual(second.body.lock_id, first.body.lock_id, 'a lock id whose renewal went unconfirmed was reused');
    assert.equal(w.lockId, second.body.lock_id);
    await r.answered(first);
    assert.equal(first.answer?.acquired, true);
    assert.ok(r.seen.some((x) => x.op === 'alive' && x.body.id === first.body.lock_id));
    assert.ok(r.seen.some((x) => x.op === 'cancel' && x.body.lock_id === first.body.lock_id), 'no cancel for the first lock id');
    assert.ok(r.seen.some((x) => x.op === 'release' && x.body.lock_id === first.body.lock_id), 'no release for the first lock id');
    // The lost grant had a 60 s lease: the second grant came only because
    // the first was withdrawn.
    assert.ok(w.token > BigInt(first.answer?.token));
    assert.equal(await lock.releaseLock(key, w), true);
  });

  it('does not reuse the lock id of a parked acquire the service answered "not acquired" early', async (t) => {
    const key = uniqueKey('cancelled');
    const holder = await direct.acquireLock(key, 1000, 30_000);
    const acquires = await watch(nc, `lock.acquire.${key}`);
    const lock = await create(nc, { namespace: '' });
    const waiting = lock.acquireLock(key, 20_000);
    await acquires.count(1);
    await direct.get(key);
    // Someone cancels the parked request (its lock id is now retired).
    nc.publish(`lock.cancel.${key}`, JSON.stringify({ lock_id: acquires.seen[0].lock_id }));
    await acquires.count(2);
    assert.notEqual(acquires.seen[1].lock_id, acquires.seen[0].lock_id);
    assert.equal(await direct.releaseLock(key, holder), true);
    const w = await waiting;
    assert.equal(w.lockId, acquires.seen[1].lock_id);
    assert.equal(await lock.releaseLock(key, w), true);
    acquires.stop();
    await lock.close();
  });
});
