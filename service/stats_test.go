package service_test

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"

	"github.com/lockservice/lockservice/client"
	"github.com/lockservice/lockservice/internal/storegate"
	"github.com/lockservice/lockservice/internal/testsrv"
	"github.com/lockservice/lockservice/service"
)

// endpointData reads the stats data of op's endpoint from $SRV.STATS.
func endpointData(t *testing.T, nc *nats.Conn, svc *service.Service, op string) map[string]any {
	t.Helper()
	m, err := nc.Request("$SRV.STATS.lockservice."+svc.ID(), nil, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	var st micro.Stats
	if err := json.Unmarshal(m.Data, &st); err != nil {
		t.Fatal(err)
	}
	for _, e := range st.Endpoints {
		if e.Name == op {
			var d map[string]any
			if err := json.Unmarshal(e.Data, &d); err != nil {
				t.Fatal(err)
			}
			return d
		}
	}
	t.Fatalf("no endpoint %s in %s", op, m.Data)
	return nil
}

// TestStatsCountEveryErrorAnswer: every error answer is counted in its
// endpoint's data (decode errors answered by a worker, overload 503s sent
// by the handler), and processing time runs from receipt to answer.
func TestStatsCountEveryErrorAnswer(t *testing.T) {
	srv := testsrv.NATS(t, "")
	st, gate := storegate.New(t, jetstreamBackend().newStore(t, srv.ClientURL()))
	svc := startInstance(t, srv.ClientURL(), st, service.Config{MaxInflight: 1})
	nc := testsrv.Connect(t, srv)
	key := "stats." + client.NewLockID()

	for i := 0; i < 8; i++ {
		if _, code, _ := raw(t, nc, "lock.acquire."+key, `{"ttl_ms":"x"}`); code != 400 {
			t.Fatalf("malformed acquire answered %d, want 400", code)
		}
	}
	// Hold the one in-flight slot with a slow get; the next requests are
	// refused as overloaded.
	slow := gate.Hold(storegate.Get, key)
	getReply := nats.NewInbox()
	sub, _ := nc.SubscribeSync(getReply)
	nc.PublishRequest("lock.get."+key, getReply, nil)
	<-slow.Entered()
	for i := 0; i < 3; i++ {
		if _, code, _ := raw(t, nc, "lock.get."+key, ``); code != 503 {
			t.Fatalf("get while overloaded answered %d, want 503", code)
		}
	}
	time.Sleep(300 * time.Millisecond)
	slow.Open()
	if _, err := sub.NextMsg(5 * time.Second); err != nil {
		t.Fatal(err)
	}

	acq := endpointData(t, nc, svc, "acquire")
	if acq["num_errors"] != 8.0 || acq["errors"].(map[string]any)["400"] != 8.0 {
		t.Fatalf("acquire data %v, want num_errors 8 and errors.400 8", acq)
	}
	get := endpointData(t, nc, svc, "get")
	if get["errors"].(map[string]any)["503"] != 3.0 || get["answered"] != 4.0 {
		t.Fatalf("get data %v, want errors.503 3 and answered 4", get)
	}
	if d := time.Duration(get["processing_time"].(float64)); d < 300*time.Millisecond {
		t.Fatalf("get processing time %v, want at least the 300 ms the slow get took", d)
	}
}
