package main

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/lockservice/lockservice/service/api"
)

// natsFlags say where NATS is and how to log in to it: one implementation
// for serve, lock, get and ls. Secrets come from files or the environment,
// never from a flag's value (argv is visible in ps); a password in
// --nats-url works but draws a warning. The environment variables are the
// nats CLI's: NATS_URL, NATS_CREDS, NATS_NKEY, NATS_USER, NATS_PASSWORD,
// NATS_CA, NATS_CERT, NATS_KEY; and NATS_TOKEN.
type natsFlags struct {
	natsURL, natsCreds string
	nkey, user         string
	passwordFile       string
	tokenFile          string
	ca, cert, key      string
	inboxPrefix        string
	// explicitOnly: $NATS_PASSWORD without --nats-user, and $NATS_TOKEN,
	// are not used (commandLineOnly).
	explicitOnly bool

	fs *flag.FlagSet // for which flags were given, and its output for warnings
	// warn reports a warning; nil prints it to fs's output.
	warn func(msg string)
}

// register adds the flags to fs. what says what --nats-url is for.
// Their NATS_* variables are read by fromEnvironment, after parsing.
func (f *natsFlags) register(fs *flag.FlagSet, defaultURL, what string) {
	f.fs = fs
	fs.StringVar(&f.natsURL, "nats-url", defaultURL, what+"; $NATS_URL, when set, is the default (comma-separated URLs for a cluster; tls:// for TLS)")
	fs.StringVar(&f.natsCreds, "nats-creds", "", "NATS credentials file (JWT and nkey seed; $NATS_CREDS)")
	fs.StringVar(&f.nkey, "nats-nkey", "", "NATS nkey seed file ($NATS_NKEY)")
	fs.StringVar(&f.user, "nats-user", "", "NATS user ($NATS_USER); its password from --nats-password-file or $NATS_PASSWORD")
	fs.StringVar(&f.passwordFile, "nats-password-file", "", "file holding the password of --nats-user (else $NATS_PASSWORD)")
	fs.StringVar(&f.tokenFile, "nats-token-file", "", "file holding the NATS token (else $NATS_TOKEN)")
	fs.StringVar(&f.ca, "nats-tls-ca", "", "CA certificate file (PEM) to verify NATS with; implies TLS ($NATS_CA)")
	fs.StringVar(&f.cert, "nats-tls-cert", "", "client certificate file (PEM) for mutual TLS, with --nats-tls-key ($NATS_CERT)")
	fs.StringVar(&f.key, "nats-tls-key", "", "client key file (PEM) for mutual TLS ($NATS_KEY)")
	fs.StringVar(&f.inboxPrefix, "nats-inbox-prefix", "", "inbox prefix for replies (default _INBOX); a user confined to its own inboxes needs it, e.g. _INBOX.billing")
}

// natsEnv maps flags to the nats CLI's variables that stand in for them.
var natsEnv = map[string]string{
	"nats-url": "NATS_URL", "nats-creds": "NATS_CREDS", "nats-nkey": "NATS_NKEY", "nats-user": "NATS_USER",
	"nats-tls-ca": "NATS_CA", "nats-tls-cert": "NATS_CERT", "nats-tls-key": "NATS_KEY",
}

// fromEnvironment sets the flags not given (on the command line or by
// their LOCKSERVICE_ variable) from the nats CLI's variables, when set.
func (f *natsFlags) fromEnvironment() {
	for name, v := range f.values() {
		if env := os.Getenv(natsEnv[name]); env != "" && !f.given(name) {
			*v = env
		}
	}
}

func (f *natsFlags) values() map[string]*string {
	return map[string]*string{
		"nats-url": &f.natsURL, "nats-creds": &f.natsCreds, "nats-nkey": &f.nkey, "nats-user": &f.user,
		"nats-tls-ca": &f.ca, "nats-tls-cert": &f.cert, "nats-tls-key": &f.key,
	}
}

// given reports whether flag name was set: on the command line or by its
// LOCKSERVICE_ variable.
func (f *natsFlags) given(name string) bool {
	found := false
	if f.fs != nil {
		f.fs.Visit(func(fl *flag.Flag) { found = found || fl.Name == name })
	}
	return found
}

