// Types of @lockservice/client: a lockservice client with the API of the
// seed library johnny-locke (IDistributedLock), plus fencing tokens,
// keep-alive and typed errors.

import type { NatsConnection } from '@nats-io/transport-node';

/** The configuration of create (the seed's LockConfiguration, extended). */
export interface LockConfiguration {
  /**
   * Isolates this application's locks. With `namespaceAs: "key"` (the
   * default) every key becomes `<namespace>.<key>`; with `"subject"` the
   * namespace is the service's subject prefix (run lockservice with
   * `--prefix <namespace>`). Key rules: '.'-separated tokens of
   * [-/_=a-zA-Z0-9]. Empty: no key prefix.
   */
  namespace: string;
  /** How the namespace is applied (default "key"). */
  namespaceAs?: 'key' | 'subject';
  /**
   * The lease length when a call gives no lockDuration (default: the
   * service's, 30 s). The lease ends this long after the acquire was sent
   * unless it is renewed (keep-alive) or released.
   */
  defaultLockDurationMs?: number;
  /** The seed's name for defaultLockDurationMs. */
  lockTimeoutMs?: number;
  /**
   * Accepted for compatibility and ignored, with a process warning: object
   * expiry is a setting of the service (`lockservice --object-ttl`).
   */
  objectExpiryMs?: number;
  /** The service's subject prefix (`--prefix`, default "lock"); not with namespaceAs "subject". */
  subjectPrefix?: string;
  /** A label shown to anyone who inspects a lock this client holds (at most 256 bytes). */
  owner?: string;
  /**
   * How long a request that does not block waits for its answer (default
   * 6000 ms); blocking requests add it to their wait when they have no
   * liveness window.
   */
  requestTimeoutMs?: number;
  /**
   * The liveness window of blocking requests (default 5000 ms; 1000 to
   * 60000, or 0 for none). While a request is parked the client renews it
   * every window/3; the service drops a request not renewed within the
   * window, so a client that died does not hold up the queue.
   */
  aliveWindowMs?: number;
}

/** Options of one acquire (acquireLock, tryAcquireLock, withLock). */
export interface AcquireOptions {
  /**
   * Keep the lease alive until the lock is released or lost: a refresh with
   * its lease length every third of it. Default false, except for withLock.
   * A refresh answered "not held" ends the lock at once (signal aborted
   * with a NotHeldError); other failures are retried until the deadline,
   * which then ends it (LeaseExpiredError).
   */
  keepAlive?: boolean;
  /**
   * Give the lock up this long after it was acquired: the signal is aborted
   * with a MaxHoldError and the lock released (nothing written).
   */
  maxHoldMs?: number;
  /** The owner label of this lock (default: the configuration's). */
  owner?: string;
  /**
   * A lock-delay (docs/PROTOCOL.md "Lock-delay"): when this lease expires or
   * is forced, nobody gets the key for this long (a release hands it over at
   * once). Default: the service's `--lock-delay`.
   */
  lockDelayMs?: number;
  /** Aborting it ends a wait for the lock (and withLock's callback signal) with its reason. */
  signal?: AbortSignal;
}

/** A read-only state: what wait returns. */
export interface Readable<T> {
  /** The state; null when there is none. */
  readonly value: T | null;
}

/** What withLock returns: the state written, and the grant's fencing token. */
export interface LockResult<T> extends Readable<T> {
  readonly token: bigint;
}

/**
 * A held lock and the state to write when releasing it. update returns a
 * copy with a new state; releaseLock writes the state of a Writable that
 * update returned, and leaves the state unchanged for one that acquire
 * returned.
 */
