// DistributedLock: the API of the seed library (johnny-locke's
// IDistributedLock) on top of Client.

import { Client, MAX_ALIVE_MS, MIN_ALIVE_MS } from './client.js';
import { BadRequestError, ClosedError, LockError, NotHeldError } from './errors.js';
import { Scope, now } from './time.js';
import { keyProblem, toJSON } from './wire.js';

const DEFAULT_REQUEST_TIMEOUT_MS = 6000;
const DEFAULT_ALIVE_WINDOW_MS = 5000;

/**
 * Readable is a read-only state: what wait returns, and what withLock
 * wrote.
 * @template T
 */
export class Readable {
  /**
   * @param {T | null} value
   * @param {bigint} [token]
   */
  constructor(value, token) {
    /** The state; null when there is none. */
    this.value = value;
    if (token !== undefined) {
      /** The fencing token of the grant (withLock). */
      this.token = token;
    }
    Object.freeze(this);
  }
}

/**
 * Writable is a held lock and the state to write when it is released:
 * acquireLock and tryAcquireLock return one, update returns a copy with a
 * new state, releaseLock writes it.
 * @template T
 */
export class Writable {
  /** @type {import('./lease.js').Lease} */
  #lease;
  #updated;
  /** @type {T | null} */
  #value;

  /**
   * @param {import('./lease.js').Lease} lease
   * @param {T | null} value
   * @param {boolean} updated
   */
  constructor(lease, value, updated) {
    this.#lease = lease;
    this.#value = value;
    this.#updated = updated;
  }

  /** The state: as read at the grant, or as given to update. */
  get value() {
    return this.#value;
  }

  /** The lock id: the secret that authorizes release. */
  get lockId() {
    return this.#lease.lockId;
  }

  /** The fencing token of this grant: pass it to every downstream write. */
  get token() {
    return this.#lease.token;
  }

  /** The locked key (with the namespace). */
  get key() {
    return this.#lease.key;
  }

  /**
   * Aborted when the lock ends: released, its lease lost (a NotHeldError;
   * a LeaseExpiredError at the deadline without a renewal), the max hold
   * reached (MaxHoldError) or the DistributedLock closed (ClosedError).
   * `signal.reason` says why.
   */
  get signal() {
    return this.#lease.signal;
  }

  /**
   * When the lease ends at the earliest, by this machine's clock (counted
   * from when the acquire or the last refresh was sent); moved by
   * keep-alive.
   */
  get deadline() {
    return this.#lease.deadlineDate;
  }

  /** True when update gave this Writable its value (releaseLock writes it). */
  get updated() {
    return this.#updated;
  }

  /**
   * update returns a Writable of the same lock with value as its state,
   * written by releaseLock. This Writable is unchanged.
   * @param {T} value
   * @returns {Writable<T>}
   */
  update(value) {
    return new Writable(this.#lease, value, true);
  }

  /** @internal */
  static lease(/** @type {Writable<any>} */ w) {
    return w.#lease;
  }
}

/**
 * @param {string} what
 * @param {unknown} v
 * @param {{allowInfinity?: boolean, min?: number}} [o]
 */
function checkMs(what, v, o = {}) {
  const min = o.min ?? 0;
  if (typeof v !== 'number' || Number.isNaN(v) || v < min || (v === Infinity && !o.allowInfinity)) {
    throw new BadRequestError(`lockservice: ${what} must be a number of milliseconds >= ${min}${o.allowInfinity ? ' (or Infinity)' : ''}, got ${typeof v === 'number' ? v : typeof v}`);
  }
  return v;
}

export class DistributedLock {
  #client;
  #keyPrefix;
  #defaultLockDurationMs;
  #owner;
  #closed = new AbortController();
  /** @type {Set<import('./lease.js').Lease>} leases held now */
  #leases = new Set();
  /** @type {Set<Promise<unknown>>} operations in progress */
  #ops = new Set();