// src names where flag name's value came from: the flag (or its
// LOCKSERVICE_ variable), or the nats CLI's variable behind its default.
func (f *natsFlags) src(name string) string {
	if env := natsEnv[name]; env != "" && !f.given(name) && os.Getenv(env) != "" {
		return "$" + env
	}
	return "--" + name
}

// secret is a password or token and where it came from.
type secret struct{ value, from string }

// readSecret reads the flag's file, else the environment variable (unless
// variable is "").
func readSecret(flagName, file, variable string) (secret, error) {
	if file != "" {
		b, err := os.ReadFile(file)
		if err != nil {
			return secret{}, fmt.Errorf("--%s: %w", flagName, err)
		}
		v := strings.TrimRight(string(b), "\r\n")
		if v == "" {
			return secret{}, fmt.Errorf("--%s: %s is empty", flagName, file)
		}
		return secret{v, "--" + flagName + " " + file}, nil
	}
	if v := os.Getenv(variable); variable != "" && v != "" {
		return secret{v, "$" + variable}, nil
	}
	return secret{}, nil
}

// commandLineOnly returns f with only the values given on the command
// line or by their LOCKSERVICE_ variables: what the embedded service logs
// in with (the NATS_* environment is for the nats CLI's NATS, not for a
// server lockservice starts).
func (f natsFlags) commandLineOnly() natsFlags {
	for name, v := range f.values() {
		if !f.given(name) {
			*v = ""
		}
	}
	f.explicitOnly = true
	return f
}

// options returns the nats.Options for the flags: credentials, TLS (unless
// withTLS is false) and inbox prefix. Every file is read now, so that an
// error names its flag. login describes the credentials for error messages
// ("" for none).
func (f *natsFlags) options(withTLS bool) (opts []nats.Option, login string, err error) {
	passwordEnv, tokenEnv := "NATS_PASSWORD", "NATS_TOKEN"
	if f.explicitOnly {
		tokenEnv = ""
		if f.user == "" {
			passwordEnv = ""
		}
	}
	password, err := readSecret("nats-password-file", f.passwordFile, passwordEnv)
	if err != nil {
		return nil, "", err
	}
	token, err := readSecret("nats-token-file", f.tokenFile, tokenEnv)
	if err != nil {
		return nil, "", err
	}
	var ways []string
	if f.natsCreds != "" {
		ways = append(ways, f.src("nats-creds"))
	}
	if f.nkey != "" {
		ways = append(ways, f.src("nats-nkey"))
	}
	if f.user != "" {
		ways = append(ways, f.src("nats-user"))
	}
	if token.value != "" {
		ways = append(ways, token.from)
	}
	if len(ways) > 1 {
		return nil, "", fmt.Errorf("NATS credentials: give one way to log in, got %s", strings.Join(ways, " and "))
	}
	switch {
	case f.user == "" && password.value != "":
		return nil, "", fmt.Errorf("NATS credentials: a password (%s) without --nats-user", password.from)
	case f.user != "" && password.value == "":
		return nil, "", fmt.Errorf("NATS credentials: user %q (%s) needs a password: --nats-password-file FILE or $NATS_PASSWORD", f.user, f.src("nats-user"))
	case f.natsCreds != "":
		if _, err := os.Stat(f.natsCreds); err != nil {
			return nil, "", fmt.Errorf("%s: %w", f.src("nats-creds"), err)
		}
		opts = append(opts, nats.UserCredentials(f.natsCreds))
		login = "the credentials in " + f.natsCreds
	case f.nkey != "":
		opt, err := nats.NkeyOptionFromSeed(f.nkey)
		if err != nil {
			return nil, "", fmt.Errorf("%s %s: %w", f.src("nats-nkey"), f.nkey, err)
		}
		opts = append(opts, opt)
		login = "the nkey in " + f.nkey
	case f.user != "":
		opts = append(opts, nats.UserInfo(f.user, password.value))
		login = fmt.Sprintf("user %q (password from %s)", f.user, password.from)
	case token.value != "":
		opts = append(opts, nats.Token(token.value))
		login = "the token from " + token.from
	}
	if u := urlLogin(f.natsURL); login == "" && u != "" {
		login = u
	}

	if withTLS {
		tlsOpt, err := f.tlsConfig()
		if err != nil {
			return nil, "", err
		}
		if tlsOpt != nil {
			opts = append(opts, nats.Secure(tlsOpt))
		}
	}
	if f.inboxPrefix != "" {
		opts = append(opts, nats.CustomInboxPrefix(f.inboxPrefix))
	}
	return opts, login, nil
}

