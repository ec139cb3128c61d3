// A foreign HBONE peer written against Go's standard library only, used by
// packages/proxy/test/hbone-interop.test.ts to prove wire compatibility.
//
//	hbone client <addr> <authority> <expected-server-id> <cert> <key> <roots>
//	    CONNECTs to <authority> through the HBONE server at <addr>, sends
//	    "hello from go", half-closes (END_STREAM), prints
//	    "status <code>" then "body <echoed bytes>".
//	hbone client-reset <addr> <authority> <expected-server-id> <cert> <key> <roots>
//	    like client, but after the 200 sends "x", waits for a line on stdin,
//	    then aborts the request (RST_STREAM CANCEL), prints "cancelled", and
//	    exits when stdin closes (so the connection stays up while the test
//	    watches the upstream).
//	hbone server <listen-addr> <cert> <key> <roots>
//	    serves HBONE: prints "listening <addr>", then one line
//	    "connect <client-spiffe-id> <authority>" per tunnel.
package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sync"
	"time"
)

func main() {
	if len(os.Args) < 2 {
		fail(errors.New("usage: hbone client|server ..."))
	}
	var err error
	switch os.Args[1] {
	case "client":
		err = client(os.Args[2], os.Args[3], os.Args[4], os.Args[5], os.Args[6], os.Args[7], false)
	case "client-reset":
		err = client(os.Args[2], os.Args[3], os.Args[4], os.Args[5], os.Args[6], os.Args[7], true)
	case "server":
		err = server(os.Args[2], os.Args[3], os.Args[4], os.Args[5])
	default:
		err = fmt.Errorf("unknown mode %q", os.Args[1])
	}
	if err != nil {
		fail(err)
	}
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "error:", err)
	os.Exit(1)
}

// loadIdentity reads our SVID (certificate chain and key) and the trust bundle.
func loadIdentity(certFile, keyFile, rootsFile string) (tls.Certificate, *x509.CertPool, error) {
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	roots, err := loadRoots(rootsFile)
	return cert, roots, err
}

func loadRoots(path string) (*x509.CertPool, error) {
	pem, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, errors.New("no roots in " + path)
	}
	return pool, nil
}

// spiffeID verifies a chain against the roots (X.509-SVIDs carry no DNS
// name, so the usual host name check cannot apply) and returns the leaf's
// single URI SAN.
func spiffeID(raw [][]byte, roots *x509.CertPool) (string, error) {
	if len(raw) == 0 {
		return "", errors.New("no peer certificate")
	}
	certs := make([]*x509.Certificate, len(raw))
	for i, der := range raw {
		cert, err := x509.ParseCertificate(der)
		if err != nil {
			return "", err
		}
		certs[i] = cert
	}
	intermediates := x509.NewCertPool()
	for _, cert := range certs[1:] {
		intermediates.AddCert(cert)
	}
	if _, err := certs[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: intermediates, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return "", err
	}
	if len(certs[0].URIs) != 1 || certs[0].URIs[0].Scheme != "spiffe" {
		return "", errors.New("leaf has no single spiffe URI SAN")
	}
	return certs[0].URIs[0].String(), nil
}

func client(addr, authority, expected, certFile, keyFile, rootsFile string, reset bool) error {
	cert, roots, err := loadIdentity(certFile, keyFile, rootsFile)
	if err != nil {
		return err
	}
	transport := &http.Transport{
		ForceAttemptHTTP2: true,
		TLSClientConfig: &tls.Config{
			MinVersion:         tls.VersionTLS13,
			Certificates:       []tls.Certificate{cert},
			NextProtos:         []string{"h2"},
			InsecureSkipVerify: true, // replaced by the SPIFFE check below
			VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
				id, err := spiffeID(raw, roots)
				if err != nil {
					return err
				}
				if id != expected {
					return fmt.Errorf("server is %s, expected %s", id, expected)
				}
				return nil
			},
		},
	}
	defer transport.CloseIdleConnections()
	body, writer := io.Pipe()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodConnect, "https://"+addr, body)
	if err != nil {
		return err
	}
	// The HBONE target travels as :authority; Go's HTTP/2 transport sends CONNECT without :scheme and :path.
	req.Host = authority
	req.Header.Set("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
	client := &http.Client{Transport: transport, Timeout: 20 * time.Second}
	res, err := client.Do(req)
	if err != nil {
		return err
	}
	defer res.Body.Close()
	fmt.Printf("status %d\n", res.StatusCode)
	if res.StatusCode != http.StatusOK {
		writer.Close()
		return nil
	}
	if reset {
		if _, err := writer.Write([]byte("x")); err != nil {
			return err
		}
		stdin := bufio.NewReader(os.Stdin)
		if _, err := stdin.ReadString('\n'); err != nil {
			return err
		}
		// A body that fails makes the transport abort the stream with RST_STREAM.
		writer.CloseWithError(errors.New("reset by test"))
		cancel()
		io.Copy(io.Discard, res.Body)
		fmt.Println("cancelled")
		io.Copy(io.Discard, stdin)
		return nil
	}
	if _, err := writer.Write([]byte("hello from go")); err != nil {
		return err
	}
	writer.Close() // END_STREAM: the HBONE server half-closes the upstream connection
	echoed, err := io.ReadAll(res.Body)
	if err != nil {
		return err
	}
	fmt.Printf("body %s\n", echoed)
	return nil
}

type flushWriter struct {
	w http.ResponseWriter
	f http.Flusher
}

func (fw flushWriter) Write(p []byte) (int, error) {
	n, err := fw.w.Write(p)
	fw.f.Flush()
	return n, err
}

func server(listen, certFile, keyFile, rootsFile string) error {
	cert, roots, err := loadIdentity(certFile, keyFile, rootsFile)
	if err != nil {
		return err
	}
	var out sync.Mutex
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodConnect {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		raw := make([][]byte, len(r.TLS.PeerCertificates))
		for i, c := range r.TLS.PeerCertificates {
			raw[i] = c.Raw
		}
		id, err := spiffeID(raw, roots)
		if err != nil {
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		host, port, err := net.SplitHostPort(r.Host)
		if err != nil || net.ParseIP(host) == nil {
			w.WriteHeader(http.StatusBadRequest)
			return
		}
		out.Lock()
		fmt.Printf("connect %s %s\n", id, r.Host)
		out.Unlock()
		upstream, err := net.DialTimeout("tcp", net.JoinHostPort(host, port), 5*time.Second)
		if err != nil {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		defer upstream.Close()
		w.WriteHeader(http.StatusOK)
		flusher := w.(http.Flusher)
		flusher.Flush()
		done := make(chan struct{})
		go func() {
			io.Copy(upstream, r.Body)
			upstream.(*net.TCPConn).CloseWrite()
			close(done)
		}()
		io.Copy(flushWriter{w, flusher}, upstream)
		<-done
	})
	listener, err := net.Listen("tcp", listen)
	if err != nil {
		return err
	}
	srv := &http.Server{
		Handler: handler,
		TLSConfig: &tls.Config{
			MinVersion:   tls.VersionTLS13,
			Certificates: []tls.Certificate{cert},
			ClientAuth:   tls.RequireAndVerifyClientCert,
			ClientCAs:    roots,
			NextProtos:   []string{"h2"},
		},
	}
	fmt.Printf("listening %s\n", listener.Addr())
	return srv.ServeTLS(listener, "", "")
}
