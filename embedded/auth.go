package embedded

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"slices"
	"strings"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"

	"github.com/lockservice/lockservice/service/api"
)

// ErrNoAuth is returned by Start when the server would accept clients
// beyond loopback without authentication (WithAllowNoAuth permits it).
var ErrNoAuth = errors.New("embedded: refusing to listen beyond loopback without authentication")

// GlobalAccount names nats-server's default account ($G), the one users
// outside any accounts block belong to.
const GlobalAccount = server.DEFAULT_GLOBAL_ACCOUNT

// WithAccount puts the service's own user (generated when the
// configuration requires authentication) in the named account of the
// configuration: the account whose users use the locks. The default is the
// account of the configuration's users when they are all in one (the
// system account aside), else GlobalAccount. Start fails when the account
// is not defined, or when users are in several accounts and none is named.
func WithAccount(name string) Option { return func(o *options) { o.account = name } }

// WithAllowNoAuth lets the server listen on an address beyond loopback when
// its configuration requires no authentication (or lets anonymous clients in
// with no_auth_user). Anyone who can reach the port can then take, release
// and rewrite every lock and read every lock id in flight.
func WithAllowNoAuth() Option { return func(o *options) { o.allowNoAuth = true } }

// WithServiceConnOptions adds options to the service's in-process
// connection. When they carry credentials (nats.UserInfo, nats.Token,
// nats.Nkey, nats.UserCredentials, ...), the service connects with them
// instead of a user of its own: needed when the configuration trusts
// operators (JWT) or uses auth callout, where no user can be added.
// nats.CustomInboxPrefix belongs here too when those credentials confine
// the service's inbox.
func WithServiceConnOptions(opts ...nats.Option) Option {
	return func(o *options) { o.svcConnOpts = append(o.svcConnOpts, opts...) }
}

// WithStoreConnOptions adds options to the connection of the store and the
// service's events (service.Config.EventConn), such as the credentials of
// a user of their own; without it that connection uses the service's
// options (WithServiceConnOptions) or, with users in the configuration, a
// user generated with the store's rights only. With users, give the store
// and the service different users: the service's should publish only into
// inboxes (docs/HARDENING.md).
func WithStoreConnOptions(opts ...nats.Option) Option {
	return func(o *options) { o.storeConnOpts = append(o.storeConnOpts, opts...) }
}

// DefaultMaxStore is the JetStream file storage cap of the embedded server
// when neither WithMaxStore nor the configuration file (max_file_store)
// sets one: 1 GiB. Writes beyond it are refused (the service answers 503).
const DefaultMaxStore = 1 << 30

// WithMaxStore caps the embedded server's JetStream file storage at n
// bytes, overriding the configuration file's max_file_store; 0 keeps the
// file's setting or DefaultMaxStore.
func WithMaxStore(n int64) Option { return func(o *options) { o.maxStore = n } }

// authConfig says how the configuration authenticates clients.
type authConfig struct {
	required  bool   // clients must authenticate (no_auth_user aside)
	anonymous string // no_auth_user: anonymous clients get this user's rights
	users     bool   // a users or nkeys list, to which a user can be added
}

func readAuth(o *server.Options) authConfig {
	a := authConfig{anonymous: o.NoAuthUser}
	a.users = o.Users != nil || o.Nkeys != nil
	a.required = a.users || o.Username != "" || o.Authorization != "" ||
		len(o.TrustedOperators) > 0 || len(o.TrustedKeys) > 0 ||
		o.CustomClientAuthentication != nil || o.AuthCallout != nil
	return a
}

