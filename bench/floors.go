package main

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"
	"github.com/vmihailenco/msgpack/v5"

	"github.com/lockservice/lockservice/client"
	"github.com/lockservice/lockservice/service/api"
	"github.com/lockservice/lockservice/store"
	jsstore "github.com/lockservice/lockservice/store/jetstream"
	redisstore "github.com/lockservice/lockservice/store/redis"
)

// floors measures the parts a lockservice pair is made of, one client,
// same connections as the service: a NATS request/reply to a responder on
// a service-like connection (answering in its subscription callback, and
// through a micro endpoint answering from a new goroutine as the service
// does), a Redis PING, and store pairs called in-process (no NATS).
func (b *bench) floors(ctx context.Context) error {
	const scen = "1 floors"
	d := min(b.cfg.duration, 2*time.Second)
	measure := func(name string, op func(context.Context) error) error {
		for range 50 {
			if err := op(ctx); err != nil {
				return fmt.Errorf("%s: %w", name, err)
			}
		}
		var lat []time.Duration
		end := time.Now().Add(d)
		for time.Now().Before(end) {
			t0 := time.Now()
			if err := op(ctx); err != nil {
				return fmt.Errorf("%s: %w", name, err)
			}
			lat = append(lat, time.Since(t0))
		}
		b.res.set(scen, name+" p50", "µs", tFloor, us(percentile(lat, 50)), false)
		return nil
	}

	// The responder's connection is made like the services' (-service-conn).
	var rc *nats.Conn
	var err error
	if b.cfg.serviceConn == "tcp" {
		rc, err = b.env.natsConn("lockbench-floor-responder")
	} else {
		rc, err = b.env.srv.Connect(nats.Name("lockbench-floor-responder"))
	}
	if err != nil {
		return err
	}
	defer rc.Close()
	sub, err := rc.Subscribe("lockbench.echo", func(m *nats.Msg) { _ = m.Respond(m.Data) })
	if err != nil {
		return err
	}
	defer sub.Unsubscribe()
	svc, err := micro.AddService(rc, micro.Config{Name: "lockbench_echo", Version: "0.0.1"})
	if err != nil {
		return err
	}
	defer svc.Stop()
	err = svc.AddEndpoint("echo", micro.HandlerFunc(func(r micro.Request) {
		reply, data := r.Reply(), r.Data()
		go func() { _ = rc.Publish(reply, data) }()
	}), micro.WithEndpointSubject("lockbench.mecho"))
	if err != nil {
		return err
	}
	if err := rc.Flush(); err != nil {
		return err
	}
	cc, err := b.env.natsConn("lockbench-floor-client")
	if err != nil {
		return err
	}
	defer cc.Close()
	payload := make([]byte, 64)
	if err := measure("NATS request/reply (TCP client → responder)", func(ctx context.Context) error {
		_, err := cc.Request("lockbench.echo", payload, opTimeout)
		return err
	}); err != nil {
		return err
	}
	if err := measure("NATS request/reply via micro endpoint + goroutine", func(ctx context.Context) error {
		_, err := cc.Request("lockbench.mecho", payload, opTimeout)
		return err
	}); err != nil {
		return err
	}

	rdb := b.env.peerRedis()
	defer rdb.Close()
	if err := measure("Redis PING (go-redis)", func(ctx context.Context) error {
		return rdb.Ping(ctx).Err()
	}); err != nil {
		return err
	}

	rst, err := redisstore.New(ctx, b.env.storeRDB, redisstore.Config{Namespace: "lockbench-floor"})
	if err != nil {
		return err
	}
	if err := measure("Redis store Acquire+Release in-process (no NATS)", storePair(rst, b.key("s1f", "redis"))); err != nil {
		return err
	}
	jnc, err := b.env.srv.Connect(nats.Name("lockbench-floor-js"))
	if err != nil {
		return err
	}
	defer jnc.Close()
	jst, err := jsstore.New(ctx, jnc, jsstore.Config{Bucket: "lockbench_floor"})
	if err != nil {
		return err
	}
	defer jst.Close()
	if err := measure("JetStream store Acquire+Release in-process (no NATS client hop)", storePair(jst, b.key("s1f", "js"))); err != nil {
		return err
	}

	// A minimal service: the same micro endpoint + goroutine shape, one
	// store call, a msgpack reply; no waiter bookkeeping, no events. Its
	// pair is the floor the real service's pair could reach.
	for _, m := range []struct {
		name   string
		st     store.Store
		inline bool
	}{{"Redis", rst, false}, {"Redis", rst, true}, {"JetStream", jst, false}, {"JetStream", jst, true}} {
		how := "goroutine per request"
		if m.inline {
			how = "inline in the subscription callback"
		}
		subj := fmt.Sprintf("lockbench.mini.%s.%v", strings.ToLower(m.name), m.inline)
		st := m.st
		serve := func(reply string, data []byte) {
			var req api.AcquireRequest
			var err error
			if err = msgpack.Unmarshal(data, &req); err == nil {
				sctx, cancel := context.WithTimeout(context.Background(), opTimeout)
				if req.TTLms > 0 {
					_, err = st.Acquire(sctx, "mini", req.LockID, store.AcquireOptions{TTL: time.Duration(req.TTLms) * time.Millisecond})
				} else {
					err = st.Release(sctx, "mini", req.LockID, store.Update{})
				}
				cancel()
			}
			out, _ := msgpack.Marshal(api.ReleaseResponse{Released: err == nil, Key: "mini"})
			_ = rc.Publish(reply, out)
		}
		err := svc.AddEndpoint(fmt.Sprintf("mini%s%v", m.name, m.inline), micro.HandlerFunc(func(r micro.Request) {
			if m.inline {
				serve(r.Reply(), r.Data())
				return
			}
			reply, data := r.Reply(), r.Data()
			go serve(reply, data)
		}), micro.WithEndpointSubject(subj))
		if err != nil {
			return err
		}
		if err := rc.Flush(); err != nil {
			return err
		}
		call := func(req api.AcquireRequest) error {
			data, _ := msgpack.Marshal(req)
			m, err := cc.Request(subj, data, opTimeout)
			if err != nil {
				return err
			}
			var resp api.ReleaseResponse
			if err := msgpack.Unmarshal(m.Data, &resp); err != nil {
				return err
			}
			if !resp.Released {
				return errors.New("minimal service: store call failed")
			}
			return nil
		}
		err = measure(fmt.Sprintf("minimal service on the %s store, %s: pair", m.name, how), func(ctx context.Context) error {
			id := client.NewLockID()
			if err := call(api.AcquireRequest{TTLms: 10000, LockID: id}); err != nil {
				return err
			}
			return call(api.AcquireRequest{LockID: id})
		})
		if err != nil {
			return err
		}
	}
	return nil
}

func storePair(st store.Store, key string) func(context.Context) error {
	return func(ctx context.Context) error {
		id := client.NewLockID()
		if _, err := st.Acquire(ctx, key, id, store.AcquireOptions{TTL: 10 * time.Second}); err != nil {
			return err
		}
		return st.Release(ctx, key, id, store.Update{})
	}
}
