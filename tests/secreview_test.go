package tests

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/lockservice/lockservice/client"
	"github.com/lockservice/lockservice/embedded"
)

// Attacks on the permission template found by review (issue 11): each test
// says the attack and what must hold.

// templateServiceUser runs the embedded service as the template's own
// service user (the permissions of an instance joining with --nats-url).
func templateServiceUser(errs *errLog) []embedded.Option {
	return []embedded.Option{
		embedded.WithServiceConnOptions(
			nats.UserInfo("lockservice", "change-me-service"), nats.CustomInboxPrefix("_INBOX.lockservice"),
			nats.ErrorHandler(errs.handler)),
		embedded.WithStoreConnOptions(
			nats.UserInfo("lockstore", "change-me-store"), nats.CustomInboxPrefix("_INBOX.lockservice"),
			nats.ErrorHandler(errs.handler)),
	}
}

// replyAttack is one aimed answer: billing publishes a request it may
// publish, with another subject as its reply subject.
type replyAttack struct{ subject, data string }

// aimAnswers has billing send each attack with each target as its reply
// subject and reports every message that reached a target (observed by a
// connection with every right), after billing's own request on the same
// endpoints was answered and a grace for answers sent later.
func aimAnswers(t *testing.T, srv *embedded.Server, billing *tenant, attacks []replyAttack, targets []string) {
	t.Helper()
	got := make(chan *nats.Msg, 64)
	for _, target := range targets {
		sub, err := srv.Conn().ChanSubscribe(target, got)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { sub.Unsubscribe() })
	}
	if err := srv.Conn().Flush(); err != nil {
		t.Fatal(err)
	}
	for _, target := range targets {
		for _, a := range attacks {
			if err := billing.nc.PublishRequest(a.subject, target, []byte(a.data)); err != nil {
				t.Fatal(err)
			}
		}
	}
	// Billing's own answers come back: the attacks were received.
	for _, a := range attacks {
		if _, err := billing.nc.Request(a.subject, []byte(a.data), 5*time.Second); err != nil {
			t.Fatalf("billing request %s = %v", a.subject, err)
		}
	}
	grace := time.After(time.Second)
	for {
		select {
		case m := <-got:
			t.Errorf("billing made the service publish on %s: headers %v, data %q", m.Subject, m.Header, m.Data)
		case <-grace:
			return
		}
	}
}

// shippingStillHolds checks that shipping's lock survived: its holder can
// refresh it and nobody else gets it.
func shippingStillHolds(ctx context.Context, t *testing.T, held *client.Lock, other *tenant) {
	t.Helper()
	if err := held.Refresh(ctx, time.Minute); err != nil {
		t.Errorf("shipping's holder: Refresh = %v, want its lock still held", err)
	}
	if l, err := other.c.TryAcquire(ctx, "shipping.orders"); !errors.Is(err, client.ErrLocked) {
		if l != nil {
			l.Release(ctx)
		}
		t.Errorf("a second shipping client: TryAcquire = %v, %v; want ErrLocked (one holder at a time)", l, err)
	}
}

