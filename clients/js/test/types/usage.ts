// Compiled (not run) by types.test.js: seed-style code must type-check
// against index.d.ts, and misuse must not.

import { connect } from '@nats-io/transport-node';

import {
  create, DistributedLock, NotHeldError, TimeoutError, UnavailableError,
  type IDistributedLock, type LockConfiguration, type Writable,
} from '@lockservice/client';

export async function seedStyle(): Promise<void> {
  const nats = await connect({ servers: ['nats://localhost:4222'] });
  const config: LockConfiguration = { namespace: 'my-app', lockTimeoutMs: 5000, objectExpiryMs: 300000 };
  const lock: IDistributedLock = await DistributedLock.create(nats, config);

  const result = await lock.withLock<number>('my-key', 1000, async (state) => {
    const existingValue = state ?? 0;
    return existingValue + 1;
  });
  const n: number | null = result.value;
  const token: bigint = result.token;

  const lockObj = await lock.acquireLock<string>('my-key', 1000);
  try {
    const updated: Writable<string> = lockObj.update('updatedState');
    const ok: boolean = await lock.releaseLock('my-key', updated);
    void ok;
  } catch (error) {
    await lock.releaseLock('my-key', lockObj);
  }

  const r = await lock.tryAcquireLock<string>('my-key');
  if (!r.acquired) {
    const none: undefined = r.value;
    void none;
  } else {
    const w: Writable<string> = r.value;
    const fence: bigint = w.token;
    const signal: AbortSignal = w.signal;
    void fence, signal;
    await lock.releaseLock('my-key', w);
  }

  const state = await lock.wait<string>('my-key', 1000);
  const s: string | null = state.value;

  lock.close();
  await nats.close();
  void n, token, s;
}

export async function extras(): Promise<void> {
  const nc = await connect({ servers: 'nats://127.0.0.1:4222' });
  const lock = await create(nc, { namespace: 'app', defaultLockDurationMs: 10_000, owner: 'me' });
  try {
    await lock.withLock<{ n: number }>('k', 1000, async (state, signal) => {
      signal.throwIfAborted();
      return { n: (state?.n ?? 0) + 1 };
    }, 5000, { keepAlive: true, maxHoldMs: 60_000 });
  } catch (err) {
    if (err instanceof TimeoutError || err instanceof NotHeldError) return;
    if (err instanceof UnavailableError && err.noResponders) return;
    throw err;
  }
  const info = await lock.get<number>('k');
  const t: bigint = info.token;
  void t;
  await lock.close();
}

export async function misuse(lock: DistributedLock): Promise<void> {
  // @ts-expect-error the key comes first
  await lock.acquireLock(1000, 'k');
  const w = await lock.acquireLock<number>('k', 1000);
  // @ts-expect-error a number lock takes number states
  w.update('text');
  // @ts-expect-error tokens are bigints
  const t: number = w.token;
  // @ts-expect-error the configuration needs a namespace
  await create(null as never, { lockTimeoutMs: 1 });
  void t;
}
