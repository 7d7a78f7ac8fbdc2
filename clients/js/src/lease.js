// Lease is a held lock: its lock id, token and deadline, the keep-alive
// that renews it, and the signal aborted when it ends. It follows the Go
// client's Lock (client/lock.go, client/keepalive.go).

import { LeaseExpiredError, MaxHoldError, NotHeldError, ReleasedError, RequestTimeoutError } from './errors.js';
import { Backoff, after, now, sleep } from './time.js';
import { encodeRequest } from './wire.js';

export class Lease {
  /** @type {import('./client.js').Client} */
  #client;
  #ctl = new AbortController();
  /** The lease length granted by the last acquire or refresh (ms). */
  #ttl;
  /** When the request that set the deadline was sent (now() clock). */
  #sent;
  /** When the lease ends at the earliest, by this client's count (now() clock). */
  #deadline;
  /** The keep-alive's last failed renewal since its last success. */
  #renewErr;
  /** @type {() => void} */
  #cancelExpiry = () => {};
  /** @type {() => void} */
  #cancelCap = () => {};
  /** @type {Promise<void> | undefined} settles when the keep-alive loop has returned */
  #renewing;

  /**
   * @param {import('./client.js').Client} client
   * @param {string} key
   * @param {Record<string, any>} answer a grant
   * @param {number} sent when the first acquire with this lock id was sent
   */
  constructor(client, key, answer, sent) {
    this.#client = client;
    /** The locked key (with the namespace). */
    this.key = key;
    /** @type {string} */
    this.lockId = answer.lock_id;
    /** @type {bigint} */
    this.token = answer.token ?? 0n;
    /** @type {string | undefined} */
    this.owner = answer.owner;
    /** The state at the grant (null when none). */
    this.value = answer.value ?? null;
    this.#ttl = Number(answer.ttl_ms ?? 0);
    this.#sent = sent;
    this.#deadline = sent + this.#ttl;
  }

  /** Aborted when the lease ends; its reason says why. */
  get signal() {
    return this.#ctl.signal;
  }

  get ttl() {
    return this.#ttl;
  }

  /** The deadline on the now() clock. */
  get deadline() {
    return this.#deadline;
  }

