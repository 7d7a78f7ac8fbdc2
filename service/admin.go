package service

import (
	"encoding/json"
	"errors"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"

	"github.com/lockservice/lockservice/service/api"
	"github.com/lockservice/lockservice/store"
)

// The admin plane: <prefix>.admin.list and <prefix>.admin.force.<key>,
// under their own subject prefix so that NATS permissions can give them to
// operators only. They exist when the store implements store.Admin.

const (
	defaultListLimit = 100
	maxListLimit     = 1000
	maxReasonLen     = 256
)

// addAdmin registers the admin endpoints on svc.
func (s *Service) addAdmin(svc micro.Service) error {
	if _, ok := s.st.(store.Admin); !ok {
		return nil
	}
	g := svc.AddGroup(s.cfg.Prefix + "." + api.AdminToken)
	md := func(desc string) micro.EndpointOpt {
		return micro.WithEndpointMetadata(map[string]string{"description": desc, "format": "application/json or application/msgpack"})
	}
	if err := g.AddEndpoint("admin-list", s.adminHandler(api.OpAdminList, s.adminList, false),
		micro.WithEndpointSubject(api.OpList), md("list the held locks (paged, by key prefix)")); err != nil {
		return err
	}
	return g.AddEndpoint("admin-force", s.adminHandler(api.OpAdminForce, s.adminForce, true),
		micro.WithEndpointSubject(api.OpForce+".>"), md("end a lease whoever holds it (audited on <prefix>.forced.<key>)"))
}

// adminHandler is handler for the admin subjects: withKey says whether the
// subject ends with a key.
func (s *Service) adminHandler(op string, h func(*request), withKey bool) micro.Handler {
	skip := len(s.cfg.Prefix) + len(api.AdminToken) + len(op[len(api.AdminToken)+1:]) + 3
	st := s.stats.ops[op]
	return micro.HandlerFunc(func(r micro.Request) {
		received := time.Now()
		st.requests.Add(1)
		if s.dropUnsafeReply(op, r, st, received) {
			return
		}
		key := ""
		if withKey {
			if subj := r.Subject(); len(subj) > skip {
				key = subj[skip:]
			}
			if err := api.ValidateKey(key); err != nil {
				st.record(api.CodeBadRequest, time.Since(received))
				_ = r.Error(strconv.Itoa(api.CodeBadRequest), err.Error(), nil)
				return
			}
		}
		select {
		case s.inflight <- struct{}{}:
		default:
			s.stats.overloaded.Add(1)
			s.refused("max_inflight", op, key, cap(s.inflight))
			st.record(api.CodeUnavailable, time.Since(received))
			_ = r.Error(strconv.Itoa(api.CodeUnavailable), "instance overloaded; retry with backoff", nil)
			return
		}
		s.ops.Add(1)
		req := &request{key: key, reply: r.Reply(), msgpack: r.Headers().Get(api.ContentTypeHeader) == api.MsgpackContentType,
			data: r.Data(), received: received, stats: st}
		req.finish = func() { <-s.inflight; s.ops.Done() }
		s.dispatch(func() {
			defer req.finish()
			h(req)
		})
	})
}

func (s *Service) adminList(r *request) {
	var req api.ListRequest
	if err := r.decode(&req); err != nil {
		s.fail(r, api.CodeBadRequest, "admin list: %v", err)
		return
	}
	if req.Prefix != "" {
		if err := api.ValidateKeyPrefix(req.Prefix); err != nil {
			s.fail(r, api.CodeBadRequest, "admin list: prefix: %v", err)
			return
		}
	}
	switch {
	case req.Limit < 0 || req.Limit > maxListLimit:
		s.fail(r, api.CodeBadRequest, "admin list: limit must be 0 (default %d) to %d, got %d", defaultListLimit, maxListLimit, req.Limit)
		return
	case req.Limit == 0:
		req.Limit = defaultListLimit
	}
	ctx, cancel := s.storeCtx()
	defer cancel()
	held, next, err := s.st.(store.Admin).List(ctx, req.Prefix, req.Cursor, req.Limit)
	if err != nil {
		s.failStore(r, "admin list", err)
		return
	}
	resp := api.ListResponse{Locks: make([]api.HeldLock, 0, len(held)), Cursor: next}
	s.mu.Lock()
	for _, h := range held {
		parked := 0
		if ks := s.keys[h.Key]; ks != nil {
			parked = ks.q.len()
		}
		resp.Locks = append(resp.Locks, api.HeldLock{Key: h.Key, Owner: h.Lease.Owner, Token: h.Lease.Token,
			TTLms: h.Lease.TTL.Milliseconds(), ExpiresAt: api.FormatTime(h.Lease.ExpiresAt), Parked: parked})
	}
	s.mu.Unlock()
	s.respond(r, resp)
}

func (s *Service) adminForce(r *request) {
	var req api.ForceRequest
	if err := r.decode(&req); err != nil {
		s.fail(r, api.CodeBadRequest, "admin force %q: %v", r.key, err)
		return
	}
	if len(req.Reason) > maxReasonLen {
		s.fail(r, api.CodeBadRequest, "admin force %q: reason is %d bytes, the limit is %d", r.key, len(req.Reason), maxReasonLen)
		return
	}
	ctx, cancel := s.storeCtx()
	defer cancel()
	l, err := s.st.(store.Admin).Force(ctx, r.key)
	if errors.Is(err, store.ErrNotHeld) {
		s.respond(r, api.ForceResponse{Key: r.key})
		return
	}
	if err != nil {
		s.failStore(r, "admin force", err)
		return
	}
	s.publishForced(r.key, l, req.Reason)
	s.released(r.key)
	if _, ok := s.st.(store.Notifier); !ok {
		// A lease with a lock-delay keeps the key from everyone until the
		// delay ends; its end is announced as the expiry (a Notifier store
		// reports it), so this instance watches for it.
		if info, err := s.st.Get(ctx, r.key); err == nil && !info.Locked && info.Delay > 0 {
			s.mu.Lock()
			s.watchLeaseLocked(r.key, l.Token, info.Delay)
			s.mu.Unlock()
		}
	}
	s.respond(r, api.ForceResponse{Key: r.key, Forced: true, Token: l.Token, Owner: l.Owner})
}

// publishForced announces a forced lease on <prefix>.forced.<key>: the
// audit record.
func (s *Service) publishForced(key string, l store.Lease, reason string) {
	data, _ := json.Marshal(api.ForcedEvent{Key: key, Token: l.Token, Owner: l.Owner, Reason: reason, Instance: s.id})
	hdr := nats.Header{api.InstanceHeader: {s.id}, api.ContentTypeHeader: {api.JSONContentType}}
	subject := api.Subject(s.cfg.Prefix, api.EventForced, key)
	if err := s.announce(&nats.Msg{Subject: subject, Data: data, Header: hdr}); err != nil {
		s.logSendError("publish failed", subject, err)
		return
	}
	s.stats.countEvent(api.EventForced)
}
