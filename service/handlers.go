package service

import (
	"errors"
	"fmt"
	"time"

	"github.com/lockservice/lockservice/service/api"
	"github.com/lockservice/lockservice/store"
)

const maxOwnerLen = 256

// acquire runs on the acquire subscription's goroutine: decoding and
// admission happen in arrival order, the store work elsewhere.
func (s *Service) acquire(r *request) {
	var req api.AcquireRequest
	if err := r.decode(&req); err != nil {
		s.reject(r, "acquire %q: %v", r.key, err)
		return
	}
	ttl, err := duration("ttl_ms", req.TTLms, s.cfg.DefaultTTL, s.cfg.MaxTTL)
	if err != nil {
		s.reject(r, "acquire %q: %v", r.key, err)
		return
	}
	wait, err := duration("wait_ms", req.WaitMs, 0, s.cfg.MaxWait)
	if err != nil {
		s.reject(r, "acquire %q: %v", r.key, err)
		return
	}
	window, err := aliveWindow(req.AliveMs)
	if err != nil {
		s.reject(r, "acquire %q: %v", r.key, err)
		return
	}
	delay := s.cfg.LockDelay
	if req.LockDelayMs != nil {
		if delay, err = duration("lock_delay_ms", *req.LockDelayMs, 0, s.cfg.MaxLockDelay); err != nil {
			s.reject(r, "acquire %q: %v", r.key, err)
			return
		}
	}
	if req.LockID == "" {
		req.LockID = newLockID()
	} else if err := api.ValidateLockID(req.LockID); err != nil {
		s.reject(r, "acquire %q: %v", r.key, err)
		return
	}
	if len(req.Owner) > maxOwnerLen {
		s.reject(r, "acquire %q: owner is %d bytes, the limit is %d", r.key, len(req.Owner), maxOwnerLen)
		return
	}
	s.admitAcquire(&waiter{
		kind: acquireReq, r: r, key: r.key, id: req.LockID,
		opts: store.AcquireOptions{TTL: ttl, Owner: req.Owner, Delay: delay},
		// without a reply subject nobody can be told: never parked
		blocking: wait > 0 && r.reply != "",
		seq:      s.seq.Add(1), deadline: r.received.Add(wait), window: window,
	})
}

// aliveWindow checks alive_ms.
func aliveWindow(ms int64) (time.Duration, error) {
	if ms == 0 {
		return 0, nil
	}
	d := time.Duration(ms) * time.Millisecond
	if ms < 0 || d < api.MinAlive || d > api.MaxAlive {
		return 0, fmt.Errorf("alive_ms must be 0 (no liveness window) or %d to %d, got %d", api.MinAlive.Milliseconds(), api.MaxAlive.Milliseconds(), ms)
	}
	return d, nil
}

// reject answers a malformed request with 400 and gives back its slot.
func (s *Service) reject(r *request, format string, args ...any) {
	r.finish()
	s.fail(r, api.CodeBadRequest, format, args...)
}

// rejectBadLockID answers 400 and returns true when id is missing or
// malformed.
func (s *Service) rejectBadLockID(r *request, op, id string) bool {
	if id == "" {
		s.fail(r, api.CodeBadRequest, "%s %q: lock_id is required", op, r.key)
		return true
	}
	if err := api.ValidateLockID(id); err != nil {
		s.fail(r, api.CodeBadRequest, "%s %q: %v", op, r.key, err)
		return true
	}
	return false
}

// rejectLargeValue answers 400 and returns true when v is over the limit.
func (s *Service) rejectLargeValue(r *request, op string, v api.Value) bool {
	if len(v) > s.cfg.MaxValueBytes {
		s.fail(r, api.CodeBadRequest, "%s %q: value is %d bytes, the limit is %d; store large data elsewhere and keep a reference in the state", op, r.key, len(v), s.cfg.MaxValueBytes)
		return true
	}
	return false
}

func (s *Service) release(r *request) {
	var req api.ReleaseRequest
	if err := r.decode(&req); err != nil {
		s.fail(r, api.CodeBadRequest, "release %q: %v", r.key, err)
		return
	}
	if s.rejectBadLockID(r, "release", req.LockID) || s.rejectLargeValue(r, "release", req.Value) {
		return
	}
	u := store.Update{}
	if req.Value != nil {
		u = store.Update{Op: store.Set, Value: req.Value}
	}
	ctx, cancel := s.storeCtx()
	defer cancel()
	handed, err := s.handOff(ctx, r.key, req.LockID, u)
	if !handed {
		err = s.st.Release(ctx, r.key, req.LockID, u)
	}
	if errors.Is(err, store.ErrNotHeld) {
		s.respond(r, api.ReleaseResponse{Key: r.key, Released: false})
		return
	}
	if err != nil {
		s.failStore(r, "release", err)
		return
	}
	if !handed {
		s.released(r.key)
	}
	s.respond(r, api.ReleaseResponse{Key: r.key, Released: true})
}

func (s *Service) delete(r *request) {
	var req api.DeleteRequest
	if err := r.decode(&req); err != nil {
		s.fail(r, api.CodeBadRequest, "delete %q: %v", r.key, err)
		return
	}
	if s.rejectBadLockID(r, "delete", req.LockID) {
		return
	}
	ctx, cancel := s.storeCtx()
	defer cancel()
	u := store.Update{Op: store.Delete}
	handed, err := s.handOff(ctx, r.key, req.LockID, u)
	if !handed {
		err = s.st.Release(ctx, r.key, req.LockID, u)
	}
	if err != nil {
		s.failStore(r, "delete", err)
		return
	}
	if !handed {
		s.released(r.key)
	}
	s.respond(r, api.DeleteResponse{Key: r.key, Deleted: true})
}