// loopback reports whether host is a loopback address ("" and 0.0.0.0,
// nats-server's default, are every interface).
func loopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// checkListeners refuses listeners beyond loopback that let clients or
// servers in without authentication: the client, websocket and MQTT ports,
// and the leafnode port (a remote leafnode binds to an account with every
// permission), which the configuration's users authenticate when they have
// no authentication of their own; and the cluster and gateway ports,
// which take any server that connects as a peer (it then sees and sends
// every account's messages) unless their own block authenticates them.
func checkListeners(o *server.Options, noListen, allow bool) error {
	if allow {
		return nil
	}
	a := readAuth(o)
	open := !a.required || a.anonymous != ""
	type listener struct {
		name, host, anonymous string
		port                  int
		ownAuth               bool
		global                bool // the configuration's users authenticate it
		fix                   string
	}
	const addUsers = "add users to the configuration (see nats.conf and docs/HARDENING.md)"
	// The client port 0 is nats-server's default (4222), -1 a random one.
	ls := []listener{{"client", o.Host, a.anonymous, 1, false, true, addUsers}}
	if noListen {
		ls = ls[:0]
	}
	leafAuth := o.LeafNode.Username != "" || o.LeafNode.Nkey != "" || len(o.LeafNode.Users) > 0 || verifiesCerts(o.LeafNode.TLSConfig)
	leafAnonymous := a.anonymous
	if leafAuth {
		leafAnonymous = ""
	}
	ls = append(ls,
		listener{"websocket", o.Websocket.Host, o.Websocket.NoAuthUser, o.Websocket.Port, o.Websocket.Username != "" || o.Websocket.Token != "", true, addUsers},
		listener{"mqtt", o.MQTT.Host, o.MQTT.NoAuthUser, o.MQTT.Port, o.MQTT.Username != "" || o.MQTT.Token != "", true, addUsers},
		listener{"leafnode", o.LeafNode.Host, leafAnonymous, o.LeafNode.Port, leafAuth, true,
			addUsers + " or to the leafnodes block (authorization {...}, or tls { verify: true })"},
		listener{"cluster", o.Cluster.Host, "", o.Cluster.Port, o.Cluster.Username != "" || verifiesCerts(o.Cluster.TLSConfig), false,
			"give the cluster block authorization { user, password } or tls { verify: true } (the configuration's users do not authenticate routes)"},
		listener{"gateway", o.Gateway.Host, "", o.Gateway.Port, o.Gateway.Username != "" || verifiesCerts(o.Gateway.TLSConfig), false,
			"give the gateway block authorization { user, password } or tls { verify: true } (the configuration's users do not authenticate gateways)"})
	for _, l := range ls {
		if l.port == 0 || loopback(l.host) {
			continue
		}
		host := l.host
		if host == "" {
			host = "0.0.0.0"
		}
		switch {
		case l.ownAuth && l.anonymous == "":
		case l.global && !open && l.anonymous == "":
		case l.anonymous != "":
			return fmt.Errorf("%w: the %s listener on %s lets anonymous clients in as no_auth_user %q, from anywhere that reaches it: remove no_auth_user, listen on 127.0.0.1, or allow it explicitly (--allow-no-auth, embedded.WithAllowNoAuth)", ErrNoAuth, l.name, host, l.anonymous)
		default:
			return fmt.Errorf("%w: the %s listener on %s would let anyone who reaches it take, release and rewrite every lock and read the lock ids in flight; %s, listen on 127.0.0.1, or allow it explicitly (--allow-no-auth, embedded.WithAllowNoAuth)", ErrNoAuth, l.name, host, l.fix)
		}
	}
	return nil
}

// verifiesCerts reports whether a listener's TLS requires client
// certificates signed by its CA (tls { verify: true }): authentication.
func verifiesCerts(c *tls.Config) bool {
	return c != nil && c.ClientAuth == tls.RequireAndVerifyClientCert
}

// identities returns the options with which the service's connection and
// the clients' connection (Conn) authenticate, besides WithServiceConnOptions.
// When the configuration requires authentication and has a users list, each
// gets an nkey user of its own, generated now and added to sopts (in the
// chosen account; the service's publishes only where servicePermissions
// says, the clients' anywhere); the service's is skipped when
// WithServiceConnOptions carries credentials. A configuration with a single
// user or token instead has both log in as it. Where no user can be added
// (operator JWTs, auth callout, a bcrypt single password or token), the
// service needs credentials of its own, which Conn then uses too.
func (o *options) identities(sopts *server.Options) (svc, storeConn, clients []nats.Option, err error) {
	svc, clients, err = o.serviceIdentities(sopts)
	if err != nil || svc == nil || !readAuth(sopts).users {
		return svc, svc, clients, err
	}
	// The store and the events get a user of their own (see
	// storePermissions), and the service's answers only inboxes.
	acc, err := serviceAccount(sopts, o.account)
	if err != nil {
		return nil, nil, nil, err
	}
	storeConn, err = addNkeyUser(sopts, acc, o.storePermissions())
	return svc, storeConn, clients, err
}

// serviceIdentities returns the logins of the service's connection and of
// Conn (see identities).
func (o *options) serviceIdentities(sopts *server.Options) (svc, clients []nats.Option, err error) {
	a := readAuth(sopts)
	if !a.required {
		return nil, nil, nil
	}
	given, err := hasCredentials(o.svcConnOpts)
	if err != nil {
		return nil, nil, fmt.Errorf("embedded: service connection options: %w", err)
	}
	var single []nats.Option
	var why string
	switch {
	case a.users:
		acc, err := serviceAccount(sopts, o.account)
		if err != nil {
			return nil, nil, err
		}
		if acc != nil {
			o.joined = acc.Name
		}
		if !given {
			if svc, err = addNkeyUser(sopts, acc, o.servicePermissions()); err != nil {
				return nil, nil, err
			}
		}
		clients, err = addNkeyUser(sopts, acc, nil)
		return svc, clients, err
	case sopts.Username != "" && !bcrypted(sopts.Password):
		single = []nats.Option{nats.UserInfo(sopts.Username, sopts.Password)}
	case sopts.Username != "":
		why = fmt.Sprintf("the configuration's single user %q has a bcrypt password", sopts.Username)
	case sopts.Authorization != "" && !bcrypted(sopts.Authorization):
		single = []nats.Option{nats.Token(sopts.Authorization)}
	case sopts.Authorization != "":
		why = "the configuration's token is a bcrypt hash"
	default:
		why = "the configuration authenticates with operator JWTs or auth callout"
	}
	switch {
	case single != nil && given:
		return nil, single, nil
	case single != nil:
		return single, single, nil
	case given:
		return nil, o.svcConnOpts, nil
	}
	return nil, nil, fmt.Errorf("embedded: %s, so lockservice cannot log in or add a user of its own: give the service credentials (--nats-creds, --nats-nkey, --nats-user; embedded.WithServiceConnOptions), or use a users list (authorization { users: [...] })", why)
}