// TestReplySubjectCannotAimTheService: NATS checks a publisher's rights on
// a message's subject, never on its reply subject, and the service answers
// on whatever reply subject a request carries, with its own rights. So
// tenant billing, publishing only requests on its own keys, sends them
// with a reply subject it may not publish on: shipping's lease in the
// bucket ($KV.lockservice.l.shipping.orders: the answer replaces the live
// lease record, the store reads it as no lease, and a second holder is
// granted), shipping's events (forged released/expired/forced events),
// the admin force of shipping's key (an error answer has an empty body,
// which is a valid force request; the embedded service's generated user
// may publish there), shipping's cancel, the stream's purge. What must
// hold: the service never publishes an answer on its own subjects
// (<prefix>.>) or on $-subjects (JetStream, KV, system, discovery), and
// shipping's lock is untouched.
func TestReplySubjectCannotAimTheService(t *testing.T) {
	for _, tc := range []string{"generated service user", "template service user"} {
		t.Run(tc, func(t *testing.T) {
			svcErrs := newErrLog()
			var opts []embedded.Option
			if tc == "template service user" {
				opts = templateServiceUser(svcErrs)
			}
			srv := securedServer(t, opts...)
			ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
			defer cancel()
			billing := connectAs(t, srv, "billing")
			shipping := connectAs(t, srv, "shipping")
			shipping2 := connectAs(t, srv, "shipping")
			held, err := shipping.c.Acquire(ctx, "shipping.orders", client.WithTTL(time.Minute))
			if err != nil {
				t.Fatalf("shipping Acquire = %v", err)
			}
			aimAnswers(t, srv, billing, []replyAttack{
				{"lock.get.billing.x", ""},                    // an answer with a body
				{"lock.get.billing.x", `{"bad":1}`},           // an error answer: empty body
				{"lock.wait.billing.x", ""},                   // another endpoint
				{"lock.refresh.billing.x", `{"lock_id":"x"}`}, // an error before any store call
			}, []string{
				"$KV.lockservice.l.shipping.orders", "$KV.lockservice.o.shipping.orders",
				"lock.released.shipping.orders", "lock.expired.shipping.orders", "lock.forced.shipping.orders",
				"lock.admin.force.shipping.orders", "lock.cancel.shipping.orders",
				"$JS.API.STREAM.PURGE.KV_lockservice",
			})
			shippingStillHolds(ctx, t, held, shipping2)
			if errs := svcErrs.all(); len(errs) > 0 {
				t.Errorf("the service's connection got errors (it tried to publish where billing aimed): %v", errs)
			}
		})
	}
}

// TestDiscoveryReplySubjectCannotAimTheService: the same attack through
// micro discovery, which the template grants tenants: billing sends
// $SRV.PING, $SRV.INFO or $SRV.STATS with shipping's lease in the bucket
// as the reply subject, and the micro library answers there with the
// service's rights (the ping's JSON replaces the live lease record: a
// second holder). What must hold: discovery answers never land on the
// bucket, the JetStream API or the service's own subjects, and shipping's
// lock is untouched.
func TestDiscoveryReplySubjectCannotAimTheService(t *testing.T) {
	for _, tc := range []string{"generated service user", "template service user"} {
		t.Run(tc, func(t *testing.T) {
			var opts []embedded.Option
			if tc == "template service user" {
				opts = templateServiceUser(newErrLog())
			}
			srv := securedServer(t, opts...)
			ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
			defer cancel()
			billing := connectAs(t, srv, "billing")
			shipping := connectAs(t, srv, "shipping")
			shipping2 := connectAs(t, srv, "shipping")
			held, err := shipping.c.Acquire(ctx, "shipping.orders", client.WithTTL(time.Minute))
			if err != nil {
				t.Fatalf("shipping Acquire = %v", err)
			}
			aimAnswers(t, srv, billing, []replyAttack{
				{"$SRV.PING", ""}, {"$SRV.INFO.lockservice", ""}, {"$SRV.STATS.lockservice", ""},
			}, []string{
				"$KV.lockservice.l.shipping.orders", "$KV.lockservice.o.shipping.orders",
				"lock.released.shipping.orders", "lock.expired.shipping.orders", "lock.forced.shipping.orders",
			})
			shippingStillHolds(ctx, t, held, shipping2)
		})
	}
}

// TestReplySubjectCannotAimTheServiceAtOtherApplications: the embedded
// service's generated user may publish anywhere in the account, so with
// the reply subject tenant billing makes the service publish its answers on
// any other application's subject that billing itself may not publish on
// (here audit.approved). The template's own service user may publish only
// into inboxes, its events and its bucket. What must hold: as with the
// template's user, an answer reaches only an inbox (_INBOX.>).
func TestReplySubjectCannotAimTheServiceAtOtherApplications(t *testing.T) {
	for _, tc := range []string{"generated service user", "template service user"} {
		t.Run(tc, func(t *testing.T) {
			var opts []embedded.Option
			if tc == "template service user" {
				opts = templateServiceUser(newErrLog())
			}
			srv := securedServer(t, opts...)
			billing := connectAs(t, srv, "billing")
			aimAnswers(t, srv, billing, []replyAttack{
				{"lock.get.billing.x", ""}, {"lock.get.billing.x", `{"bad":1}`}, {"$SRV.PING", ""},
			}, []string{"audit.approved", "orders.cancel.42"})
		})
	}
}
