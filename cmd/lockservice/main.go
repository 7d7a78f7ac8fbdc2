// Command lockservice runs the lock service.
//
// With no arguments it starts an embedded nats-server with JetStream on
// 127.0.0.1:4222 (data in ./lockservice-data) and serves locks from it:
//
//	lockservice
//	nats req lock.acquire.demo '{"ttl_ms":5000}'
//
// With --nats-url it joins an existing NATS instead; with --store redis it
// keeps lock state in Redis. Run lockservice -h for every flag.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "lockservice:", err)
		}
		os.Exit(2)
	}
}

// run runs the command args name: serve (also without a name, when args
// is empty or starts with a flag).
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) > 0 && args[0] == "serve" {
		args = args[1:]
	}
	return serve(ctx, args, stdout, stderr)
}