export interface Writable<T> {
  /** The state: as read at the grant (null when none), or as given to update. */
  readonly value: T | null;
  /** The lock id: the secret that authorizes release. */
  readonly lockId: string;
  /**
   * The fencing token of this grant, strictly greater than every earlier
   * grant's for the key: pass it to every downstream write and have the
   * receiver reject lower ones.
   */
  readonly token: bigint;
  /** The locked key, with the namespace. */
  readonly key: string;
  /**
   * Aborted when the lock ends; `reason` says why: ReleasedError,
   * NotHeldError (lost; LeaseExpiredError at the deadline, MaxHoldError at
   * maxHoldMs) or ClosedError. Stop working under the lock, including
   * writes fenced by its token, when it is aborted.
   */
  readonly signal: AbortSignal;
  /**
   * When the lease ends at the earliest by this machine's clock (counted
   * from when the acquire or the last refresh was sent); keep-alive moves it.
   */
  readonly deadline: Date;
  /** True when update gave this Writable its state. */
  readonly updated: boolean;
  /** A Writable of the same lock with value as the state to write on release. */
  update(value: T): Writable<T>;
}

/** The holder that tryAcquireLock found. */
export interface Holder {
  readonly token: bigint;
  readonly owner?: string;
  /** The lease end by the service's clock (informational). */
  readonly expiresAt?: Date;
  /** Set when the key is in the lock-delay of the lease `token` (which ended): how long until it can be taken. */
  readonly delayMs?: number;
}

export type TryAcquireResult<T> =
  | { acquired: true; value: Writable<T>; holder?: undefined }
  | { acquired: false; value: undefined; holder?: Holder };

/** What get reports about a key. */
export interface LockInfo<T> {
  readonly key: string;
  readonly locked: boolean;
  /** The live lease's token, or the last grant's when the service still knows it; 0n otherwise. */
  readonly token: bigint;
  readonly ttlMs?: number;
  /** The lease end by the service's clock (informational). */
  readonly expiresAt?: Date;
  readonly owner?: string;
  /** Set when unlocked but in the lock-delay of the lease `token`: how long until the key can be taken. */
  readonly delayMs?: number;
  readonly hasValue: boolean;
  readonly value: T | null;
}

/** The seed's IDistributedLock, as this client implements it. */
export interface IDistributedLock {
  withLock<T>(
    key: string,
    timeoutMs: number,
    callback: (state: T | null, signal: AbortSignal) => T | Promise<T>,
    lockDuration?: number,
    options?: AcquireOptions,
  ): Promise<LockResult<T>>;
  acquireLock<T>(key: string, timeoutMs: number, lockDuration?: number, options?: AcquireOptions): Promise<Writable<T>>;
  tryAcquireLock<T>(key: string, lockDuration?: number, options?: AcquireOptions): Promise<TryAcquireResult<T>>;
  releaseLock<T>(key: string, writable: Writable<T>): Promise<boolean>;
  wait<T>(key: string, timeoutMs: number, options?: { signal?: AbortSignal }): Promise<Readable<T>>;
  delete<T>(key: string, writable: Writable<T>): Promise<boolean>;
  close(): Promise<void>;
}

export declare class DistributedLock implements IDistributedLock {
  /**
   * Returns a DistributedLock speaking to lockservice on nc (which stays
   * yours to close). Throws a BadRequestError for an invalid configuration.
   */
  static create(nc: NatsConnection, config: LockConfiguration): Promise<DistributedLock>;
  private constructor(nc: NatsConnection, config: LockConfiguration);

  /**
   * Acquires key (waiting at most timeoutMs; TimeoutError otherwise), calls
   * callback with its state (null when none) and a signal aborted as soon
   * as the lock is lost, and writes what the callback returns while
   * releasing, atomically; returns it with the grant's token. The lease is
   * kept alive while the callback runs (unless options.keepAlive is false).
   * If the lock was lost first, nothing is written and a NotHeldError is
   * thrown; if the callback throws, the lock is released without writing
   * and its error rethrown; if it returns a state too large to write (over
   * the service's --max-value-bytes or NATS's max payload), the lock is
   * released without writing and a BadRequestError thrown. A callback that
   * returns undefined keeps the state.
   */
  withLock<T>(
    key: string,
    timeoutMs: number,
    callback: (state: T | null, signal: AbortSignal) => T | Promise<T>,
    lockDuration?: number,
    options?: AcquireOptions,
  ): Promise<LockResult<T>>;

