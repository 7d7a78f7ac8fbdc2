package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"text/tabwriter"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"

	"github.com/lockservice/lockservice/service/api"
)

const getUsage = `Usage: lockservice get [flags] KEY

Prints the service's answer to get KEY, in JSON: whether KEY is locked, its
owner label, fencing token, lease (ttl_ms, expires_at) and state object.

Exit status: 0; 1 when the service answered an error (its code and message
are printed) or could not be reached; 2 for bad flags or arguments.

Flags:
`

// getCommand is lockservice get: it prints the service's JSON answer to get.
func getCommand(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	f := &clientFlags{}
	fs := flag.NewFlagSet("lockservice get", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, getUsage)
		fs.PrintDefaults()
	}
	f.register(fs)
	if err := parseWithEnv(fs, args); err != nil {
		return err
	}
	if fs.NArg() != 1 {
		return fmt.Errorf("get: want one KEY, got %d arguments: lockservice get [flags] KEY", fs.NArg())
	}
	key := fs.Arg(0)
	if err := api.ValidateKey(key); err != nil {
		return fmt.Errorf("get: KEY: %w", err)
	}
	if err := f.validate(); err != nil {
		return err
	}
	nc, err := f.connect("lockservice get")
	if err != nil {
		return err
	}
	defer nc.Close()
	body, err := f.request(ctx, nc, api.Subject(f.prefix, api.OpGet, key), []byte("{}"))
	if err != nil {
		return failure(fmt.Errorf("get %q: %w", key, err))
	}
	_, err = fmt.Fprintf(stdout, "%s\n", body)
	return err
}

// request sends data, a JSON request, to subject and returns the answer's
// body. An error answer, no answer within the timeout and no instance
// listening are errors that say so.
func (f *clientFlags) request(ctx context.Context, nc *nats.Conn, subject string, data []byte) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, f.timeout)
	defer cancel()
	m, err := nc.RequestWithContext(ctx, subject, data)
	switch {
	case errors.Is(err, nats.ErrNoResponders):
		return nil, f.noService(subject)
	case errors.Is(err, context.DeadlineExceeded) && f.refusal.get() != nil:
		return nil, fmt.Errorf("NATS refused the request (the user's permissions do not cover %s): %w", subject, f.refusal.get())
	case errors.Is(err, context.DeadlineExceeded):
		return nil, fmt.Errorf("no answer on %s within --timeout %v", subject, f.timeout)
	case err != nil:
		return nil, fmt.Errorf("%s: %w", subject, err)
	}
	if code := m.Header.Get(micro.ErrorCodeHeader); code != "" {
		return nil, fmt.Errorf("the service answered %s %s", code, m.Header.Get(micro.ErrorHeader))
	}
	return m.Data, nil
}

const lsUsage = `Usage: lockservice ls [flags]

Lists the locks held, one line each (key, fencing token, owner label, end
of the lease by the service's clock), or with --json a JSON array of the
service's entries. It pages through the service's admin endpoint
<prefix>.admin.list.

Exit status: 0; 1 when the service answered an error or could not be
reached; 2 for bad flags or arguments.

Flags:
`

// listSubject is the service's endpoint that lists held locks, page by page.
func listSubject(prefix string) string { return prefix + "." + api.OpAdminList }

// listPage is how many locks ls asks for per request.
const listPage = 1000

// listRequest and listAnswer are the payloads of <prefix>.admin.list
// (api.ListRequest; the answer keeps each entry raw for --json). The
// answer's cursor is empty on the last page.
type listRequest = api.ListRequest

type listAnswer struct {
	Locks  []json.RawMessage `json:"locks"`
	Cursor string            `json:"cursor"`
}

// listedLock is the part of a listed lock that ls prints as text.
type listedLock struct {
	Key       string `json:"key"`
	Owner     string `json:"owner"`
	Token     uint64 `json:"token"`
	ExpiresAt string `json:"expires_at"`
}

// lsCommand is lockservice ls: it lists the locks held.
func lsCommand(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	f := &clientFlags{}
	fs := flag.NewFlagSet("lockservice ls", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprint(stderr, lsUsage)
		fs.PrintDefaults()
	}
	f.register(fs)
	filter := fs.String("prefix-filter", "", "list only keys that start with this")
	asJSON := fs.Bool("json", false, "print a JSON array of the service's entries")
	if err := parseWithEnv(fs, args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("ls: unexpected argument %q (flags start with -)", fs.Arg(0))
	}
	if err := f.validate(); err != nil {
		return err
	}
	nc, err := f.connect("lockservice ls")
	if err != nil {
		return err
	}
	defer nc.Close()

	locks := []json.RawMessage{}
	req := listRequest{Prefix: *filter, Limit: listPage}
	for {
		data, _ := json.Marshal(req)
		body, err := f.request(ctx, nc, listSubject(f.prefix), data)
		if errors.Is(err, errNoService) {
			return failure(fmt.Errorf("ls: %w %s on %s: the service there is a version without it, or none runs there (start one: lockservice), or it serves another --prefix", errNoService, listSubject(f.prefix), redactNATSURL(f.natsURL)))
		}
		if err != nil {
			return failure(fmt.Errorf("ls: %w", err))
		}
		var page listAnswer
		if err := json.Unmarshal(body, &page); err != nil {
			return failure(fmt.Errorf("ls: the answer on %s is not a page of locks: %w: %.200s", listSubject(f.prefix), err, body))
		}
		locks = append(locks, page.Locks...)
		if page.Cursor == "" {
			break
		}
		if page.Cursor == req.Cursor {
			return failure(fmt.Errorf("ls: the service answered cursor %q for the same cursor: stopped paging", page.Cursor))
		}
		req.Cursor = page.Cursor
	}

	if *asJSON {
		out, err := json.MarshalIndent(locks, "", "  ")
		if err != nil {
			return failure(fmt.Errorf("ls: %w", err))
		}
		_, err = fmt.Fprintf(stdout, "%s\n", out)
		return err
	}
	w := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, "KEY\tTOKEN\tOWNER\tEXPIRES_AT")
	for _, raw := range locks {
		var l listedLock
		if err := json.Unmarshal(raw, &l); err != nil {
			return failure(fmt.Errorf("ls: a listed lock is not one: %w: %.200s", err, raw))
		}
		fmt.Fprintf(w, "%s\t%d\t%s\t%s\n", l.Key, l.Token, orDash(l.Owner), orDash(l.ExpiresAt))
	}
	return w.Flush()
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
