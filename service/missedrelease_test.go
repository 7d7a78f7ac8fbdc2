package service_test

import (
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/lockservice/lockservice/internal/testsrv"
	"github.com/lockservice/lockservice/service"
	jsstore "github.com/lockservice/lockservice/store/jetstream"
)

// TestParkedWaitWokenAfterReleaseMissedInDisconnect: a wait parked
// on instance B must be answered once the key is released, even when B's
// connection to NATS was down at the moment of the release (so the
// lock.released event, core NATS, never reached it). B's store watcher is
// rebuilt on reconnect and sees the release marker (it reports it as a
// store.Released event), but the service ignores every store event but
// Expired (onStoreEvent), and no other path re-checks parked keys: the wait
// stays parked until its wait_ms, although the key has been free since the
// release.
func TestParkedWaitWokenAfterReleaseMissedInDisconnect(t *testing.T) {
	srv := testsrv.NATS(t, "")
	url := srv.ClientURL()
	px := testsrv.NewProxy(t, srv.Addr().String())

	// Instance B, on a connection through the proxy.
	ncB, err := nats.Connect("nats://"+px.Addr(), nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ncB.Close)
	stB, err := jsstore.New(t.Context(), ncB, jsstore.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stB.Close() })
	svcB, err := service.New(ncB, stB, service.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { svcB.Stop() })

	cl := testsrv.ConnectURL(t, url)
	key := "missed.release"
	got, code, msg := raw(t, cl, "lock.acquire."+key, `{"ttl_ms":60000}`)
	if code != 0 || got["acquired"] != true {
		t.Fatalf("acquire = %v %d %s", got, code, msg)
	}
	id := got["lock_id"].(string)

	// A wait parked on B (the only instance so far).
	type result struct {
		m   *nats.Msg
		err error
		at  time.Time
	}
	waitc := make(chan result, 1)
	go func() {
		m, err := cl.Request("lock.wait."+key, []byte(`{"wait_ms":20000}`), 30*time.Second)
		waitc <- result{m, err, time.Now()}
	}()
	deadline := time.Now().Add(5 * time.Second)
	for svcB.Stats().ParkedWaiters != 1 {
		if time.Now().After(deadline) {
			t.Fatalf("wait not parked on B: stats %v", svcB.Stats())
		}
		time.Sleep(10 * time.Millisecond)
	}

	// Instance A, directly connected.
	ncA := testsrv.ConnectURL(t, url)
	stA, err := jsstore.New(t.Context(), ncA, jsstore.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { stA.Close() })
	startInstance(t, url, stA, service.Config{})

	// B loses NATS for a moment; the holder releases meanwhile (served by A).
	px.Cut()
	time.Sleep(300 * time.Millisecond)
	got, code, msg = raw(t, cl, "lock.release."+key, fmt.Sprintf(`{"lock_id":%q}`, id))
	if code != 0 || got["released"] != true {
		t.Fatalf("release = %v %d %s", got, code, msg)
	}
	released := time.Now()
	time.Sleep(300 * time.Millisecond)
	px.Heal()

	select {
	case r := <-waitc:
		if r.err != nil {
			t.Fatalf("wait: %v", r.err)
		}
		var body map[string]any
		_ = json.Unmarshal(r.m.Data, &body)
		t.Logf("wait answered %v after the release: %s %v", r.at.Sub(released).Round(time.Millisecond), r.m.Header, body)
		if r.m.Header.Get("Nats-Service-Error-Code") != "" {
			t.Fatalf("wait answered with an error %v after the key was released", r.m.Header)
		}
	case <-time.After(5 * time.Second):
		info, _, _ := raw(t, cl, "lock.get."+key, ``)
		t.Fatalf("wait parked on B still unanswered 5 s after the release (B reconnected 4.7 s ago); get says %v; B stats %v", info, svcB.Stats())
	}
}

// TestParkedWaitWokenAfterReleaseWithLostAck: the store applies a
// release but its ack arrives after the service's store timeout (a slow
// link to NATS, a busy server): the client gets 503 (outcome unknown) and
// the service publishes no lock.released event and wakes no local waiter.
// The key is free, and the instance's own store watcher sees the release
// marker (a store.Released event), but the service ignores it: a wait
// parked on this very instance stays parked until its wait_ms.
func TestParkedWaitWokenAfterReleaseWithLostAck(t *testing.T) {
	srv := testsrv.NATS(t, "")
	url := srv.ClientURL()
	px := testsrv.NewProxy(t, srv.Addr().String())
	ncStore, err := nats.Connect("nats://"+px.Addr(), nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ncStore.Close)
	st, err := jsstore.New(t.Context(), ncStore, jsstore.Config{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { st.Close() })
	startInstance(t, url, st, service.Config{StoreTimeout: 500 * time.Millisecond})

	cl := testsrv.ConnectURL(t, url)
	key := "lost.ack"
	got, code, msg := raw(t, cl, "lock.acquire."+key, `{"ttl_ms":60000}`)
	if code != 0 || got["acquired"] != true {
		t.Fatalf("acquire = %v %d %s", got, code, msg)
	}
	id := got["lock_id"].(string)
	waitc := make(chan *nats.Msg, 1)
	go func() {
		m, _ := cl.Request("lock.wait."+key, []byte(`{"wait_ms":20000}`), 30*time.Second)
		waitc <- m
	}()
	time.Sleep(300 * time.Millisecond) // parked

	px.Stall()
	got, code, msg = raw(t, cl, "lock.release."+key, fmt.Sprintf(`{"lock_id":%q}`, id))
	t.Logf("release answered %v %d %s", got, code, msg)
	time.Sleep(200 * time.Millisecond)
	px.Resume()
	released := time.Now()

	info, _, _ := raw(t, cl, "lock.get."+key, ``)
	if info["locked"] != false {
		t.Fatalf("get after the release = %v: the release was not applied, test setup broken", info)
	}
	select {
	case m := <-waitc:
		t.Logf("wait answered %v after the release: %v %s", time.Since(released).Round(time.Millisecond), m.Header, m.Data)
	case <-time.After(5 * time.Second):
		t.Fatalf("the key is free (get: %v) but the wait parked on the instance that released it is still unanswered 5 s later", info)
	}
}