// tlsConfig loads the CA and the client certificate; nil when neither is
// given (a tls:// URL then verifies with the system's CAs).
func (f *natsFlags) tlsConfig() (*tls.Config, error) {
	if f.ca == "" && f.cert == "" && f.key == "" {
		return nil, nil
	}
	cfg := &tls.Config{MinVersion: tls.VersionTLS12}
	if f.ca != "" {
		pem, err := os.ReadFile(f.ca)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", f.src("nats-tls-ca"), err)
		}
		cfg.RootCAs = x509.NewCertPool()
		if !cfg.RootCAs.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("%s: no PEM certificate in %s", f.src("nats-tls-ca"), f.ca)
		}
	}
	switch {
	case f.cert != "" && f.key != "":
		pair, err := tls.LoadX509KeyPair(f.cert, f.key)
		if err != nil {
			return nil, fmt.Errorf("%s %s, %s %s: %w", f.src("nats-tls-cert"), f.cert, f.src("nats-tls-key"), f.key, err)
		}
		cfg.Certificates = []tls.Certificate{pair}
	case f.cert != "" || f.key != "":
		return nil, errors.New("--nats-tls-cert and --nats-tls-key ($NATS_CERT, $NATS_KEY) go together (mutual TLS needs both)")
	}
	return cfg, nil
}

// tlsDesc describes the TLS settings for error messages.
func (f *natsFlags) tlsDesc() string {
	var d []string
	if f.ca != "" {
		d = append(d, "CA "+f.ca)
	} else {
		d = append(d, "the system's CAs")
	}
	if f.cert != "" {
		d = append(d, "client certificate "+f.cert)
	}
	return strings.Join(d, ", ")
}

// warnings tells about secrets on the command line.
func (f *natsFlags) warnings() []string {
	// Given, and not by its LOCKSERVICE_ variable: on the command line.
	if f.given("nats-url") && os.Getenv(envName("nats-url")) != f.natsURL && urlLogin(f.natsURL) != "" {
		return []string{"--nats-url carries credentials, which other users can read in ps: use $NATS_URL, or --nats-user with --nats-password-file (or $NATS_PASSWORD), or --nats-token-file"}
	}
	return nil
}

// errNATSUnreachable marks a connection failure that is not the server's
// refusal of the login or of TLS: nothing answered at the URL. Only then
// may a message ask whether nats-server runs.
var errNATSUnreachable = errors.New("no NATS server answered")

// connectNATS connects to the NATS of f as name and reconnects forever
// after a disconnect; extra options come last. Its error names the URL
// (secrets redacted) and what failed: the login (which credentials), TLS
// (which CA and certificate), or the network (matching
// errNATSUnreachable).
func connectNATS(f *natsFlags, name string, extra ...nats.Option) (*nats.Conn, error) {
	opts, login, err := f.options(true)
	if err != nil {
		return nil, err
	}
	for _, w := range f.warnings() {
		switch {
		case f.warn != nil:
			f.warn(w)
		case f.fs != nil:
			fmt.Fprintln(f.fs.Output(), "lockservice: warning:", w)
		}
	}
	opts = append([]nats.Option{nats.Name(name), nats.MaxReconnects(-1), nats.ReconnectWait(250 * time.Millisecond)}, opts...)
	nc, err := nats.Connect(f.natsURL, append(opts, extra...)...)
	if err != nil {
		return nil, f.connectError(err, login)
	}
	if err := f.checkInbox(nc, login); err != nil {
		nc.Close()
		return nil, err
	}
	return nc, nil
}

// checkInbox subscribes to an inbox of nc, as every request does for its
// answer: a user confined to inboxes of its own (docs/HARDENING.md) is
// refused the subscription when the inbox prefix is not one of them, which
// NATS reports asynchronously, so every request would only time out.
func (f *natsFlags) checkInbox(nc *nats.Conn, login string) error {
	inbox := nc.NewInbox()
	sub, err := nc.SubscribeSync(inbox + ".check")
	if err != nil {
		return err
	}
	defer sub.Unsubscribe()
	if err := nc.FlushTimeout(10 * time.Second); err != nil {
		return fmt.Errorf("connect to NATS at %s: %w", redactNATSURL(f.natsURL), err)
	}
	if err := refused(nc); err != nil {
		if login == "" {
			login = "no credentials"
		}
		prefix := f.inboxPrefix
		if prefix == "" {
			prefix = strings.TrimSuffix(nats.InboxPrefix, ".")
		}
		return fmt.Errorf("connect to NATS at %s with %s: answers cannot reach inbox prefix %s: %w (give --nats-inbox-prefix with the prefix the user may subscribe to, e.g. _INBOX.<user>; docs/HARDENING.md)", redactNATSURL(f.natsURL), login, prefix, err)
	}
	return nil
}

