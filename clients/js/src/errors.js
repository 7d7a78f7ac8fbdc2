// Typed errors. Every error this package throws is a LockError; match the
// subclasses with instanceof (or the string `code`). Errors that come from
// a service answer carry the service's code in `status` (400, 408, 409,
// 500, 503; see docs/PROTOCOL.md "Errors").

/** The base class of every error this package throws. */
export class LockError extends Error {
  /**
   * @param {string} message
   * @param {{cause?: unknown, status?: number, op?: string, key?: string}} [options]
   */
  constructor(message, options = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = new.target.name;
    /** The service's error code when the error is its answer, else undefined. */
    this.status = options.status;
    /** The operation (acquire, release, ...) when known. */
    this.op = options.op;
    /** The key (with the namespace) when known. */
    this.key = options.key;
  }

  /** A stable string code, the same for every instance of a class. */
  get code() {
    return 'LOCK_ERROR';
  }
}

/**
 * The lock could not be acquired, or the key was still locked, within the
 * time given (acquireLock, withLock, wait); also the service's 408.
 */
export class TimeoutError extends LockError {
  get code() {
    return 'LOCK_TIMEOUT';
  }
}

/**
 * The lock id does not hold the lock: the lease expired, was released, or
 * was taken over (the service's 409). Nothing was written.
 */
export class NotHeldError extends LockError {
  get code() {
    return 'LOCK_NOT_HELD';
  }
}

/**
 * The lease's deadline passed, by this client's count, without a renewal.
 * Nothing was written. A NotHeldError.
 */
export class LeaseExpiredError extends NotHeldError {
  get code() {
    return 'LOCK_LEASE_EXPIRED';
  }
}

/**
 * The lock was held for `maxHoldMs` and the client gave it up. Nothing was
 * written. A NotHeldError.
 */
export class MaxHoldError extends NotHeldError {
  get code() {
    return 'LOCK_MAX_HOLD';
  }
}

/** The reason of a lock's signal after its holder released or deleted it. */
export class ReleasedError extends LockError {
  get code() {
    return 'LOCK_RELEASED';
  }
}

/**
 * The request is invalid (the service's 400, or checked before sending: a
 * bad key, duration or value). The message says what to fix; retrying it
 * unchanged fails again.
 */
export class BadRequestError extends LockError {
  get code() {
    return 'LOCK_BAD_REQUEST';
  }
}

/**
 * The service or its store is unavailable, overloaded or shutting down
 * (503), no service instance is listening (`noResponders`), or the NATS
 * connection is closed. Retry later.
 */
export class UnavailableError extends LockError {
  /**
   * @param {string} message
   * @param {{cause?: unknown, status?: number, op?: string, key?: string, noResponders?: boolean}} [options]
   */
  constructor(message, options = {}) {
    super(message, options);
    /** True when no service instance listens on the subject. */
    this.noResponders = options.noResponders === true;
  }

  get code() {
    return 'LOCK_UNAVAILABLE';
  }
}

/**
 * No answer arrived within the request timeout: the request may or may not
 * have taken effect. An UnavailableError.
 */
export class RequestTimeoutError extends UnavailableError {
  get code() {
    return 'LOCK_REQUEST_TIMEOUT';
  }
}

/** The service failed (500); the outcome is unknown. */
export class InternalError extends LockError {
  get code() {
    return 'LOCK_INTERNAL';
  }
}

/** The DistributedLock was closed (close()). */
export class ClosedError extends LockError {
  get code() {
    return 'LOCK_CLOSED';
  }
}

/**
 * serviceError returns the error for the service's error answer `status`
 * with its message.
 * @param {string} op
 * @param {string} key
 * @param {number} status
 * @param {string} message
 */
export function serviceError(op, key, status, message) {
  const text = `lockservice: ${op} ${JSON.stringify(key)}: ${status} ${message}`;
  const options = { status, op, key };
  switch (status) {
    case 400:
      return new BadRequestError(text, options);
    case 408:
      return new TimeoutError(text, options);
    case 409:
      return new NotHeldError(text, options);
    case 503:
      return new UnavailableError(text, options);
    default:
      return new InternalError(text, options);
  }
}

/**
 * unknownOutcome reports an error after which a request may or may not
 * have taken effect: no answer in time, or the service's 503 or 500.
 * @param {unknown} err
 */
export function unknownOutcome(err) {
  if (err instanceof RequestTimeoutError) return true;
  return err instanceof LockError && err.status !== undefined && err.status >= 500;
}
