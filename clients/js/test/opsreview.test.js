// Found by trying the client as a seed user would (the opsreview branch):
// a state the service or NATS refuses.

import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';

import { BadRequestError, create } from '../src/index.js';
import { newConnection, startService, uniqueKey } from './helpers.js';

/** @type {Awaited<ReturnType<typeof startService>>} */
let svc;
/** @type {import('@nats-io/transport-node').NatsConnection} */
let nc;
/** @type {import('../src/index.js').DistributedLock} */
let lock;

before(async () => {
  svc = await startService(['--max-value-bytes', '1024']);
  nc = await newConnection(svc.url);
  lock = await create(nc, { namespace: 'refused', defaultLockDurationMs: 60_000 });
});

after(async () => {
  await lock?.close();
  await nc?.close();
  await svc?.stop();
});

// withLock promises (as the seed did) to release the lock whatever the
// callback does. A callback returning a state the service refuses (over
// --max-value-bytes: its 400 to the release) or that NATS refuses (over
// max_payload, thrown before sending) left the lock held for its whole
// lease (here a minute): the next tryAcquireLock found it locked. The
// second also came out as an UnavailableError ("'payload' max_payload size
// exceeded"), which says to retry, though a retry fails the same way.
describe('withLock with a state too large to write', () => {
  for (const [what, size] of [['over --max-value-bytes', 2048], ['over the NATS max payload', 1024 * 1024 + 1]]) {
    it(`releases the lock, writes nothing and throws a BadRequestError (${what})`, async () => {
      const key = uniqueKey('big');
      const err = await lock.withLock(key, 1000, async () => 'x'.repeat(size)).then(() => undefined, (e) => e);
      assert.ok(err instanceof BadRequestError, `withLock threw ${err?.name}: ${err?.message}; want a BadRequestError`);
      const next = await lock.tryAcquireLock(key);
      assert.equal(next.acquired, true, `the lock was left held after withLock failed (holder ${JSON.stringify(next.holder, (_k, v) => (typeof v === 'bigint' ? String(v) : v))})`);
      assert.equal(next.value?.value, null, 'nothing is written');
      await lock.releaseLock(key, next.value);
    });
  }

  it('releaseLock with a value over the NATS max payload throws a BadRequestError', async () => {
    const key = uniqueKey('bigrelease');
    const w = await lock.acquireLock(key, 1000);
    const err = await lock.releaseLock(key, w.update('x'.repeat(1024 * 1024 + 1))).then(() => undefined, (e) => e);
    assert.ok(err instanceof BadRequestError, `releaseLock threw ${err?.name}: ${err?.message}; want a BadRequestError`);
    assert.equal(await lock.releaseLock(key, w), true, 'the lock is still held: releasing without the value works');
  });
});