// refused returns the permission violation NATS last reported on nc, nil
// when there was none: a request it refused is otherwise only a timeout.
func refused(nc *nats.Conn) error {
	if err := nc.LastError(); errors.Is(err, nats.ErrPermissionViolation) {
		return err
	}
	return nil
}

// connectError says what failed in a nats.Connect error.
func (f *natsFlags) connectError(err error, login string) error {
	at := "connect to NATS at " + redactNATSURL(f.natsURL)
	if login == "" {
		login = "no credentials"
	}
	var (
		unknownCA  x509.UnknownAuthorityError
		hostname   x509.HostnameError
		verify     *tls.CertificateVerificationError
		alert      tls.AlertError
		record     tls.RecordHeaderError
		invalidCrt x509.CertificateInvalidError
	)
	var parse *url.Error
	switch {
	case errors.As(err, &parse) && parse.Op == "parse":
		return fmt.Errorf("%s: %w", at, urlError(err))
	case errors.Is(err, nats.ErrAuthorization), errors.Is(err, nats.ErrAuthExpired),
		errors.Is(err, nats.ErrAuthRevoked), errors.Is(err, nats.ErrAccountAuthExpired):
		return fmt.Errorf("%s: the server refused the login with %s: %w (check the user and its password, token, nkey or credentials file)", at, login, err)
	case errors.Is(err, nats.ErrSecureConnRequired):
		return fmt.Errorf("%s: the server requires TLS: %w (use a tls:// URL, and --nats-tls-ca if its certificate is not from a CA the system trusts)", at, err)
	case errors.Is(err, nats.ErrSecureConnWanted):
		return fmt.Errorf("%s: TLS was asked for (%s) but the server does not offer it: %w", at, f.tlsDesc(), err)
	case errors.As(err, &unknownCA), errors.As(err, &hostname), errors.As(err, &verify), errors.As(err, &invalidCrt):
		return fmt.Errorf("%s: TLS: the server's certificate does not verify with %s: %w", at, f.tlsDesc(), err)
	case errors.As(err, &alert), errors.As(err, &record), errors.Is(err, nats.ErrTLS),
		strings.Contains(err.Error(), "tls:"), strings.Contains(err.Error(), "x509:"):
		return fmt.Errorf("%s: TLS handshake failed (%s; a server that requires client certificates refuses a missing or unknown one): %w", at, f.tlsDesc(), err)
	}
	return fmt.Errorf("%s: %w: %w", at, errNATSUnreachable, err)
}

// parseNATSURL parses one URL of a NATS URL list as nats.go does: one
// without a scheme (user:password@host:4222) is a nats:// URL.
func parseNATSURL(part string) (*url.URL, error) {
	part = strings.TrimSpace(part)
	if !strings.Contains(part, "://") {
		part = "nats://" + part
	}
	return url.Parse(part)
}

// urlLogin describes the credentials in a NATS URL, "" when it has none.
func urlLogin(s string) string {
	for _, part := range strings.Split(s, ",") {
		u, err := parseNATSURL(part)
		if err != nil || u.User == nil {
			continue
		}
		if _, ok := u.User.Password(); ok {
			return fmt.Sprintf("user %q (password in the URL)", u.User.Username())
		}
		return "the token in the URL"
	}
	return ""
}

// redactNATSURL hides the passwords and tokens in a NATS URL list (a URL
// it cannot parse loses everything before its last "@").
func redactNATSURL(s string) string {
	parts := strings.Split(s, ",")
	for i, part := range parts {
		u, err := parseNATSURL(part)
		if err != nil {
			parts[i] = hideUserinfo(part)
			continue
		}
		if u.User == nil {
			continue
		}
		if _, ok := u.User.Password(); ok {
			u.User = url.UserPassword(u.User.Username(), "xxxxx")
		} else {
			u.User = url.User("xxxxx") // a token
		}
		parts[i] = u.String()
	}
	return strings.Join(parts, ",")
}

