package tests

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/lockservice/lockservice/client"
	"github.com/lockservice/lockservice/embedded"
)

// The permission template of nats.conf's authorization example, tested:
// the embedded service starts with it, and a tenant confined by it can do
// everything with its own keys and nothing to another tenant's keys,
// replies, the bucket or the events.

// authExample returns nats.conf's authorization example, uncommented.
func authExample(t testing.TB) string {
	t.Helper()
	b, err := os.ReadFile("../nats.conf")
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(b), "# ---- authorization: begin ----\n")
	block, _, ok2 := strings.Cut(rest, "# ---- authorization: end ----")
	if !ok || !ok2 {
		t.Fatal("nats.conf has no authorization example between its markers")
	}
	var out strings.Builder
	for line := range strings.Lines(block) {
		l, found := strings.CutPrefix(line, "# ")
		if !found {
			t.Fatalf("nats.conf: authorization example line %q does not start with \"# \"", line)
		}
		out.WriteString(l)
	}
	return out.String()
}

// TestHardeningGuideShowsTheTestedTemplate: docs/HARDENING.md shows the
// template these tests run, word for word.
func TestHardeningGuideShowsTheTestedTemplate(t *testing.T) {
	doc, err := os.ReadFile("../docs/HARDENING.md")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(doc), "```\n"+authExample(t)+"```\n") {
		t.Error("docs/HARDENING.md does not show nats.conf's authorization example (uncommented) in a code block")
	}
}

// securedServer starts the embedded server with nats.conf's settings and
// its authorization example, listening on a random loopback port.
func securedServer(t *testing.T, opts ...embedded.Option) *embedded.Server {
	t.Helper()
	conf := filepath.Join(t.TempDir(), "nats.conf")
	text := "listen: 127.0.0.1:-1\njetstream { max_file_store: 64MB }\n" + authExample(t)
	if err := os.WriteFile(conf, []byte(text), 0o600); err != nil {
		t.Fatal(err)
	}
	srv, err := embedded.Start(append([]embedded.Option{embedded.WithConfigFile(conf), embedded.WithDataDir(t.TempDir())}, opts...)...)
	if err != nil {
		t.Fatalf("embedded.Start with nats.conf's authorization example = %v", err)
	}
	t.Cleanup(func() { srv.Close() })
	return srv
}

// errLog collects a connection's asynchronous errors (permission
// violations).
type errLog struct {
	mu   sync.Mutex
	errs []error
	more chan struct{} // signalled on each new error
}

func newErrLog() *errLog { return &errLog{more: make(chan struct{}, 1)} }

func (l *errLog) handler(_ *nats.Conn, _ *nats.Subscription, err error) {
	l.mu.Lock()
	l.errs = append(l.errs, err)
	l.mu.Unlock()
	select {
	case l.more <- struct{}{}:
	default:
	}
}

func (l *errLog) all() []error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]error(nil), l.errs...)
}

// await waits for an error containing want, failing the test after 5 s.
func (l *errLog) await(t *testing.T, want string) {
	t.Helper()
	deadline := time.After(5 * time.Second)
	for {
		for _, err := range l.all() {
			if strings.Contains(err.Error(), want) {
				return
			}
		}
		select {
		case <-l.more:
		case <-deadline:
			t.Errorf("no permissions violation %q; errors: %v", want, l.all())
			return
		}
	}
}

// tenant is a connection as one of the template's users.
type tenant struct {
	nc   *nats.Conn
	errs *errLog
	c    *client.Client
}

func connectAs(t *testing.T, srv *embedded.Server, user string) *tenant {
	t.Helper()
	errs := newErrLog()
	nc, err := nats.Connect(srv.URL, nats.UserInfo(user, "change-me-"+user),
		nats.CustomInboxPrefix("_INBOX."+user), nats.ErrorHandler(errs.handler))
	if err != nil {
		t.Fatalf("connect as %s: %v", user, err)
	}
	t.Cleanup(nc.Close)
	c, err := client.New(nc, client.WithOwner(user))
	if err != nil {
		t.Fatal(err)
	}
	return &tenant{nc: nc, errs: errs, c: c}
}

