// Time: a monotonic clock, timers that never keep the process alive, a
// backoff, and the Scope of one blocking call (its deadline and the
// signals that end it early).

import { performance } from 'node:perf_hooks';

import { TimeoutError } from './errors.js';

/** now returns monotonic milliseconds (never compared across machines). */
export function now() {
  return performance.now();
}

const MAX_TIMER = 2 ** 31 - 1;

/**
 * after calls fn in ms milliseconds (any length; Infinity: never) without
 * keeping the process alive, and returns a function that cancels it.
 * @param {number} ms
 * @param {() => void} fn
 */
export function after(ms, fn) {
  if (ms === Infinity) return () => {};
  const due = now() + Math.max(ms, 0);
  /** @type {NodeJS.Timeout} */
  let timer;
  const arm = () => {
    const left = due - now();
    timer = setTimeout(left > MAX_TIMER ? arm : fn, Math.min(Math.max(left, 0), MAX_TIMER));
    timer.unref();
  };
  arm();
  return () => clearTimeout(timer);
}

/**
 * sleep waits ms milliseconds; it returns false at once when signal is or
 * becomes aborted first.
 * @param {number} ms
 * @param {AbortSignal} signal
 * @returns {Promise<boolean>}
 */
export function sleep(ms, signal) {
  if (signal.aborted) return Promise.resolve(false);
  if (ms <= 0) return Promise.resolve(true);
  return new Promise((resolve) => {
    const onAbort = () => {
      cancel();
      resolve(false);
    };
    const cancel = after(ms, () => {
      signal.removeEventListener('abort', onAbort);
      resolve(true);
    });
    signal.addEventListener('abort', onAbort, { once: true });
  });
}

/**
 * raceSignal settles as promise does, or rejects with signal's reason
 * when signal is aborted first.
 * @template T
 * @param {Promise<T>} promise
 * @param {AbortSignal} [signal]
 * @returns {Promise<T>}
 */
export function raceSignal(promise, signal) {
  if (!signal) return promise;
  if (signal.aborted) {
    promise.catch(() => {});
    return Promise.reject(signal.reason);
  }
  return new Promise((resolve, reject) => {
    const onAbort = () => {
      promise.catch(() => {});
      reject(signal.reason);
    };
    signal.addEventListener('abort', onAbort, { once: true });
    promise.then(
      (v) => {
        signal.removeEventListener('abort', onAbort);
        resolve(v);
      },
      (e) => {
        signal.removeEventListener('abort', onAbort);
        reject(e);
      },
    );
  });
}

/** Backoff paces retries after error answers: 50 ms doubling to 1 s, jittered. */
export class Backoff {
  #d = 0;

  reset() {
    this.#d = 0;
  }

  /** next returns the next pause in milliseconds. */
  next() {
    this.#d = Math.min(Math.max(2 * this.#d, 50), 1000);
    return this.#d / 2 + Math.random() * (this.#d / 2);
  }
}

/** The reason a Scope's signal carries when its deadline passed. */
const DEADLINE = Symbol('deadline');

/**
 * Scope is one blocking call's context: it ends at its deadline or when
 * any of its parent signals is aborted, whichever comes first. `signal`
 * ends with the scope; `parentSignal` only with the parents, for requests
 * that must be allowed to finish after the deadline (a last try).
 */
export class Scope {
  #ctl = new AbortController();
  #parents = new AbortController();
  /** @type {Array<() => void>} */
  #cleanup = [];

  /**
   * @param {number} timeoutMs how long the call may take (Infinity: no limit)
   * @param {Array<AbortSignal | undefined>} parents
   */
  constructor(timeoutMs, parents) {
    /** The deadline on the now() clock; Infinity for none. */
    this.deadline = timeoutMs === Infinity ? Infinity : now() + timeoutMs;
    for (const parent of parents) {
      if (!parent) continue;
      if (parent.aborted) {
        this.#parents.abort(parent.reason);
        this.#ctl.abort(parent.reason);
        break;
      }
      const onAbort = () => {
        this.#parents.abort(parent.reason);
        this.#ctl.abort(parent.reason);
      };
      parent.addEventListener('abort', onAbort, { once: true });
      this.#cleanup.push(() => parent.removeEventListener('abort', onAbort));
    }
    if (!this.#ctl.signal.aborted) {
      this.#cleanup.push(after(timeoutMs, () => this.#ctl.abort(DEADLINE)));
    }
  }

  /** The signal aborted when the scope ends (its deadline, or a parent). */
  get signal() {
    return this.#ctl.signal;
  }

  /** The signal aborted when a parent is. */
  get parentSignal() {
    return this.#parents.signal;
  }

  /** True once the deadline passed or a parent was aborted. */
  get ended() {
    return this.#ctl.signal.aborted || now() >= this.deadline;
  }

  /** left returns the milliseconds left until the deadline. */
  left() {
    return this.deadline - now();
  }

  /**
   * error returns the error of a call that ended with the scope: the
   * parent's reason when one was aborted, else a TimeoutError.
   * @param {string} message what did not happen in time, for the TimeoutError
   * @param {{op?: string, key?: string}} [where]
   */
  error(message, where = {}) {
    if (this.#parents.signal.aborted) return this.#parents.signal.reason;
    return new TimeoutError(message, where);
  }

  /** dispose stops the deadline timer and detaches from the parents. */
  dispose() {
    for (const f of this.#cleanup) f();
    this.#cleanup = [];
  }
}
