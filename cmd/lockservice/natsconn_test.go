package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"flag"
	"io"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nkeys"

	"github.com/lockservice/lockservice/internal/testsrv"
)

// pki is a CA with a server and a client certificate, as PEM files.
type pki struct {
	caFile, serverCert, serverKey, clientCert, clientKey string
}

// newPKI writes a fresh CA (ECDSA P-256) and certificates it signed into
// dir: one for a server on 127.0.0.1, one for a client.
func newPKI(t *testing.T, dir, name string) pki {
	t.Helper()
	key := func() *ecdsa.PrivateKey {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	write := func(file, typ string, der []byte) string {
		p := filepath.Join(dir, name+"-"+file)
		if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	writeKey := func(file string, k *ecdsa.PrivateKey) string {
		der, err := x509.MarshalECPrivateKey(k)
		if err != nil {
			t.Fatal(err)
		}
		return write(file, "EC PRIVATE KEY", der)
	}
	now := time.Now()
	caKey := key()
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name + " test CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	leaf := func(serial int64, cn string, usage x509.ExtKeyUsage, ips []net.IP) ([]byte, *ecdsa.PrivateKey) {
		k := key()
		der, err := x509.CreateCertificate(rand.Reader, &x509.Certificate{
			SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: cn},
			NotBefore: now.Add(-time.Hour), NotAfter: now.Add(time.Hour),
			KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage}, IPAddresses: ips,
		}, ca, &k.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		return der, k
	}
	srvDER, srvKey := leaf(2, "127.0.0.1", x509.ExtKeyUsageServerAuth, []net.IP{net.IPv4(127, 0, 0, 1)})
	cliDER, cliKey := leaf(3, "lockservice", x509.ExtKeyUsageClientAuth, nil)
	return pki{
		caFile:     write("ca.pem", "CERTIFICATE", caDER),
		serverCert: write("server.pem", "CERTIFICATE", srvDER), serverKey: writeKey("server-key.pem", srvKey),
		clientCert: write("client.pem", "CERTIFICATE", cliDER), clientKey: writeKey("client-key.pem", cliKey),
	}
}

// startNATS starts an in-process nats-server with JetStream on a random
// loopback port, configured further by opts; stopped at cleanup.
func startNATS(t *testing.T, configure func(*server.Options)) *server.Server {
	t.Helper()
	o := &server.Options{ServerName: "t", Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: t.TempDir(), NoLog: true, NoSigs: true}
	configure(o)
	s, err := server.NewServer(o)
	if err != nil {
		t.Fatal(err)
	}
	s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats-server not ready")
	}
	t.Cleanup(func() { s.Shutdown(); s.WaitForShutdown() })
	return s
}

func tlsServer(t *testing.T, p pki, verify bool) *server.Server {
	t.Helper()
	return startNATS(t, func(o *server.Options) {
		tc, err := server.GenTLSConfig(&server.TLSConfigOpts{CertFile: p.serverCert, KeyFile: p.serverKey, CaFile: p.caFile, Verify: verify})
		if err != nil {
			t.Fatal(err)
		}
		o.TLS, o.TLSConfig, o.TLSVerify, o.TLSCaCert = true, tc, verify, p.caFile
		o.TLSTimeout = 5
	})
}

// connectWith parses args as the client commands do (NATS flags only)
// and connects.
func connectWith(t *testing.T, args ...string) error {
	t.Helper()
	f := &natsFlags{}
	fs := flag.NewFlagSet("test", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	f.register(fs, "", "test")
	if err := parseWithEnv(fs, args); err != nil {
		t.Fatal(err)
	}
	f.fromEnvironment()
	nc, err := connectNATS(f, "test")
	if err == nil {
		nc.Close()
	}
	return err
}

// clearNATSEnv unsets the NATS_* variables for the test.
func clearNATSEnv(t *testing.T) {
	for _, v := range []string{"NATS_URL", "NATS_CREDS", "NATS_NKEY", "NATS_USER", "NATS_PASSWORD", "NATS_TOKEN", "NATS_CA", "NATS_CERT", "NATS_KEY"} {
		t.Setenv(v, "")
	}
}

// wantFailure checks that err names each of want and is not taken for an
// unreachable server.
func wantFailure(t *testing.T, what string, err error, want ...string) {
	t.Helper()
	if err == nil {
		t.Errorf("%s = nil, want an error", what)
		return
	}
	for _, w := range want {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("%s = %v, want it to say %q", what, err, w)
		}
	}
	if errors.Is(err, errNATSUnreachable) {
		t.Errorf("%s = %v: taken for an unreachable server", what, err)
	}
}

