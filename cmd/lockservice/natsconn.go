package main

import (
	"errors"
	"flag"
	"fmt"
	"net/url"
	"os"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/lockservice/lockservice/service/api"
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

// clientFlags are the flags of the commands that talk to a running service
// (lock, get, ls): where its NATS is, and its subject prefix.
type clientFlags struct {
	natsURL, natsCreds, prefix string
	timeout                    time.Duration
}

func (f *clientFlags) register(fs *flag.FlagSet) {
	natsURL := os.Getenv("NATS_URL")
	if natsURL == "" {
		natsURL = nats.DefaultURL
	}
	fs.StringVar(&f.natsURL, "nats-url", natsURL, "the NATS the service uses; $NATS_URL, when set, is the default")
	fs.StringVar(&f.natsCreds, "nats-creds", "", "credentials file for --nats-url")
	fs.StringVar(&f.prefix, "prefix", api.DefaultPrefix, "the service's subject prefix (its --prefix)")
	fs.DurationVar(&f.timeout, "timeout", 5*time.Second, "how long to wait for each answer of the service")
}

// validate checks the flags register set.
func (f *clientFlags) validate() error {
	if err := api.ValidateKey(f.prefix); err != nil {
		return fmt.Errorf("--prefix: %w", err)
	}
	if f.timeout <= 0 {
		return fmt.Errorf("--timeout must be positive, got %v", f.timeout)
	}
	return nil
}

// connect connects to the service's NATS as name; its error (exit 1) says
// how to get one.
func (f *clientFlags) connect(name string) (*nats.Conn, error) {
	nc, err := connectNATS(f.natsURL, f.natsCreds, name)
	if err != nil {
		return nil, failure(fmt.Errorf("%w (start a service with its own NATS: lockservice; or point --nats-url or NATS_URL at the NATS your service uses)", err))
	}
	return nc, nil
}

// errNoService: no service instance answered a request.
var errNoService = errors.New("no lock service instance answers")

// noService is the error for a request on subject that no service instance
// answered: it says what to do.
func (f *clientFlags) noService(subject string) error {
	return fmt.Errorf("%w %s on %s: start one (lockservice, or lockservice --nats-url %s to use this NATS), or give the --prefix it serves", errNoService, subject, redactURL(f.natsURL), redactURL(f.natsURL))
}
