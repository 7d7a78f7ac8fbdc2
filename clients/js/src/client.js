// Client speaks the protocol of docs/PROTOCOL.md over a NATS connection and
// carries out its rules for blocking requests, lost replies and giving up,
// the way the Go client (client/client.go, client/alive.go) does:
//
//   - Blocking requests (acquire and wait with wait_ms > 0) carry a
//     liveness window (alive_ms) and are renewed every window/3 on
//     <prefix>.alive.<key> while they are parked; a renewal nobody
//     confirms means the request is gone: the lock id is withdrawn and a
//     new request goes out under a new one.
//   - An acquire answered 503 or 500, or whose answer was lost, is asked
//     once more with the same lock id and wait_ms 0, which returns the
//     grant if one was made; if that fails too, the lock id is withdrawn
//     (a cancel to every instance, then a release) and never used again.
//   - A blocking acquire answered "not acquired" before its wait ran out,
//     or too late to be inside its window, is not sent again under its
//     lock id.

import { createInbox } from '@nats-io/transport-node';

import { BadRequestError, RequestTimeoutError, UnavailableError, unknownOutcome } from './errors.js';
import { Lease } from './lease.js';
import { Backoff, now, raceSignal, sleep } from './time.js';
import { checkKey, decodeAnswer, newLockId, subject } from './wire.js';

/** The longest wait one blocking request asks for; longer waits take several. */
const CHUNK_MS = 60_000;

/** The liveness window's bounds (docs/PROTOCOL.md "Limits"). */
export const MIN_ALIVE_MS = 1000;
export const MAX_ALIVE_MS = 60_000;

/**
 * Unconfirmed: a liveness renewal of a parked request went unconfirmed and
 * its answer had not arrived, so no instance has the request any more.
 */
class Unconfirmed extends Error {}

/**
 * @typedef {object} AcquireRequest
 * @property {string} lock_id
 * @property {number} [ttl_ms]
 * @property {number} [wait_ms]
 * @property {string} [owner]
 * @property {number} [alive_ms]
 * @property {number} [lock_delay_ms]
 */

/**
 * The outcome of one acquire request that was answered without an error.
 * @typedef {{kind: 'granted', lease: Lease}
 *   | {kind: 'locked', answer: Record<string, any>}
 *   | {kind: 'endedEarly'}} AcquireOutcome
 */

export class Client {
  /** @type {import('@nats-io/transport-node').NatsConnection} */
  #nc;

  /**
   * @param {import('@nats-io/transport-node').NatsConnection} nc
   * @param {{prefix: string, requestTimeoutMs: number, aliveWindowMs: number}} options
   */
  constructor(nc, options) {
    this.#nc = nc;
    this.prefix = options.prefix;
    this.requestTimeoutMs = options.requestTimeoutMs;
    this.aliveWindowMs = options.aliveWindowMs;
  }

  /**
   * request sends one request and returns its decoded answer. It throws
   * the service's error answer, an UnavailableError when no instance
   * listens or the connection is closed, a RequestTimeoutError when no
   * answer came within timeoutMs, or signal's reason when signal is
   * aborted first.
   * @param {string} op
   * @param {string} key
   * @param {string} payload JSON text ('' for none)
   * @param {{timeoutMs?: number, signal?: AbortSignal}} [options]
   * @returns {Promise<Record<string, any>>}
   */
  async request(op, key, payload, options = {}) {
    checkKey(op, key);
    const timeout = Math.max(1, Math.ceil(options.timeoutMs ?? this.requestTimeoutMs));
    let msg;
    try {
      msg = await raceSignal(this.#nc.request(subject(this.prefix, op, key), payload, { timeout }), options.signal);
    } catch (err) {
      if (options.signal?.aborted && err === options.signal.reason) throw err;
      throw this.#transportError(op, key, err, timeout);
    }
    return decodeAnswer(op, key, msg);
  }

  /**
   * transportError returns the error for a failed request. The NATS
   * library's errors are told apart by name, not class: the connection may
   * come from another copy of the library than the one this package loads.
   * @param {string} op
   * @param {string} key
   * @param {unknown} err
   * @param {number} timeout
   */
  #transportError(op, key, err, timeout) {
    const where = `lockservice: ${op} ${JSON.stringify(key)}`;
    const name = err instanceof Error ? err.name : '';
    const causeName = err instanceof Error && err.cause instanceof Error ? err.cause.name : '';
    if (name === 'TimeoutError') {
      return new RequestTimeoutError(`${where}: no answer within ${timeout} ms (the outcome is unknown)`, { op, key, cause: err });
    }
    if (name === 'NoResponders' || causeName === 'NoResponders') {
      return this.#noResponders(op, key, err);
    }
    if (/^(Closed|Draining)ConnectionError$/.test(name) || /^(Closed|Draining)ConnectionError$/.test(causeName)) {
      return new UnavailableError(`${where}: the NATS connection is closed`, { op, key, cause: err });
    }
    if (name === 'InvalidArgumentError' && /max_payload/.test(/** @type {Error} */ (err).message)) {
      // Refused before sending: a retry fails the same way.
      const max = /** @type {any} */ (this.#nc).info?.max_payload;
      return new BadRequestError(`${where}: the request is larger than the NATS server's max payload${max ? ` (${max} bytes)` : ''}; keep large data elsewhere and a reference in the state`, { op, key, cause: err });
    }
    if (name === 'InvalidSubjectError') {
      return new BadRequestError(`${where}: ${/** @type {Error} */ (err).message}`, { op, key, cause: err });
    }
    return new UnavailableError(`${where}: ${err instanceof Error ? err.message : String(err)}`, { op, key, cause: err });
  }

  /**
   * @param {string} op
   * @param {string} key
   * @param {unknown} [cause]
   */
  #noResponders(op, key, cause) {
    return new UnavailableError(
      `lockservice: ${op} ${JSON.stringify(key)}: no lock service instance is listening on ${subject(this.prefix, op, key)}`,
      { op, key, cause, noResponders: true },
    );
  }

