package tests

import (
	"bytes"
	"context"
	"errors"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	natsjs "github.com/nats-io/nats.go/jetstream"

	jsstore "github.com/lockservice/lockservice/store/jetstream"
)

// TestClusterStart: on a fresh 3-node cluster, three instances that start
// at the same moment with replicas 3 all come up (concurrent stream
// creations used to leave all but one waiting until their deadline), and a
// later instance asking for 1 replica refuses to start, saying what to do,
// instead of turning the R3 bucket into R1 (each instance used to push its
// own settings over the stream) — both as a Store and as a lockservice
// process with the default --replicas.
func TestClusterStart(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a 3-node nats-server cluster")
	}
	needBinaries(t)
	_, addrs := startNATS(t, 3)
	const bucket = "clusterstart"

	// One connection per node, so the creations reach the meta leader
	// through different servers.
	conns := make([]*nats.Conn, len(addrs))
	for i, a := range addrs {
		nc, err := nats.Connect("nats://" + a)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(nc.Close)
		conns[i] = nc
	}
	ctx, cancel := context.WithTimeout(t.Context(), 25*time.Second)
	defer cancel()
	start := make(chan struct{})
	var wg sync.WaitGroup
	errs := make([]error, len(conns))
	took := make([]time.Duration, len(conns))
	for i, nc := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			t0 := time.Now()
			s, err := jsstore.New(ctx, nc, jsstore.Config{Bucket: bucket, Replicas: 3})
			took[i], errs[i] = time.Since(t0), err
			if err == nil {
				s.Close()
			}
		}()
	}
	close(start)
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("instance %d (via %s): New with replicas 3 = %v after %v, want success", i, addrs[i], err, took[i].Round(time.Millisecond))
		}
	}
	t.Logf("three concurrent New on a fresh cluster took %v", took)

	js, err := natsjs.New(conns[0])
	if err != nil {
		t.Fatal(err)
	}
	replicas := func() int {
		t.Helper()
		st, err := js.Stream(t.Context(), "KV_"+bucket)
		if err != nil {
			t.Fatalf("stream KV_%s: %v", bucket, err)
		}
		return st.CachedInfo().Config.Replicas
	}
	if n := replicas(); n != 3 {
		t.Fatalf("bucket has %d replicas after the concurrent start, want 3", n)
	}

	// An instance asking for R1 (the default) refuses and leaves R3 alone.
	_, err = jsstore.New(t.Context(), conns[1], jsstore.Config{Bucket: bucket, Replicas: 1})
	if !errors.Is(err, jsstore.ErrBucketMismatch) {
		t.Errorf("New with replicas 1 on the R3 bucket = %v, want ErrBucketMismatch", err)
	} else {
		for _, want := range []string{"has 3 replicas", "asks for 1", "--replicas 3"} {
			if !strings.Contains(err.Error(), want) {
				t.Errorf("error %q does not say %q", err, want)
			}
		}
	}
	if n := replicas(); n != 3 {
		t.Fatalf("bucket has %d replicas after an R1 instance started, want 3 (never downgraded)", n)
	}

	// The same through the command, started without --replicas.
	cmd := exec.Command(bins.lockservice, "--nats-url", natsURL(addrs), "--bucket", bucket)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	select {
	case err = <-exited:
	case <-time.After(30 * time.Second):
		cmd.Process.Kill()
		<-exited
		t.Fatalf("lockservice without --replicas on the R3 bucket still running after 30s, want it to exit; output:\n%s", out.String())
	}
	if err == nil || !strings.Contains(out.String(), "--replicas 3") {
		t.Errorf("lockservice without --replicas on the R3 bucket: %v, output:\n%s\nwant a non-zero exit saying --replicas 3", err, out.String())
	}
	t.Logf("lockservice without --replicas: %v: %s", err, strings.TrimSpace(out.String()))
	if n := replicas(); n != 3 {
		t.Fatalf("bucket has %d replicas after an R1 lockservice started, want 3", n)
	}
}