func TestConnectTLS(t *testing.T) {
	clearNATSEnv(t)
	dir := t.TempDir()
	p, other := newPKI(t, dir, "good"), newPKI(t, dir, "other")

	plain := tlsServer(t, p, false)
	url := "tls://" + plain.Addr().String()
	if err := connectWith(t, "--nats-url", url, "--nats-tls-ca", p.caFile); err != nil {
		t.Errorf("TLS with the server's CA = %v", err)
	}
	t.Setenv("NATS_CA", p.caFile)
	if err := connectWith(t, "--nats-url", url); err != nil {
		t.Errorf("TLS with $NATS_CA = %v", err)
	}
	t.Setenv("NATS_CA", "")
	wantFailure(t, "TLS with another CA", connectWith(t, "--nats-url", url, "--nats-tls-ca", other.caFile),
		"TLS", "does not verify", other.caFile)
	wantFailure(t, "a missing CA file", connectWith(t, "--nats-url", url, "--nats-tls-ca", filepath.Join(dir, "nope.pem")),
		"--nats-tls-ca", "nope.pem")
	wantFailure(t, "a certificate without its key", connectWith(t, "--nats-url", url, "--nats-tls-cert", p.clientCert),
		"--nats-tls-key")

	mutual := tlsServer(t, p, true)
	url = "tls://" + mutual.Addr().String()
	if err := connectWith(t, "--nats-url", url, "--nats-tls-ca", p.caFile, "--nats-tls-cert", p.clientCert, "--nats-tls-key", p.clientKey); err != nil {
		t.Errorf("mutual TLS with a client certificate = %v", err)
	}
	wantFailure(t, "mutual TLS without a client certificate", connectWith(t, "--nats-url", url, "--nats-tls-ca", p.caFile), "TLS handshake failed", "client certificate")
	wantFailure(t, "mutual TLS with a certificate of another CA",
		connectWith(t, "--nats-url", url, "--nats-tls-ca", p.caFile, "--nats-tls-cert", other.clientCert, "--nats-tls-key", other.clientKey), "TLS")

	noTLS := testsrv.NATS(t, "")
	wantFailure(t, "TLS asked of a server without it", connectWith(t, "--nats-url", noTLS.ClientURL(), "--nats-tls-ca", p.caFile), "TLS")
}

func TestConnectCredentials(t *testing.T) {
	clearNATSEnv(t)
	dir := t.TempDir()
	kp, err := nkeys.CreateUser()
	if err != nil {
		t.Fatal(err)
	}
	pub, _ := kp.PublicKey()
	seed, _ := kp.Seed()
	seedFile := filepath.Join(dir, "user.nk")
	if err := os.WriteFile(seedFile, seed, 0o600); err != nil {
		t.Fatal(err)
	}
	writeFile := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	pwFile, wrongFile := writeFile("pw", "s3cret\n"), writeFile("wrong", "nope\n")

	users := startNATS(t, func(o *server.Options) {
		o.Users = []*server.User{{Username: "app", Password: "s3cret"}}
		o.Nkeys = []*server.NkeyUser{{Nkey: pub}}
	}).ClientURL()
	if err := connectWith(t, "--nats-url", users, "--nats-user", "app", "--nats-password-file", pwFile); err != nil {
		t.Errorf("user with a password file = %v", err)
	}
	if err := connectWith(t, "--nats-url", users, "--nats-nkey", seedFile); err != nil {
		t.Errorf("nkey seed file = %v", err)
	}
	t.Setenv("NATS_USER", "app")
	t.Setenv("NATS_PASSWORD", "s3cret")
	if err := connectWith(t, "--nats-url", users); err != nil {
		t.Errorf("user and password from $NATS_USER, $NATS_PASSWORD = %v", err)
	}
	wantFailure(t, "two ways to log in", connectWith(t, "--nats-url", users, "--nats-nkey", seedFile), "--nats-nkey and $NATS_USER")
	t.Setenv("NATS_USER", "")
	t.Setenv("NATS_PASSWORD", "")
	wantFailure(t, "a wrong password", connectWith(t, "--nats-url", users, "--nats-user", "app", "--nats-password-file", wrongFile),
		"refused the login", `user "app"`, "--nats-password-file "+wrongFile, "Authorization Violation")
	wantFailure(t, "no credentials", connectWith(t, "--nats-url", users), "refused the login with no credentials")
	wantFailure(t, "a user without password", connectWith(t, "--nats-url", users, "--nats-user", "app"), "needs a password")
	wantFailure(t, "a missing seed file", connectWith(t, "--nats-url", users, "--nats-nkey", filepath.Join(dir, "nope.nk")), "--nats-nkey")

	token := startNATS(t, func(o *server.Options) { o.Authorization = "t0ken" }).ClientURL()
	if err := connectWith(t, "--nats-url", token, "--nats-token-file", writeFile("token", "t0ken\n")); err != nil {
		t.Errorf("token file = %v", err)
	}
	t.Setenv("NATS_TOKEN", "t0ken")
	if err := connectWith(t, "--nats-url", token); err != nil {
		t.Errorf("token from $NATS_TOKEN = %v", err)
	}
	t.Setenv("NATS_TOKEN", "wrong")
	wantFailure(t, "a wrong token", connectWith(t, "--nats-url", token), "refused the login with the token from $NATS_TOKEN")
}