func (s *Service) refresh(r *request) {
	var req api.RefreshRequest
	if err := r.decode(&req); err != nil {
		s.fail(r, api.CodeBadRequest, "refresh %q: %v", r.key, err)
		return
	}
	if s.rejectBadLockID(r, "refresh", req.LockID) {
		return
	}
	ttl, err := duration("ttl_ms", req.TTLms, s.cfg.DefaultTTL, s.cfg.MaxTTL)
	if err != nil {
		s.fail(r, api.CodeBadRequest, "refresh %q: %v", r.key, err)
		return
	}
	ctx, cancel := s.storeCtx()
	defer cancel()
	l, err := s.st.Refresh(ctx, r.key, req.LockID, ttl)
	if err != nil {
		s.failStore(r, "refresh", err)
		return
	}
	s.mu.Lock()
	s.watchLeaseLocked(r.key, l.Token, remaining(l))
	s.mu.Unlock()
	s.respond(r, api.RefreshResponse{Key: r.key, Token: l.Token, TTLms: l.TTL.Milliseconds(), ExpiresAt: api.FormatTime(l.ExpiresAt)})
}

func (s *Service) write(r *request) {
	var req api.WriteRequest
	if err := r.decode(&req); err != nil {
		s.fail(r, api.CodeBadRequest, "write %q: %v", r.key, err)
		return
	}
	if s.rejectBadLockID(r, "write", req.LockID) || s.rejectLargeValue(r, "write", req.Value) {
		return
	}
	if req.Value == nil {
		s.fail(r, api.CodeBadRequest, "write %q: value is required (use delete to remove the state)", r.key)
		return
	}
	ctx, cancel := s.storeCtx()
	defer cancel()
	if err := s.st.Write(ctx, r.key, req.LockID, store.Update{Op: store.Set, Value: req.Value}); err != nil {
		s.failStore(r, "write", err)
		return
	}
	s.respond(r, api.WriteResponse{Key: r.key, Written: true})
}

func (s *Service) get(r *request) {
	var req struct{}
	if err := r.decode(&req); err != nil {
		s.fail(r, api.CodeBadRequest, "get %q: %v (get takes an empty payload)", r.key, err)
		return
	}
	ctx, cancel := s.storeCtx()
	defer cancel()
	info, err := s.st.Get(ctx, r.key)
	if err != nil {
		s.failStore(r, "get", err)
		return
	}
	resp := api.GetResponse{
		Key: r.key, Locked: info.Locked, Token: info.Lease.Token,
		HasValue: info.Value != nil, Value: info.Value,
	}
	if info.Locked {
		resp.TTLms = info.Lease.TTL.Milliseconds()
		resp.ExpiresAt = api.FormatTime(info.Lease.ExpiresAt)
		resp.Owner = info.Lease.Owner
	} else if info.Delay > 0 {
		resp.DelayMs = ceilMs(info.Delay)
	}
	s.respond(r, resp)
}

// wait runs on the wait subscription's goroutine, like acquire.
func (s *Service) wait(r *request) {
	var req api.WaitRequest
	if err := r.decode(&req); err != nil {
		s.reject(r, "wait %q: %v", r.key, err)
		return
	}
	wait, err := duration("wait_ms", req.WaitMs, 0, s.cfg.MaxWait)
	if err != nil {
		s.reject(r, "wait %q: %v", r.key, err)
		return
	}
	window, err := aliveWindow(req.AliveMs)
	if err != nil {
		s.reject(r, "wait %q: %v", r.key, err)
		return
	}
	if req.WaitID != "" {
		if err := api.ValidateLockID(req.WaitID); err != nil {
			s.reject(r, "wait %q: wait_id: %v", r.key, err)
			return
		}
	} else if window > 0 {
		s.reject(r, "wait %q: alive_ms needs a wait_id to renew the request by", r.key)
		return
	}
	if r.reply == "" {
		r.finish() // nobody to answer
		return
	}
	if wait > 0 {
		s.admitWait(&waiter{kind: waitReq, r: r, key: r.key, id: req.WaitID, blocking: true,
			seq: s.seq.Add(1), deadline: r.received.Add(wait), window: window})
		return
	}
	s.dispatch(func() {
		defer r.finish()
		ctx, cancel := s.storeCtx()
		info, err := s.st.Get(ctx, r.key)
		cancel()
		switch {
		case err != nil:
			s.failStore(r, "wait", err)
		case info.Locked:
			s.fail(r, api.CodeTimeout, "wait %q: the key is locked (wait_ms was 0)", r.key)
		case info.Delay > 0:
			s.fail(r, api.CodeTimeout, "wait %q: the key is in the lock-delay of a lease that ended, for %d ms more (wait_ms was 0)", r.key, ceilMs(info.Delay))
		default:
			s.respond(r, api.WaitResponse{Key: r.key, Value: info.Value})
		}
	})
}

// cancel runs on the cancel subscription's goroutine. Every instance
// receives it and retires the lock id; only the one that had the request
// answers.
func (s *Service) cancel(r *request) {
	defer r.finish()
	var req api.CancelRequest
	if err := r.decode(&req); err != nil || api.ValidateLockID(req.LockID) != nil {
		return
	}
	if s.withdraw(r.key, req.LockID) {
		s.respond(r, api.CancelResponse{Key: r.key, Cancelled: true})
	}
}

// alive renews the liveness window of a parked request (on its
// subscription's goroutine). Every instance receives it; only the one that
// has the request answers.
func (s *Service) alive(r *request) {
	defer r.finish()
	var req api.AliveRequest
	if err := r.decode(&req); err != nil || api.ValidateLockID(req.ID) != nil {
		return
	}
	if s.renew(r.key, req.ID) {
		s.respond(r, api.AliveResponse{Key: r.key, Alive: true})
	}
}
