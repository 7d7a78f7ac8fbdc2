package main

import (
	"fmt"
	"net/url"
	"time"

	"github.com/nats-io/nats.go"
)

// connectNATS connects to the NATS at natsURL as name, with the credentials
// file creds when it is not empty, and reconnects forever after a
// disconnect. extra options come last. Its error names the URL, password
// redacted.
func connectNATS(natsURL, creds, name string, extra ...nats.Option) (*nats.Conn, error) {
	opts := []nats.Option{nats.Name(name), nats.MaxReconnects(-1), nats.ReconnectWait(250 * time.Millisecond)}
	if creds != "" {
		opts = append(opts, nats.UserCredentials(creds))
	}
	nc, err := nats.Connect(natsURL, append(opts, extra...)...)
	if err != nil {
		return nil, fmt.Errorf("connect to NATS at %s: %w", redactURL(natsURL), err)
	}
	return nc, nil
}

func redactURL(s string) string {
	u, err := url.Parse(s)
	if err != nil || u.User == nil {
		return s
	}
	if _, ok := u.User.Password(); ok {
		u.User = url.UserPassword(u.User.Username(), "xxxxx")
	}
	return u.String()
}