  /**
   * Takes the lock on key, waiting at most timeoutMs (Infinity: no limit),
   * and returns a Writable of its state. Throws a TimeoutError when it could
   * not be had in time (the request is withdrawn: no lock is left orphaned).
   * The lease lasts lockDuration (default: defaultLockDurationMs) unless
   * options.keepAlive renews it.
   */
  acquireLock<T>(key: string, timeoutMs: number, lockDuration?: number, options?: AcquireOptions): Promise<Writable<T>>;

  /** Takes the lock on key if it is free, without waiting. */
  tryAcquireLock<T>(key: string, lockDuration?: number, options?: AcquireOptions): Promise<TryAcquireResult<T>>;

  /**
   * Releases the lock, writing the Writable's state when update gave it one,
   * atomically. Resolves false when the lease had been lost (nothing was
   * written). Works after close().
   */
  releaseLock<T>(key: string, writable: Writable<T>): Promise<boolean>;

  /**
   * Waits at most timeoutMs until key is not locked and returns its state
   * without taking the lock (at once when it is not locked). Throws a
   * TimeoutError when it was still locked.
   */
  wait<T>(key: string, timeoutMs: number, options?: { signal?: AbortSignal }): Promise<Readable<T>>;

  /**
   * Deletes the state of key and releases the lock, atomically. Resolves
   * false when the lease had been lost (nothing was deleted). Works after
   * close().
   */
  delete<T>(key: string, writable: Writable<T>): Promise<boolean>;

  /** Reads the lock and the state of key without taking it. */
  get<T>(key: string): Promise<LockInfo<T>>;

  /**
   * Ends blocking calls in progress with a ClosedError (withdrawing their
   * requests), stops keep-alives, and makes later calls throw a ClosedError
   * (except releaseLock and delete). Resolves when the calls in progress
   * have settled. Does not close the NATS connection.
   */
  close(): Promise<void>;
}

/** DistributedLock.create. */
export declare function create(nc: NatsConnection, config: LockConfiguration): Promise<DistributedLock>;

/** The base class of every error this package throws. */
export declare class LockError extends Error {
  constructor(message: string, options?: { cause?: unknown; status?: number; op?: string; key?: string });
  /** The service's error code when the error is its answer (400, 408, 409, 500, 503). */
  readonly status?: number;
  /** The operation, when known. */
  readonly op?: string;
  /** The key (with the namespace), when known. */
  readonly key?: string;
  /** A stable code per class, e.g. "LOCK_TIMEOUT". */
  readonly code: string;
}
/** The lock (acquire) or an unlocked key (wait) could not be had in time; also the service's 408. */
export declare class TimeoutError extends LockError {}
/** The lock id does not hold the lock (lease expired, released or taken over; the service's 409). Nothing was written. */
export declare class NotHeldError extends LockError {}
/** The lease's deadline passed without a renewal. */
export declare class LeaseExpiredError extends NotHeldError {}
/** The lock was given up at maxHoldMs. */
export declare class MaxHoldError extends NotHeldError {}
/** A Writable's signal reason after releaseLock or delete. */
export declare class ReleasedError extends LockError {}
/** The request is invalid (the service's 400, or checked before sending); the message says what to fix. */
export declare class BadRequestError extends LockError {}
/** The service is unavailable (503), no instance listens (noResponders), or the connection is closed. */
export declare class UnavailableError extends LockError {
  constructor(message: string, options?: { cause?: unknown; status?: number; op?: string; key?: string; noResponders?: boolean });
  readonly noResponders: boolean;
}
/** No answer arrived in time; the request may or may not have taken effect. */
export declare class RequestTimeoutError extends UnavailableError {}
/** The service failed (500). */
export declare class InternalError extends LockError {}
/** The DistributedLock was closed. */
export declare class ClosedError extends LockError {}