func bcrypted(s string) bool { return strings.HasPrefix(s, "$2") }

// hasCredentials reports whether opts set any way to authenticate.
func hasCredentials(opts []nats.Option) (bool, error) {
	var no nats.Options
	for _, opt := range opts {
		if err := opt(&no); err != nil {
			return false, err
		}
	}
	return no.User != "" || no.Password != "" || no.Token != "" || no.TokenHandler != nil ||
		no.Nkey != "" || no.UserJWT != nil || no.SignatureCB != nil, nil
}

// serviceAccount returns the account the service's user joins: nil for the
// global account.
func serviceAccount(sopts *server.Options, name string) (*server.Account, error) {
	defined := map[string]*server.Account{}
	for _, acc := range sopts.Accounts {
		defined[acc.Name] = acc
	}
	sys := sopts.SystemAccount
	if sys == "" {
		sys = server.DEFAULT_SYSTEM_ACCOUNT
	}
	if name == "" {
		seen := map[string]bool{}
		add := func(acc *server.Account) {
			switch {
			case acc == nil:
				seen[GlobalAccount] = true
			case acc.Name != sys:
				seen[acc.Name] = true
			}
		}
		for _, u := range sopts.Users {
			add(u.Account)
		}
		for _, u := range sopts.Nkeys {
			add(u.Account)
		}
		var names []string
		for n := range seen {
			names = append(names, n)
		}
		slices.Sort(names)
		switch len(names) {
		case 0:
			name = GlobalAccount
		case 1:
			name = names[0]
		default:
			return nil, fmt.Errorf("embedded: the configuration's users are in the accounts %s: name the one whose users use the locks (--account, or embedded.WithAccount); lockservice's own user joins it", strings.Join(names, ", "))
		}
	}
	if name == GlobalAccount {
		return nil, nil
	}
	acc, ok := defined[name]
	if !ok || name == sys {
		var names []string
		for n := range defined {
			if n != sys {
				names = append(names, n)
			}
		}
		slices.Sort(names)
		return nil, fmt.Errorf("embedded: account %q is not defined in the configuration (accounts: %s; the global account is %s)", name, strings.Join(names, ", "), GlobalAccount)
	}
	return acc, nil
}

// servicePermissions are the rights of the service's generated user, on
// the connection that answers requests: publish into inboxes and the reply
// subjects NATS maps, nothing else; subscribe to anything. A client
// chooses the reply subject of its requests and NATS does not check it,
// so the service, which answers on it, must not be able to publish on any
// other subject: the service refuses $-subjects and its own (see
// service.unsafeReply), but micro's discovery answers ($SRV.PING, INFO,
// STATS) go wherever the reply subject points. Answers need the clients'
// inboxes under _INBOX, as the configuration's users' permissions
// (docs/HARDENING.md) want them. The store and the events have a user of
// their own (storePermissions).
func (o *options) servicePermissions() *server.Permissions {
	return &server.Permissions{Publish: &server.SubjectPermission{
		// _R_.> and _GR_.>: the reply subjects NATS gives requests from an
		// account that imports the service, and from across a gateway
		// (clients cannot send them: reserved).
		Allow: []string{"_INBOX.>", "_R_.>", "_GR_.>"},
	}}
}

// storePermissions are the rights of the generated user of the store's
// connection, which also publishes the service's events and cancel
// announcements (service.Config.EventConn): JetStream ($KV, $JS) and those
// subjects. It answers no request.
func (o *options) storePermissions() *server.Permissions {
	prefix := o.svc.Prefix
	if prefix == "" {
		prefix = api.DefaultPrefix
	}
	return &server.Permissions{Publish: &server.SubjectPermission{
		Allow: []string{"$KV.>", "$JS.>", prefix + ".released.>", prefix + ".expired.>", prefix + ".forced.>", prefix + ".cancel.>"},
	}}
}

// addNkeyUser adds a user with a new nkey and perms (nil: every
// permission), in acc (nil: the global account), to sopts and returns the
// options that log in as it.
func addNkeyUser(sopts *server.Options, acc *server.Account, perms *server.Permissions) ([]nats.Option, error) {
	kp, err := nkeys.CreateUser()
	if err != nil {
		return nil, fmt.Errorf("embedded: generate nkey: %w", err)
	}
	pub, err := kp.PublicKey()
	if err != nil {
		return nil, fmt.Errorf("embedded: generate nkey: %w", err)
	}
	sopts.Nkeys = append(sopts.Nkeys, &server.NkeyUser{Nkey: pub, Account: acc, Permissions: perms})
	return []nats.Option{nats.Nkey(pub, kp.Sign)}, nil
}