// refusedPublish checks that publishing on subject is a permissions
// violation.
func (tn *tenant) refusedPublish(t *testing.T, subject string, data string) {
	t.Helper()
	if err := tn.nc.Publish(subject, []byte(data)); err != nil {
		t.Fatal(err)
	}
	if err := tn.nc.Flush(); err != nil {
		t.Fatal(err)
	}
	tn.errs.await(t, `Permissions Violation for Publish to "`+subject+`"`)
}

// refusedSubscribe checks that subscribing to subject is a permissions
// violation and delivers nothing.
func (tn *tenant) refusedSubscribe(t *testing.T, subject string) *nats.Subscription {
	t.Helper()
	sub, err := tn.nc.SubscribeSync(subject)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sub.Unsubscribe() })
	if err := tn.nc.Flush(); err != nil {
		t.Fatal(err)
	}
	tn.errs.await(t, `Permissions Violation for Subscription to "`+subject+`"`)
	return sub
}

// TestPermissionTemplate runs nats.conf's authorization example with the
// embedded service logging in as its generated nkey user, and as the
// example's own service user (the permissions an instance joining with
// --nats-url gets). As tenant billing: its own keys work end to end
// (acquire, a blocking acquire handed over by a release, wait, events,
// discovery on $SRV); shipping's keys, shipping's replies, the bucket, the
// JetStream API, the events and the admin endpoints are refused.
func TestPermissionTemplate(t *testing.T) {
	svcErrs := newErrLog()
	for _, tc := range []struct {
		name string
		opts []embedded.Option
	}{
		{"generated service user", nil},
		{"template service user", templateServiceUser(svcErrs)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := securedServer(t, tc.opts...)
			permissionTemplate(t, srv)
			if errs := svcErrs.all(); len(errs) > 0 {
				t.Errorf("the service's connection got errors: %v", errs)
			}
		})
	}
}