  /**
   * create returns a DistributedLock speaking to the lock service on nc
   * (which stays yours to close). It throws a BadRequestError when the
   * configuration is invalid.
   * @param {import('@nats-io/transport-node').NatsConnection} nc
   * @param {import('../index.js').LockConfiguration} config
   */
  static async create(nc, config) {
    return new DistributedLock(nc, config);
  }

  /**
   * @param {import('@nats-io/transport-node').NatsConnection} nc
   * @param {import('../index.js').LockConfiguration} config
   */
  constructor(nc, config) {
    if (!nc || typeof nc.request !== 'function' || typeof nc.subscribe !== 'function') {
      throw new BadRequestError('lockservice: create: the first argument must be a NATS connection (connect() from @nats-io/transport-node)');
    }
    if (!config || typeof config !== 'object') {
      throw new BadRequestError('lockservice: create: the second argument must be a LockConfiguration ({namespace, defaultLockDurationMs})');
    }
    const namespace = config.namespace ?? '';
    const as = config.namespaceAs ?? 'key';
    if (as !== 'key' && as !== 'subject') {
      throw new BadRequestError(`lockservice: create: namespaceAs must be "key" or "subject", got ${JSON.stringify(as)}`);
    }
    const prefix = as === 'subject' ? namespace : (config.subjectPrefix ?? 'lock');
    if (as === 'subject' && config.subjectPrefix !== undefined) {
      throw new BadRequestError('lockservice: create: give either subjectPrefix or namespaceAs "subject" (the namespace is then the subject prefix), not both');
    }
    let problem = keyProblem(prefix);
    if (problem) throw new BadRequestError(`lockservice: create: the subject prefix ${as === 'subject' ? '(namespace) ' : ''}${problem}`);
    if (as === 'key' && namespace !== '') {
      problem = keyProblem(namespace);
      if (problem) throw new BadRequestError(`lockservice: create: the namespace ${problem}`);
    }
    this.#keyPrefix = as === 'key' && namespace !== '' ? `${namespace}.` : '';

    if (config.defaultLockDurationMs !== undefined && config.lockTimeoutMs !== undefined && config.defaultLockDurationMs !== config.lockTimeoutMs) {
      throw new BadRequestError('lockservice: create: give defaultLockDurationMs or its older name lockTimeoutMs, not both');
    }
    const lease = config.defaultLockDurationMs ?? config.lockTimeoutMs;
    if (lease !== undefined) checkMs('create: defaultLockDurationMs', lease, { min: 1 });
    this.#defaultLockDurationMs = lease;

    if (config.objectExpiryMs !== undefined) {
      checkMs('create: objectExpiryMs', config.objectExpiryMs);
      process.emitWarning(
        'objectExpiryMs is a setting of the lock service (lockservice --object-ttl), not of its clients; it is ignored here',
        { code: 'LOCKSERVICE_OBJECT_EXPIRY', type: 'LockserviceWarning' },
      );
    }
    const requestTimeoutMs = checkMs('create: requestTimeoutMs', config.requestTimeoutMs ?? DEFAULT_REQUEST_TIMEOUT_MS, { min: 1 });
    const aliveWindowMs = Math.ceil(checkMs('create: aliveWindowMs', config.aliveWindowMs ?? DEFAULT_ALIVE_WINDOW_MS));
    if (aliveWindowMs !== 0 && (aliveWindowMs < MIN_ALIVE_MS || aliveWindowMs > MAX_ALIVE_MS)) {
      throw new BadRequestError(`lockservice: create: aliveWindowMs ${aliveWindowMs} is out of range: ${MIN_ALIVE_MS} to ${MAX_ALIVE_MS}, or 0 for none`);
    }
    if (config.owner !== undefined && (typeof config.owner !== 'string' || Buffer.byteLength(config.owner) > 256)) {
      throw new BadRequestError('lockservice: create: owner must be a string of at most 256 bytes');
    }
    this.#owner = config.owner;
    this.#client = new Client(nc, { prefix, requestTimeoutMs, aliveWindowMs });
  }