  /** The deadline as a Date by this machine's wall clock. */
  get deadlineDate() {
    return new Date(Date.now() + (this.#deadline - now()));
  }

  /**
   * finish ends the lease for reason unless it has ended; it reports
   * whether it did.
   * @param {Error} reason
   */
  finish(reason) {
    if (this.#ctl.signal.aborted) return false;
    this.#cancelExpiry();
    this.#cancelCap();
    this.#ctl.abort(reason);
    return true;
  }

  /**
   * lost ends the lease after the service answered err (a NotHeldError) to a
   * request that needs it.
   * @param {Error} err
   */
  #lost(err) {
    this.finish(new NotHeldError(`lockservice: lease of ${JSON.stringify(this.key)} lost: ${err.message}`, { cause: err, status: 409, op: 'refresh', key: this.key }));
  }

  async #stopRenewing() {
    await this.#renewing;
  }

  /**
   * hold makes the lease, just acquired, a held lock: it ends at its
   * deadline unless renewed and at maxHoldMs, and it is kept alive when
   * keepAlive is set. A lease kept alive that is more than two thirds
   * spent is refreshed first; if that fails, it is released and the error
   * thrown.
   * @param {{keepAlive: boolean, maxHoldMs?: number}} options
   */
  async hold(options) {
    if (options.keepAlive && this.#deadline - now() < this.#ttl / 3) {
      try {
        await this.refresh(this.#ttl);
      } catch (err) {
        this.finish(/** @type {Error} */ (err));
        await this.#client.request('release', this.key, JSON.stringify({ lock_id: this.lockId })).catch(() => {});
        if (err instanceof Error) err.message = `lockservice: acquire ${JSON.stringify(this.key)}: renewing the lease before returning it: ${err.message}`;
        throw err;
      }
    }
    if (options.keepAlive) this.#renewing = this.#keepAlive();
    this.#armExpiry();
    if (options.maxHoldMs !== undefined && options.maxHoldMs > 0) {
      const d = options.maxHoldMs;
      this.#cancelCap = after(d, () => this.#capReached(d));
    }
  }

  #armExpiry() {
    this.#cancelExpiry();
    this.#cancelExpiry = after(this.#deadline - now(), () => this.#expire());
  }

  /** expire ends the lease when its deadline has passed (a refresh may have moved it). */
  #expire() {
    if (this.#ctl.signal.aborted) return;
    if (this.#deadline - now() > 0) {
      this.#armExpiry();
      return;
    }
    let message = `lockservice: lease of ${JSON.stringify(this.key)} ran out`;
    if (this.#renewErr) message += `: no renewal succeeded in time; the last one failed: ${this.#renewErr.message}`;
    this.finish(new LeaseExpiredError(message, { cause: this.#renewErr, key: this.key }));
  }

  /**
   * capReached ends the lease at its max hold d, stops its renewals and
   * releases it.
   * @param {number} d
   */
  async #capReached(d) {
    if (!this.finish(new MaxHoldError(`lockservice: lock ${JSON.stringify(this.key)} held for ${d} ms (maxHoldMs): given up`, { key: this.key }))) return;
    await this.#stopRenewing();
    await this.#client.request('release', this.key, JSON.stringify({ lock_id: this.lockId })).catch(() => {});
  }

  /**
   * keepAlive renews the lease until it ends: a refresh every TTL/3 from
   * the last successful refresh's send, and after a failed one, another
   * after a pause. A 409 ends the lease (refresh), and so does the deadline
   * passing (expire).
   */
  async #keepAlive() {
    const pause = new Backoff();
    let failed = false;
    const signal = this.#ctl.signal;
    for (;;) {
      const ttl = this.#ttl;
      const deadline = this.#deadline;
      let next = deadline - (2 * ttl) / 3 - now();
      if (failed) next = Math.min(pause.next(), ttl / 6);
      if (!(await sleep(next, signal))) return;
      const left = deadline - now();
      if (left <= 0) return; // expire ends the lease
      try {
        await this.refresh(ttl, { timeoutMs: Math.min(this.#client.requestTimeoutMs, left), signal });
        failed = false;
        pause.reset();
      } catch (err) {
        if (signal.aborted) return;
        failed = true;
        // Keep a real error over a refresh cut short by the deadline.
        if (!this.#renewErr || !(err instanceof RequestTimeoutError) || now() < deadline) {
          this.#renewErr = /** @type {Error} */ (err);
        }
      }
    }
  }

  /**
   * refresh extends the lease to ttlMs from now (undefined: the service's
   * default), moving the deadline to ttlMs after the refresh was sent. It
   * throws a NotHeldError when the lease was lost, and then ends the lease.
   * @param {number} [ttlMs]
   * @param {{timeoutMs?: number, signal?: AbortSignal}} [options]
   */
  async refresh(ttlMs, options = {}) {
    const sent = now();
    const ttl = ttlMs === undefined || ttlMs <= 0 ? undefined : Math.max(1, Math.ceil(ttlMs));
    let answer;
    try {
      answer = await this.#client.request('refresh', this.key, JSON.stringify({ lock_id: this.lockId, ttl_ms: ttl }), options);
    } catch (err) {
      if (err instanceof NotHeldError) this.#lost(err);
      throw err;
    }
    if (sent < this.#sent) return; // a refresh sent later has already moved the deadline
    this.#ttl = Number(answer.ttl_ms);
    this.#sent = sent;
    this.#deadline = sent + this.#ttl;
    this.#renewErr = undefined;
    if (!this.#ctl.signal.aborted) this.#armExpiry();
  }

  /**
   * release ends the lease (its keep-alive stopped first) and releases the
   * lock, writing valueJSON as the new state in the same atomic step when
   * given. It returns false when the lock id no longer held the lock
   * (nothing was written).
   * @param {string} [valueJSON]
   */
  async release(valueJSON) {
    this.finish(new ReleasedError(`lockservice: lock ${JSON.stringify(this.key)} released`, { key: this.key }));
    await this.#stopRenewing();
    const answer = await this.#client.request('release', this.key, encodeRequest({ lock_id: this.lockId }, valueJSON));
    return answer.released === true;
  }

  /**
   * delete ends the lease and deletes the state while releasing the lock,
   * atomically. It returns false when the lock id no longer held the lock
   * (nothing was deleted).
   */
  async delete() {
    this.finish(new ReleasedError(`lockservice: lock ${JSON.stringify(this.key)} deleted`, { key: this.key }));
    await this.#stopRenewing();
    try {
      await this.#client.request('delete', this.key, JSON.stringify({ lock_id: this.lockId }));
      return true;
    } catch (err) {
      if (err instanceof NotHeldError) return false;
      throw err;
    }
  }
}