func permissionTemplate(t *testing.T, srv *embedded.Server) {
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	if nc, err := nats.Connect(srv.URL); err == nil {
		nc.Close()
		t.Fatal("anonymous connect = nil, want an authorization violation")
	} else if !errors.Is(err, nats.ErrAuthorization) {
		t.Fatalf("anonymous connect = %v, want an authorization violation", err)
	}

	billing := connectAs(t, srv, "billing")
	billing2 := connectAs(t, srv, "billing")
	shipping := connectAs(t, srv, "shipping")
	ops := connectAs(t, srv, "ops")

	// Shipping holds a key that billing will try to reach.
	held, err := shipping.c.Acquire(ctx, "shipping.orders", client.WithTTL(time.Minute))
	if err != nil {
		t.Fatalf("shipping Acquire = %v", err)
	}

	// Discovery, as nats micro ls / info do it.
	for _, subject := range []string{"$SRV.PING", "$SRV.PING.lockservice", "$SRV.INFO.lockservice", "$SRV.STATS.lockservice"} {
		m, err := billing.nc.Request(subject, nil, 5*time.Second)
		if err != nil {
			t.Fatalf("billing request %s = %v", subject, err)
		}
		var info struct {
			Name     string            `json:"name"`
			Metadata map[string]string `json:"metadata"`
		}
		if err := json.Unmarshal(m.Data, &info); err != nil || info.Name != "lockservice" || info.Metadata["prefix"] != "lock" {
			t.Errorf("%s = %s, %v; want the lockservice with prefix lock", subject, m.Data, err)
		}
	}

	// Own keys, end to end, with events.
	events, err := billing.nc.SubscribeSync("lock.released.billing.>")
	if err != nil {
		t.Fatal(err)
	}
	first, err := billing.c.Acquire(ctx, "billing.invoices", client.WithTTL(time.Minute))
	if err != nil {
		t.Fatalf("billing Acquire = %v", err)
	}
	granted := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		l, err := billing2.c.Acquire(ctx, "billing.invoices", client.WithTTL(time.Minute))
		if err == nil {
			if l.Token() <= first.Token() {
				err = errors.New("handed over with a token not above the first holder's")
			} else {
				err = l.ReleaseWith(ctx, []byte(`{"paid":true}`))
			}
		}
		granted <- err
	}()
	waitParked(t, srv, 1)
	if err := first.Release(ctx); err != nil {
		t.Fatalf("billing Release = %v", err)
	}
	if err := <-granted; err != nil {
		t.Fatalf("billing's parked Acquire, handed over by the release = %v", err)
	}
	value, err := billing.c.Wait(ctx, "billing.invoices")
	if err != nil || string(value) != `{"paid":true}` {
		t.Errorf("billing Wait = %s, %v; want the state the holder wrote", value, err)
	}
	for i := range 2 {
		m, err := events.NextMsg(5 * time.Second)
		if err != nil || m.Subject != "lock.released.billing.invoices" {
			t.Fatalf("billing's released event %d = %v, %v", i, m, err)
		}
	}

	// Another tenant's keys and requests.
	for _, op := range []string{"acquire", "release", "refresh", "write", "delete", "get", "wait", "cancel", "alive"} {
		billing.refusedPublish(t, "lock."+op+".shipping.orders", `{"lock_id":"AAAAAAAAAAAAAAAAAAAAAA"}`)
	}
	// Another tenant's replies (lock ids, states), and everything at once.
	for _, subject := range []string{"_INBOX.shipping.>", "_INBOX.>", "lock.>", ">", "lock.released.shipping.>", "lock.acquire.>"} {
		billing.refusedSubscribe(t, subject)
	}
	// The bucket and the JetStream API: no forged, purged or deleted
	// leases, no second consumer reading them.
	for _, subject := range []string{
		"$KV.lockservice.l.shipping.orders", "$KV.lockservice.o.shipping.orders",
		"$JS.API.STREAM.DELETE.KV_lockservice", "$JS.API.STREAM.PURGE.KV_lockservice",
		"$JS.API.STREAM.MSG.DELETE.KV_lockservice", "$JS.API.STREAM.MSG.GET.KV_lockservice",
		"$JS.API.CONSUMER.CREATE.KV_lockservice.x", "$JS.API.INFO",
	} {
		billing.refusedPublish(t, subject, `{}`)
	}
	billing.refusedSubscribe(t, "$KV.lockservice.>")
	// Events are the service's, even for billing's own keys; admin is the
	// operators'.
	for _, subject := range []string{"lock.released.billing.invoices", "lock.expired.billing.invoices", "lock.forced.billing.invoices",
		"lock.admin.list", "lock.admin.force.billing.invoices", "lock.admin.force.shipping.orders"} {
		billing.refusedPublish(t, subject, `{}`)
	}

	// Shipping's lock came through all of it.
	if err := held.Refresh(ctx, time.Minute); err != nil {
		t.Errorf("shipping's lock after billing's attempts: Refresh = %v, want it still held", err)
	}
	info, err := shipping.c.Get(ctx, "shipping.orders")
	if err != nil || !info.Locked || info.Token != held.Token() {
		t.Errorf("shipping Get = %+v, %v; want locked with token %d", info, err, held.Token())
	}

	// Operators list and force; tenants cannot (above).
	m, err := ops.nc.Request("lock.admin.list", []byte(`{"prefix":"shipping."}`), 5*time.Second)
	if err != nil || !strings.Contains(string(m.Data), `"key":"shipping.orders"`) {
		t.Errorf("ops admin.list = %v, %v; want shipping.orders listed", m, err)
	}
	m, err = ops.nc.Request("lock.admin.force.shipping.orders", []byte(`{"reason":"test"}`), 5*time.Second)
	if err != nil || !strings.Contains(string(m.Data), `"forced":true`) {
		t.Errorf("ops admin.force = %v, %v; want forced", m, err)
	}
	if err := held.Refresh(ctx, time.Minute); !errors.Is(err, client.ErrNotHeld) {
		t.Errorf("shipping Refresh after the force = %v, want ErrNotHeld", err)
	}
	ops.refusedPublish(t, "lock.acquire.billing.invoices", `{}`)
}

// waitParked waits until n requests are parked on srv's service.
func waitParked(t *testing.T, srv *embedded.Server, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for srv.Service().Stats().ParkedWaiters != n {
		if time.Now().After(deadline) {
			t.Fatalf("parked requests = %d, want %d", srv.Service().Stats().ParkedWaiters, n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
