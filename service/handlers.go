package service

import (
	"errors"

	"github.com/lockservice/lockservice/service/api"
	"github.com/lockservice/lockservice/store"
)

const maxOwnerLen = 256

func (s *Service) acquire(r *request) {
	var req api.AcquireRequest
	if err := r.decode(&req); err != nil {
		s.fail(r, api.CodeBadRequest, "acquire %q: %v", r.key, err)
		return
	}
	ttl, err := duration("ttl_ms", req.TTLms, s.cfg.DefaultTTL, s.cfg.MaxTTL)
	if err != nil {
		s.fail(r, api.CodeBadRequest, "acquire %q: %v", r.key, err)
		return
	}
	wait, err := duration("wait_ms", req.WaitMs, 0, s.cfg.MaxWait)
	if err != nil {
		s.fail(r, api.CodeBadRequest, "acquire %q: %v", r.key, err)
		return
	}
	if req.LockID == "" {
		req.LockID = newLockID()
	} else if err := api.ValidateLockID(req.LockID); err != nil {
		s.fail(r, api.CodeBadRequest, "acquire %q: %v", r.key, err)
		return
	}
	if len(req.Owner) > maxOwnerLen {
		s.fail(r, api.CodeBadRequest, "acquire %q: owner is %d bytes, the limit is %d", r.key, len(req.Owner), maxOwnerLen)
		return
	}
	s.startAcquire(&waiter{
		kind: acquireWaiter, r: r, key: r.key, lockID: req.LockID,
		opts:     store.AcquireOptions{TTL: ttl, Owner: req.Owner},
		blocking: wait > 0, deadline: r.received.Add(wait),
	})
}

func (s *Service) grantResponse(w *waiter, g store.Grant) api.AcquireResponse {
	return api.AcquireResponse{
		Acquired: true, Key: w.key, LockID: w.lockID, Token: g.Token,
		TTLms: g.TTL.Milliseconds(), ExpiresAt: api.FormatTime(g.ExpiresAt),
		Owner: g.Owner, Value: g.Value,
	}
}

func notAcquired(w *waiter, le *store.LockedError) api.AcquireResponse {
	resp := api.AcquireResponse{Key: w.key}
	if le != nil {
		resp.Owner = le.Lease.Owner
		resp.Token = le.Lease.Token
		resp.ExpiresAt = api.FormatTime(le.Lease.ExpiresAt)
	}
	return resp
}

// lockIDOf checks the lock_id of release-like requests.
func (s *Service) lockIDOf(r *request, op, id string) bool {
	if id == "" {
		s.fail(r, api.CodeBadRequest, "%s %q: lock_id is required", op, r.key)
		return false
	}
	if err := api.ValidateLockID(id); err != nil {
		s.fail(r, api.CodeBadRequest, "%s %q: %v", op, r.key, err)
		return false
	}
	return true
}

func (s *Service) checkValue(r *request, op string, v api.Value) bool {
	if len(v) > s.cfg.MaxValueBytes {
		s.fail(r, api.CodeBadRequest, "%s %q: value is %d bytes, the limit is %d; store large data elsewhere and keep a reference in the state", op, r.key, len(v), s.cfg.MaxValueBytes)
		return false
	}
	return true
}

func (s *Service) release(r *request) {
	var req api.ReleaseRequest
	if err := r.decode(&req); err != nil {
		s.fail(r, api.CodeBadRequest, "release %q: %v", r.key, err)
		return
	}
	if !s.lockIDOf(r, "release", req.LockID) || !s.checkValue(r, "release", req.Value) {
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

// released announces a release and wakes local waiters. With a store that
// reports releases itself (store.Notifier), the store's event wakes them:
// once per release, also when this call's answer was lost.
func (s *Service) released(key string) {
	s.publishEvent(api.EventReleased, key, 0)
	if _, ok := s.st.(store.Notifier); !ok {
		s.wake(key, false)
	}
}

func (s *Service) delete(r *request) {
	var req api.DeleteRequest
	if err := r.decode(&req); err != nil {
		s.fail(r, api.CodeBadRequest, "delete %q: %v", r.key, err)
		return
	}
	if !s.lockIDOf(r, "delete", req.LockID) {
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
	if !s.lockIDOf(r, "refresh", req.LockID) {
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
	s.respond(r, api.RefreshResponse{Key: r.key, Token: l.Token, TTLms: l.TTL.Milliseconds(), ExpiresAt: api.FormatTime(l.ExpiresAt)})
}

func (s *Service) write(r *request) {
	var req api.WriteRequest
	if err := r.decode(&req); err != nil {
		s.fail(r, api.CodeBadRequest, "write %q: %v", r.key, err)
		return
	}
	if !s.lockIDOf(r, "write", req.LockID) || !s.checkValue(r, "write", req.Value) {
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
	}
	s.respond(r, resp)
}

func (s *Service) wait(r *request) {
	var req api.WaitRequest
	if err := r.decode(&req); err != nil {
		s.fail(r, api.CodeBadRequest, "wait %q: %v", r.key, err)
		return
	}
	wait, err := duration("wait_ms", req.WaitMs, 0, s.cfg.MaxWait)
	if err != nil {
		s.fail(r, api.CodeBadRequest, "wait %q: %v", r.key, err)
		return
	}
	s.startWait(&waiter{kind: waitWaiter, r: r, key: r.key, blocking: wait > 0, deadline: r.received.Add(wait)})
}

func (s *Service) cancel(r *request) {
	var req api.CancelRequest
	if err := r.decode(&req); err != nil || api.ValidateLockID(req.LockID) != nil {
		return // sent to every instance: only the one that has it answers
	}
	if s.cancelAcquire(r.key, req.LockID) {
		s.respond(r, api.CancelResponse{Key: r.key, Cancelled: true})
	}
}