// TestServeConnectErrors: lockservice --nats-url says which part of the
// connection failed, and asks whether nats-server runs only when nothing
// answered.
func TestServeConnectErrors(t *testing.T) {
	clearNATSEnv(t)
	users := startNATS(t, func(o *server.Options) { o.Users = []*server.User{{Username: "app", Password: "s3cret"}} }).ClientURL()
	pw := filepath.Join(t.TempDir(), "pw")
	if err := os.WriteFile(pw, []byte("wrong"), 0o600); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	var out, errOut syncBuffer
	err := run(ctx, []string{"--nats-url", users, "--nats-user", "app", "--nats-password-file", pw}, &out, &errOut)
	wantFailure(t, "serve with a wrong password", err, "Authorization Violation", `user "app"`)
	if err != nil && strings.Contains(err.Error(), "is nats-server running") {
		t.Errorf("serve with a wrong password = %v: asks whether nats-server runs", err)
	}
	err = run(ctx, []string{"get", "--nats-url", users, "--nats-user", "app", "--nats-password-file", pw, "k"}, &out, &errOut)
	wantFailure(t, "get with a wrong password", err, "Authorization Violation")
	if err != nil && strings.Contains(err.Error(), "start a service") {
		t.Errorf("get with a wrong password = %v: suggests starting a service", err)
	}

	down := "nats://127.0.0.1:" + strconv.Itoa(testsrv.FreePort(t))
	err = run(ctx, []string{"--nats-url", down}, &out, &errOut)
	if err == nil || !strings.Contains(err.Error(), "is nats-server running") {
		t.Errorf("serve with no server = %v, want the question whether nats-server runs", err)
	}
}

// TestServeReadsNATSURL: serve joins $NATS_URL like the nats CLI, refuses
// it together with flags of the embedded server, and warns of a password
// on the command line.
func TestServeReadsNATSURL(t *testing.T) {
	clearNATSEnv(t)
	srv := startNATS(t, func(o *server.Options) { o.Users = []*server.User{{Username: "app", Password: "s3cret"}} })
	url := "nats://app:s3cret@" + srv.Addr().String()

	t.Setenv("NATS_URL", url)
	var out, errOut syncBuffer
	err := run(t.Context(), []string{"--data-dir", t.TempDir()}, &out, &errOut)
	if err == nil || !strings.Contains(err.Error(), "-data-dir configures the embedded nats-server") || !strings.Contains(err.Error(), "$NATS_URL") || strings.Contains(err.Error(), "s3cret") {
		t.Errorf("serve --data-dir with $NATS_URL = %v, want an error naming both, password hidden", err)
	}

	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	errc := make(chan error, 1)
	go func() { errc <- run(ctx, nil, &out, &errOut) }()
	waitFor(t, &out, "serving lock.<op>.<key> on nats://app:xxxxx@", errc)
	cancel()
	if err := <-errc; err != nil {
		t.Errorf("serve with $NATS_URL = %v", err)
	}
	if strings.Contains(errOut.String(), "carries credentials") {
		t.Errorf("stderr = %q: warned about a password that came from the environment", errOut.String())
	}

	t.Setenv("NATS_URL", "")
	ctx, cancel = context.WithCancel(t.Context())
	defer cancel()
	var out2, errOut2 syncBuffer
	go func() { errc <- run(ctx, []string{"--nats-url", url}, &out2, &errOut2) }()
	waitFor(t, &out2, "serving lock.<op>.<key>", errc)
	cancel()
	<-errc
	if !strings.Contains(errOut2.String(), "--nats-url carries credentials") {
		t.Errorf("stderr = %q, want a warning about the password in --nats-url", errOut2.String())
	}
}

// TestServeEmbeddedIgnoresNATSEnv: the NATS_* credentials of the nats CLI
// are not the embedded service's; flags given on the command line are.
func TestServeEmbeddedIgnoresNATSEnv(t *testing.T) {
	clearNATSEnv(t)
	t.Setenv("NATS_USER", "someone")
	t.Setenv("NATS_PASSWORD", "x")
	t.Setenv("NATS_CA", "/nonexistent/ca.pem")
	port := testsrv.FreePort(t)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	var out, errOut syncBuffer
	errc := make(chan error, 1)
	go func() {
		errc <- run(ctx, []string{"--port", strconv.Itoa(port), "--data-dir", t.TempDir()}, &out, &errOut)
	}()
	waitFor(t, &out, "embedded nats-server on", errc)
	cancel()
	if err := <-errc; err != nil {
		t.Errorf("serve = %v", err)
	}
}