  /**
   * park sends a blocking request named id (a lock id or wait id) and waits
   * for its answer on a subscription of its own, renewing the request's
   * liveness window meanwhile. It returns the answer and whether it arrived
   * inside the window (before the window could have run out on the
   * service), or throws Unconfirmed when a renewal went unconfirmed and the
   * answer had not arrived, or signal's reason when signal is aborted
   * first. There is no other timeout.
   * @param {string} op
   * @param {string} key
   * @param {string} id
   * @param {string} payload
   * @param {AbortSignal} signal
   * @returns {Promise<{answer: Record<string, any>, inWindow: boolean}>}
   */
  park(op, key, id, payload, signal) {
    checkKey(op, key);
    const alive = this.aliveWindowMs;
    return new Promise((resolve, reject) => {
      if (signal.aborted) {
        reject(signal.reason);
        return;
      }
      const stop = new AbortController();
      const start = now();
      let confirmed = start; // when the last confirmed renewal (at first, the request) was sent
      let settled = false;
      /** @type {import('@nats-io/transport-node').Subscription | undefined} */
      let sub;
      /** @param {() => void} f */
      const settle = (f) => {
        if (settled) return;
        settled = true;
        stop.abort();
        sub?.unsubscribe();
        signal.removeEventListener('abort', onAbort);
        f();
      };
      const onAbort = () => settle(() => reject(signal.reason));
      signal.addEventListener('abort', onAbort, { once: true });

      /** @param {import('@nats-io/transport-node').Msg} m */
      const onAnswer = (m) => {
        const inWindow = now() - confirmed < alive - alive / 20;
        settle(() => {
          if (m.data.length === 0 && m.headers?.code === 503 && !m.headers.get('Nats-Service-Error-Code')) {
            reject(this.#noResponders(op, key));
            return;
          }
          try {
            resolve({ answer: decodeAnswer(op, key, m), inWindow });
          } catch (err) {
            reject(err);
          }
        });
      };
      try {
        const inbox = createInbox(/** @type {any} */ (this.#nc).options?.inboxPrefix);
        sub = this.#nc.subscribe(inbox, {
          max: 1,
          callback: (err, m) => {
            if (err) settle(() => reject(this.#transportError(op, key, err, 0)));
            else onAnswer(m);
          },
        });
        this.#nc.publish(subject(this.prefix, op, key), payload, { reply: inbox });
      } catch (err) {
        settle(() => reject(this.#transportError(op, key, err, 0)));
        return;
      }

      // Renew every alive/3, each renewal waiting at most
      // min(alive/3, the request timeout) for its confirmation.
      (async () => {
        const period = alive / 3;
        let next = start + period;
        for (;;) {
          if (!(await sleep(next - now(), stop.signal))) return;
          const sent = now();
          let ok = false;
          try {
            const a = await this.request('alive', key, JSON.stringify({ id }), { timeoutMs: Math.min(period, this.requestTimeoutMs), signal: stop.signal });
            ok = a.alive === true;
          } catch {
            ok = false;
          }
          if (stop.signal.aborted) return;
          if (!ok) {
            settle(() => reject(new Unconfirmed(`lockservice: ${op} ${JSON.stringify(key)}: a liveness renewal of the parked request went unconfirmed`)));
            return;
          }
          confirmed = sent;
          next = sent + period;
        }
      })();
    });
  }

  /**
   * acquireOnce sends one acquire. firstSent is when the first request with
   * this lock id was sent: a grant returned to a retry started then. A
   * blocking request waits under its liveness window (park), or without one
   * for its wait plus the request timeout.
   * @param {string} key
   * @param {AcquireRequest} req
   * @param {number} firstSent
   * @param {import('./time.js').Scope} scope
   * @returns {Promise<AcquireOutcome>}
   */
  async #acquireOnce(key, req, firstSent, scope) {
    const wait = req.wait_ms ?? 0;
    // A try (wait_ms 0) may finish after the deadline; a blocking request
    // ends with the scope.
    const signal = wait > 0 ? scope.signal : scope.parentSignal;
    const sent = now();
    let answer;
    let inWindow = true;
    if (wait > 0 && this.aliveWindowMs > 0) {
      ({ answer, inWindow } = await this.park('acquire', key, req.lock_id, JSON.stringify({ ...req, alive_ms: this.aliveWindowMs }), signal));
    } else {
      answer = await this.request('acquire', key, JSON.stringify(req), { timeoutMs: wait + this.requestTimeoutMs, signal });
    }
    if (answer.acquired === true) return { kind: 'granted', lease: new Lease(this, key, answer, firstSent) };
    if (wait > 0 && (!inWindow || now() - sent < wait - wait / 10)) return { kind: 'endedEarly' };
    return { kind: 'locked', answer };
  }

  /**
   * tryAcquire takes the lock if it is free, once. It returns the lease, or
   * the answer naming the holder. After an unknown outcome it asks once more
   * with the same lock id; if that fails too it withdraws the lock id and
   * throws the error.
   * @param {string} key
   * @param {{ttl_ms?: number, owner?: string, lock_delay_ms?: number}} opts
   * @param {import('./time.js').Scope} scope
   * @returns {Promise<{lease?: Lease, holder?: Record<string, any>}>}
   */
  async tryAcquire(key, opts, scope) {
    /** @type {AcquireRequest} */
    const req = { ...opts, lock_id: newLockId() };
    const firstSent = now();
    let err;
    try {
      return outcome(await this.#acquireOnce(key, req, firstSent, scope));
    } catch (e) {
      err = e;
    }
    if (!scope.ended && unknownOutcome(err)) {
      try {
        const r = await this.#acquireOnce(key, req, firstSent, scope);
        if (r.kind === 'granted') return outcome(r);
        // Not granted yet, but the first request may still be in flight
        // (a 503 does not end its store attempt): withdraw it.
        await this.withdraw(key, req.lock_id);
        return outcome(r);
      } catch (e2) {
        err = withRetry(err, e2);
      }
    }
    if (unknownOutcome(err) || scope.ended) await this.withdraw(key, req.lock_id);
    throw scope.ended ? scope.error('') : err;
  }

  /**
   * acquire takes the lock, waiting until it is free or the scope ends (then
   * it throws the scope's error: a TimeoutError at the deadline), and
   * withdraws its request so that no lock is left orphaned. Each request
   * after a "not acquired" answer, an unconfirmed renewal or a withdrawn
   * unknown outcome takes a new lock id. Other errors (400, no service
   * listening) are thrown at once.
   * @param {string} key
   * @param {{ttl_ms?: number, owner?: string, lock_delay_ms?: number}} opts
   * @param {import('./time.js').Scope} scope
   * @param {number} timeoutMs for the TimeoutError's message
   * @returns {Promise<Lease>}
   */
  async acquire(key, opts, scope, timeoutMs) {
    /** @type {AcquireRequest} */
    const req = { ...opts, lock_id: newLockId() };
    let firstSent = now();
    const newId = () => {
      req.lock_id = newLockId();
      firstSent = now();
    };
    const ended = () => scope.error(`lockservice: acquire ${JSON.stringify(key)}: not acquired within ${timeoutMs} ms`, { op: 'acquire', key });
    const pause = new Backoff();
    for (;;) {
      req.wait_ms = Math.max(0, Math.floor(Math.min(CHUNK_MS, scope.left() - 20)));
      /** @type {AcquireOutcome} */
      let r;
      try {
        r = await this.#acquireOnce(key, req, firstSent, scope);
      } catch (err) {
        if (scope.ended) {
          await this.withdraw(key, req.lock_id);
          throw ended();
        }
        if (err instanceof Unconfirmed) {
          // The request is gone; the instance that had it may still give
          // back a late grant for its lock id, so the id is withdrawn and
          // never asked with again.
          await this.withdraw(key, req.lock_id);
          newId();
          continue;
        }
        if (!unknownOutcome(err)) throw err;
        try {
          return await this.#resolve(key, req, firstSent, err, scope);
        } catch {
          if (scope.ended) throw ended();
          newId();
          if (!(await sleep(pause.next(), scope.signal))) throw ended();
          continue;
        }
      }
      switch (r.kind) {
        case 'granted':
          return r.lease;
        case 'locked':
          if (scope.ended || req.wait_ms === 0) throw ended();
          pause.reset();
          newId();
          break;
        case 'endedEarly':
          if (scope.ended) throw ended();
          newId();
          if (!(await sleep(pause.next(), scope.signal))) throw ended();
          break;
      }
    }
  }

  /**
   * resolve settles an acquire whose outcome is unknown (cause): it asks
   * once more with the same lock id and wait_ms 0, which returns the grant
   * if one was made. Otherwise it withdraws the lock id and throws: the
   * lock id is spent.
   * @param {string} key
   * @param {AcquireRequest} req
   * @param {number} firstSent
   * @param {unknown} cause
   * @param {import('./time.js').Scope} scope
   */
  async #resolve(key, req, firstSent, cause, scope) {
    let r;
    try {
      r = await this.#acquireOnce(key, { ...req, wait_ms: 0 }, firstSent, scope);
    } catch (err) {
      await this.withdraw(key, req.lock_id);
      throw withRetry(cause, err);
    }
    if (r.kind === 'granted') return r.lease;
    // Not granted yet, but the first request may still be in flight (a 503
    // does not end its store attempt): withdraw it.
    await this.withdraw(key, req.lock_id);
    throw cause;
  }

  /**
   * withdraw abandons an acquire that may still be parked or granted: a
   * cancel to every instance, then a release. The service refuses the lock
   * id afterwards. With the liveness window on, a second release follows a
   * window later: an instance the cancel did not reach (cut off from NATS,
   * not from its store) may still grant the id until the window runs out
   * there, and gives back only what it grants after that.
   * @param {string} key
   * @param {string} lockId
   */
  async withdraw(key, lockId) {
    const payload = JSON.stringify({ lock_id: lockId });
    try {
      this.#nc.publish(subject(this.prefix, 'cancel', key), payload);
    } catch {
      // closed connection: the release below fails too; nothing else to do
    }
    const release = () => this.request('release', key, payload).catch(() => {});
    await release();
    if (this.aliveWindowMs > 0) {
      const timer = setTimeout(() => {
        if (!this.#nc.isClosed()) release();
      }, this.aliveWindowMs + 1000);
      timer.unref();
    }
  }

  /**
   * wait blocks until key is unlocked, or the scope ends (then it throws
   * the scope's error: a TimeoutError at the deadline), and returns its
   * state. It waits in requests of at most a minute, each under the
   * liveness window with a fresh wait id; a request whose renewal went
   * unconfirmed is sent again.
   * @param {string} key
   * @param {import('./time.js').Scope} scope
   * @param {number} timeoutMs for the TimeoutError's message
   */
  async wait(key, scope, timeoutMs) {
    const ended = () => scope.error(`lockservice: wait ${JSON.stringify(key)}: still locked after ${timeoutMs} ms`, { op: 'wait', key });
    for (;;) {
      const waitMs = Math.max(0, Math.floor(Math.min(CHUNK_MS, scope.left() - 20)));
      try {
        let answer;
        if (waitMs > 0 && this.aliveWindowMs > 0) {
          const id = newLockId();
          ({ answer } = await this.park('wait', key, id, JSON.stringify({ wait_ms: waitMs, wait_id: id, alive_ms: this.aliveWindowMs }), scope.signal));
        } else {
          const signal = waitMs > 0 ? scope.signal : scope.parentSignal;
          answer = await this.request('wait', key, JSON.stringify({ wait_ms: waitMs }), { timeoutMs: waitMs + this.requestTimeoutMs, signal });
        }
        return answer.value;
      } catch (err) {
        if (scope.ended) throw ended();
        if (err instanceof Unconfirmed) continue; // the request is gone: send it again
        if (err instanceof RequestTimeoutError || (err instanceof Error && 'status' in err && err.status === 408)) {
          if (waitMs === 0) throw ended();
          continue;
        }
        throw err;
      }
    }
  }
}

/**
 * @param {AcquireOutcome} r
 * @returns {{lease?: Lease, holder?: Record<string, any>}}
 */
function outcome(r) {
  if (r.kind === 'granted') return { lease: r.lease };
  return { holder: r.kind === 'locked' ? r.answer : {} };
}

/**
 * withRetry returns cause, its message noting what the retry with the same
 * lock id got.
 * @param {unknown} cause
 * @param {unknown} retryErr
 */
function withRetry(cause, retryErr) {
  if (cause instanceof Error) {
    cause.message += ` (asked again with the same lock id: ${retryErr instanceof Error ? retryErr.message : retryErr})`;
  }
  return cause;
}