// connectedURL is the URL nc is connected to, its password or token
// hidden (nats.Conn.ConnectedUrlRedacted hides a password, not a token).
func connectedURL(nc *nats.Conn) string { return redactNATSURL(nc.ConnectedUrl()) }

func redactURL(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		return hideUserinfo(s)
	}
	if u.User == nil {
		return s
	}
	if _, ok := u.User.Password(); ok {
		u.User = url.UserPassword(u.User.Username(), "xxxxx")
	}
	return u.String()
}

// hideUserinfo hides the user information of a URL that does not parse:
// everything between the scheme and the last '@'.
func hideUserinfo(s string) string {
	at := strings.LastIndex(s, "@")
	if at < 0 {
		return s
	}
	start := 0
	if i := strings.Index(s, "://"); i >= 0 && i < at {
		start = i + len("://")
	}
	return s[:start] + "xxxxx" + s[at:]
}

// urlError returns err, or, when err is url.Parse's refusal of a URL, an
// error saying what is wrong without quoting the URL, which may hold a
// password.
func urlError(err error) error {
	var ue *url.Error
	if !errors.As(err, &ue) || ue.Op != "parse" {
		return err
	}
	var esc url.EscapeError
	if errors.As(ue.Err, &esc) {
		return errors.New("not a valid URL: a '%' that does not start an escape (write a '%' of a user name or password as %25, and percent-encode its ':', '@' and '/')")
	}
	return fmt.Errorf("not a valid URL: %w", ue.Err)
}

// clientFlags are the flags of the commands that talk to a running service
// (lock, get, ls): where its NATS is, and its subject prefix.
type clientFlags struct {
	natsFlags
	prefix  string
	timeout time.Duration
	refusal firstRefusal // of the connection connect made
}

// firstRefusal keeps the first permission violation NATS reports on a
// connection: NATS refuses a publish or a subscription asynchronously, so a
// request it refused is otherwise only a timeout.
type firstRefusal struct {
	mu  sync.Mutex
	err error
}

func (r *firstRefusal) handler(_ *nats.Conn, _ *nats.Subscription, err error) {
	if !errors.Is(err, nats.ErrPermissionViolation) {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.err == nil {
		r.err = err
	}
}

// get returns the first permission violation, nil when there was none.
func (r *firstRefusal) get() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.err
}

func (f *clientFlags) register(fs *flag.FlagSet) {
	f.natsFlags.register(fs, nats.DefaultURL, "the NATS the service uses")
	fs.StringVar(&f.prefix, "prefix", api.DefaultPrefix, "the service's subject prefix (its --prefix)")
	fs.DurationVar(&f.timeout, "timeout", 5*time.Second, "how long to wait for each answer of the service")
}

// validate takes the NATS_* variables for the flags not given, and checks
// the flags register set.
func (f *clientFlags) validate() error {
	f.fromEnvironment()
	if err := api.ValidateKey(f.prefix); err != nil {
		return fmt.Errorf("--prefix: %w", err)
	}
	if f.timeout <= 0 {
		return fmt.Errorf("--timeout must be positive, got %v", f.timeout)
	}
	return nil
}

// connect connects to the service's NATS as name; its error (exit 1) says
// what failed, and how to get a NATS when none answered.
func (f *clientFlags) connect(name string) (*nats.Conn, error) {
	nc, err := connectNATS(&f.natsFlags, name, nats.ErrorHandler(f.refusal.handler))
	if errors.Is(err, errNATSUnreachable) {
		err = fmt.Errorf("%w (start a service with its own NATS: lockservice; or point --nats-url or NATS_URL at the NATS your service uses)", err)
	}
	if err != nil {
		return nil, failure(err)
	}
	return nc, nil
}

// errNoService: no service instance answered a request.
var errNoService = errors.New("no lock service instance answers")

// noService is the error for a request on subject that no service instance
// answered: it says what to do.
func (f *clientFlags) noService(subject string) error {
	return fmt.Errorf("%w %s on %s: start one (lockservice, or lockservice --nats-url %s to use this NATS), or give the --prefix it serves", errNoService, subject, redactNATSURL(f.natsURL), redactNATSURL(f.natsURL))
}
