// @lockservice/client: a client for lockservice with the API of the seed
// library (johnny-locke). See index.d.ts for the documented API and
// docs/PROTOCOL.md in the lockservice repository for the wire protocol.

export { DistributedLock, create } from './lock.js';
export {
  BadRequestError,
  ClosedError,
  InternalError,
  LeaseExpiredError,
  LockError,
  MaxHoldError,
  NotHeldError,
  ReleasedError,
  RequestTimeoutError,
  TimeoutError,
  UnavailableError,
} from './errors.js';