  /**
   * @param {string} op
   * @param {unknown} key
   */
  #key(op, key, afterClose = false) {
    if (this.#closed.signal.aborted && !afterClose) throw new ClosedError(`lockservice: ${op}: the DistributedLock is closed`, { op });
    const problem = keyProblem(key);
    if (problem) throw new BadRequestError(`lockservice: ${op}: invalid key: ${problem}`, { op, key: String(key) });
    const full = this.#keyPrefix + /** @type {string} */ (key);
    if (Buffer.byteLength(full) > 512) throw new BadRequestError(`lockservice: ${op}: invalid key: ${JSON.stringify(full)} (with the namespace) is over 512 bytes`, { op, key: full });
    return full;
  }

  /**
   * @param {unknown} lockDuration
   */
  #ttl(lockDuration) {
    const d = lockDuration ?? this.#defaultLockDurationMs;
    if (d === undefined) return undefined; // the service's default
    return Math.ceil(checkMs('lockDuration', d, { min: 1 }));
  }

  /**
   * track runs op as an operation close() waits for.
   * @template T
   * @param {Promise<T>} p
   * @returns {Promise<T>}
   */
  #track(p) {
    this.#ops.add(p);
    const done = () => this.#ops.delete(p);
    p.then(done, done);
    return p;
  }

  /**
   * @param {import('./lease.js').Lease} lease
   * @param {import('../index.js').AcquireOptions} options
   * @param {boolean} keepAlive
   */
  async #hold(lease, options, keepAlive) {
    if (options.maxHoldMs !== undefined) checkMs('maxHoldMs', options.maxHoldMs, { min: 1, allowInfinity: true });
    await lease.hold({ keepAlive, maxHoldMs: options.maxHoldMs });
    if (this.#closed.signal.aborted) {
      lease.finish(this.#closed.signal.reason);
    } else {
      this.#leases.add(lease);
      lease.signal.addEventListener('abort', () => this.#leases.delete(lease), { once: true });
    }
    return lease;
  }

  /**
   * @param {import('../index.js').AcquireOptions | undefined} options
   * @param {number | undefined} lockDuration
   */
  #acquireOpts(options, lockDuration) {
    const owner = options?.owner ?? this.#owner;
    if (owner !== undefined && (typeof owner !== 'string' || Buffer.byteLength(owner) > 256)) {
      throw new BadRequestError('lockservice: owner must be a string of at most 256 bytes');
    }
    const delay = options?.lockDelayMs;
    if (delay !== undefined) checkMs('lockDelayMs', delay);
    return { ttl_ms: this.#ttl(lockDuration), owner: owner || undefined, lock_delay_ms: delay === undefined ? undefined : Math.ceil(delay) };
  }

  /**
   * acquireLock takes the lock on key, waiting at most timeoutMs (Infinity:
   * no limit) for it to be free, and returns a Writable of its state. It
   * throws a TimeoutError when the lock could not be had in time (its
   * request is withdrawn: no lock is left orphaned).
   * @template T
   * @param {string} key
   * @param {number} timeoutMs
   * @param {number} [lockDuration]
   * @param {import('../index.js').AcquireOptions} [options]
   * @returns {Promise<Writable<T>>}
   */
  acquireLock(key, timeoutMs, lockDuration, options = {}) {
    return this.#track((async () => {
      const full = this.#key('acquireLock', key);
      checkMs('acquireLock: timeoutMs', timeoutMs, { allowInfinity: true });
      const req = this.#acquireOpts(options, lockDuration);
      const scope = new Scope(timeoutMs, [this.#closed.signal, options.signal]);
      try {
        const lease = await this.#client.acquire(full, req, scope, timeoutMs);
        await this.#hold(lease, options, options.keepAlive === true);
        return new Writable(lease, lease.value, false);
      } finally {
        scope.dispose();
      }
    })());
  }

  /**
   * tryAcquireLock takes the lock on key if it is free, without waiting.
   * @template T
   * @param {string} key
   * @param {number} [lockDuration]
   * @param {import('../index.js').AcquireOptions} [options]
   * @returns {Promise<import('../index.js').TryAcquireResult<T>>}
   */
  tryAcquireLock(key, lockDuration, options = {}) {
    return this.#track((async () => {
      const full = this.#key('tryAcquireLock', key);
      const req = this.#acquireOpts(options, lockDuration);
      const scope = new Scope(Infinity, [this.#closed.signal, options.signal]);
      try {
        const r = await this.#client.tryAcquire(full, req, scope);
        if (!r.lease) {
          const h = r.holder ?? {};
          const holder = h.token === undefined ? undefined
            : { token: h.token, owner: h.owner, expiresAt: h.expires_at ? new Date(h.expires_at) : undefined, delayMs: h.delay_ms };
          return { acquired: false, value: undefined, holder };
        }
        await this.#hold(r.lease, options, options.keepAlive === true);
        return { acquired: true, value: new Writable(r.lease, r.lease.value, false) };
      } finally {
        scope.dispose();
      }
    })());
  }

  /**
   * @param {string} op
   * @param {string} key
   * @param {unknown} writable
   */
  #lease(op, key, writable) {
    if (!(writable instanceof Writable)) {
      throw new BadRequestError(`lockservice: ${op}: the second argument must be the Writable that acquireLock or tryAcquireLock returned`, { op });
    }
    const lease = Writable.lease(writable);
    if (lease.key !== key) {
      throw new BadRequestError(`lockservice: ${op}: the Writable holds ${JSON.stringify(lease.key)}, not ${JSON.stringify(key)}`, { op, key });
    }
    return lease;
  }

  /**
   * releaseLock releases the lock, writing the Writable's state when update
   * gave it one (in the same atomic step). It returns true when the lock was
   * released (and the state written), false when the lease had been lost
   * (nothing written). Errors other than a lost lease throw.
   * @template T
   * @param {string} key
   * @param {Writable<T>} writable
   * @returns {Promise<boolean>}
   */
  releaseLock(key, writable) {
    return this.#track((async () => {
      const full = this.#key('releaseLock', key, true);
      const lease = this.#lease('releaseLock', full, writable);
      const json = writable.updated && writable.value !== undefined ? toJSON('releaseLock', full, writable.value) : undefined;
      return lease.release(json);
    })());
  }

  /**
   * delete deletes the state of key and releases the lock, atomically. It
   * returns true when done, false when the lease had been lost (nothing
   * deleted).
   * @template T
   * @param {string} key
   * @param {Writable<T>} writable
   * @returns {Promise<boolean>}
   */
  delete(key, writable) {
    return this.#track((async () => {
      const full = this.#key('delete', key, true);
      return this.#lease('delete', full, writable).delete();
    })());
  }

  /**
   * withLock acquires key (waiting at most timeoutMs), calls callback with
   * its state (null when none) and a signal, and writes what the callback
   * returns as the new state while releasing, atomically; it returns that
   * state. The lease is kept alive while the callback runs (options
   * keepAlive: false turns that off), and the signal is aborted as soon as
   * the lock is lost. If the lock was lost before the callback returned,
   * nothing is written and a NotHeldError is thrown. If the callback throws,
   * the lock is released without writing and its error rethrown; so it is
   * when the service or NATS refuses its result (too large), with a
   * BadRequestError. A callback that returns undefined keeps the state.
   * @template T
   * @param {string} key
   * @param {number} timeoutMs
   * @param {(state: T | null, signal: AbortSignal) => T | Promise<T>} callback
   * @param {number} [lockDuration]
   * @param {import('../index.js').AcquireOptions} [options]
   * @returns {Promise<Readable<T>>}
   */
  withLock(key, timeoutMs, callback, lockDuration, options = {}) {
    return this.#track((async () => {
      if (typeof callback !== 'function') throw new BadRequestError('lockservice: withLock: the callback must be a function');
      const w = await this.acquireLock(key, timeoutMs, lockDuration, { ...options, keepAlive: options.keepAlive ?? true });
      const lease = Writable.lease(w);
      const work = new Scope(Infinity, [lease.signal, options.signal]);
      let out;
      let failure;
      let threw = false;
      try {
        out = await callback(/** @type {T | null} */ (w.value), work.signal);
      } catch (err) {
        failure = err;
        threw = true;
      } finally {
        work.dispose();
      }
      let ended = lease.signal.aborted ? lease.signal.reason : undefined;
      if (!ended && now() >= lease.deadline) {
        ended = new NotHeldError(`lockservice: lease of ${JSON.stringify(lease.key)} ran out during the callback`, { key: lease.key });
      }
      let json;
      if (!ended && !threw && out !== undefined) {
        try {
          json = toJSON('withLock', lease.key, out);
        } catch (err) {
          failure = err;
          threw = true;
        }
      }
      if (ended || threw) {
        await lease.release().catch(() => {});
        if (!ended) throw failure;
        if (!threw) throw ended;
        const Ctor = /** @type {typeof LockError} */ (ended.constructor);
        throw new Ctor(`${ended.message} (the callback threw: ${failure instanceof Error ? failure.message : failure})`, { cause: failure, key: lease.key, op: 'withLock' });
      }
      let released;
      try {
        released = await lease.release(json);
      } catch (err) {
        // The state was refused (too large): nothing was written or
        // released. Release without writing, as for a callback that threw.
        if (err instanceof BadRequestError) await lease.release().catch(() => {});
        throw err;
      }
      if (!released) {
        throw new NotHeldError(`lockservice: withLock ${JSON.stringify(lease.key)}: the lease was lost before the release; nothing was written`, { op: 'release', key: lease.key });
      }
      return new Readable(out === undefined ? w.value : out, lease.token);
    })());
  }

  /**
   * wait waits at most timeoutMs (Infinity: no limit) until key is not
   * locked and returns its state without taking the lock; at once when it
   * is not locked. It throws a TimeoutError when the key was still locked.
   * @template T
   * @param {string} key
   * @param {number} timeoutMs
   * @param {{signal?: AbortSignal}} [options]
   * @returns {Promise<Readable<T>>}
   */
  wait(key, timeoutMs, options = {}) {
    return this.#track((async () => {
      const full = this.#key('wait', key);
      checkMs('wait: timeoutMs', timeoutMs, { allowInfinity: true });
      const scope = new Scope(timeoutMs, [this.#closed.signal, options.signal]);
      try {
        return new Readable(await this.#client.wait(full, scope, timeoutMs) ?? null);
      } finally {
        scope.dispose();
      }
    })());
  }

  /**
   * get reads the lock and the state of key without waiting or taking it.
   * @template T
   * @param {string} key
   * @returns {Promise<import('../index.js').LockInfo<T>>}
   */
  get(key) {
    return this.#track((async () => {
      const full = this.#key('get', key);
      const a = await this.#client.request('get', full, '');
      return {
        key: full,
        locked: a.locked === true,
        token: a.token ?? 0n,
        ttlMs: a.ttl_ms,
        expiresAt: a.expires_at ? new Date(a.expires_at) : undefined,
        owner: a.owner,
        delayMs: a.delay_ms,
        hasValue: a.has_value === true,
        value: a.value ?? null,
      };
    })());
  }

  /**
   * close stops this DistributedLock: blocking calls in progress end with a
   * ClosedError (their requests withdrawn), keep-alives stop (their leases
   * then run out at their deadline unless released), and later calls throw
   * a ClosedError, except releaseLock and delete. It resolves when the calls in progress have settled. The
   * NATS connection stays open: close it yourself.
   */
  async close() {
    if (!this.#closed.signal.aborted) {
      const reason = new ClosedError('lockservice: the DistributedLock was closed');
      this.#closed.abort(reason);
      for (const lease of this.#leases) lease.finish(reason);
    }
    await Promise.allSettled([...this.#ops]);
  }
}

/**
 * create is DistributedLock.create.
 * @param {import('@nats-io/transport-node').NatsConnection} nc
 * @param {import('../index.js').LockConfiguration} config
 */
export function create(nc, config) {
  return DistributedLock.create(nc, config);
}
