// modelyard-grpc-front answers V2 gRPC for one `modelyard serve` process.
//
// Python's gRPC server spends more time per call than a light model's prediction
// takes. This front end does the HTTP/2 and gRPC work in Go and hands each ModelInfer
// request, as its protobuf bytes, to the Python process over a Unix socket (the
// "infer" socket); the reply comes back the same way. Every other method (metadata,
// readiness, the model repository, streams) is proxied unchanged to the process's own
// gRPC server on a second Unix socket, so one port serves the whole V2 API.
//
// Infer socket frames, little-endian:
//
//	request: u32 length | u32 metadata length | metadata | ModelInferRequest bytes
//	reply:   u32 length | u8 gRPC code | u32 metadata length | trailing metadata |
//	         ModelInferResponse bytes (code 0) or the error's message
//	metadata: repeated (u16 key length | key | u32 value length | value)
//
// A call whose metadata is over --max-metadata-bytes is refused by gRPC itself; a key
// longer than the frame's 16-bit length holds (only under a raised limit) is refused
// with INVALID_ARGUMENT, never cut short.
package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"os"
	"os/signal"
	"runtime/debug"
	"strings"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
)

const modelInfer = "/inference.GRPCInferenceService/ModelInfer"

// rawCodec passes messages through as bytes: the front end never decodes them.
// Registered as "proto", it serves both the listener and the proxy's client.
type rawCodec struct{}

func (rawCodec) Marshal(v interface{}) ([]byte, error) { return *(v.(*[]byte)), nil }
func (rawCodec) Unmarshal(data []byte, v interface{}) error {
	*(v.(*[]byte)) = data
	return nil
}
func (rawCodec) Name() string { return "proto" }

// inferConn is one Unix connection to the process, carrying one call at a time.
type inferConn struct {
	conn net.Conn
	r    *bufio.Reader
}

type front struct {
	inferPath string
	idle      chan *inferConn
	backend   *grpc.ClientConn
	// With --tls-client-ca, every call but the health probes needs a verified client
	// certificate (a probe sends none). Tokens are checked by the process.
	clientCA bool
}

const healthPrefix = "/grpc.health.v1.Health/"

// verifiedClient tells whether the call's connection carried a client certificate
// that TLS verified against the client CA.
func verifiedClient(ctx context.Context) bool {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return false
	}
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	return ok && len(info.State.VerifiedChains) > 0
}

// tlsConfig is the port's TLS from a PEM pair, asking for client certificates signed
// by clientCA (when given) and verifying those sent.
func tlsConfig(certFile, keyFile, clientCA string) (*tls.Config, error) {
	pair, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("--tls-cert %s / --tls-key %s: %v", certFile, keyFile, err)
	}
	config := &tls.Config{Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS12}
	if clientCA != "" {
		pem, err := os.ReadFile(clientCA)
		if err != nil {
			return nil, err
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("--tls-client-ca %s: no PEM certificate in it", clientCA)
		}
		config.ClientCAs = pool
		config.ClientAuth = tls.VerifyClientCertIfGiven
	}
	return config, nil
}

func (f *front) take() (*inferConn, error) {
	select {
	case c := <-f.idle:
		return c, nil
	default:
		conn, err := net.Dial("unix", f.inferPath)
		if err != nil {
			return nil, err
		}
		return &inferConn{conn, bufio.NewReaderSize(conn, 64*1024)}, nil
	}
}

func (f *front) give(c *inferConn) {
	select {
	case f.idle <- c:
	default: // more idle connections than calls in flight recently
		c.conn.Close()
	}
}

// pseudoHeader tells HTTP/2's pseudo-headers (":authority"), which gRPC puts among
// the client's metadata, from the metadata the client sent: they are not passed on.
func pseudoHeader(key string) bool { return strings.HasPrefix(key, ":") }

const maxKeyLength = 1<<16 - 1

func appendMetadata(buf []byte, md metadata.MD) ([]byte, error) {
	for key, values := range md {
		if pseudoHeader(key) {
			continue
		}
		if len(key) > maxKeyLength {
			return nil, status.Errorf(codes.InvalidArgument,
				"metadata key of %d bytes is longer than the %d bytes allowed; use a shorter key",
				len(key), maxKeyLength)
		}
		for _, v := range values {
			buf = binary.LittleEndian.AppendUint16(buf, uint16(len(key)))
			buf = append(buf, key...)
			buf = binary.LittleEndian.AppendUint32(buf, uint32(len(v)))
			buf = append(buf, v...)
		}
	}
	return buf, nil
}

func parseMetadata(b []byte) (metadata.MD, error) {
	md := metadata.MD{}
	for len(b) > 0 {
		if len(b) < 2 {
			return nil, errors.New("truncated metadata")
		}
		kl := int(binary.LittleEndian.Uint16(b))
		if len(b) < 2+kl+4 {
			return nil, errors.New("truncated metadata")
		}
		key := string(b[2 : 2+kl])
		vl := int(binary.LittleEndian.Uint32(b[2+kl:]))
		b = b[2+kl+4:]
		if len(b) < vl {
			return nil, errors.New("truncated metadata")
		}
		md.Append(key, string(b[:vl]))
		b = b[vl:]
	}
	return md, nil
}

// call hands one request to the process and reads its reply.
func (f *front) call(md metadata.MD, request []byte) (byte, metadata.MD, []byte, error) {
	head, err := appendMetadata(make([]byte, 8, 256), md)
	if err != nil {
		return 0, nil, nil, err
	}
	c, err := f.take()
	if err != nil {
		return 0, nil, nil, err
	}
	binary.LittleEndian.PutUint32(head[4:], uint32(len(head)-8))
	binary.LittleEndian.PutUint32(head, uint32(len(head)-4+len(request)))
	// Written together with one system call, without copying the request after it.
	frame := net.Buffers{head, request}
	if _, err := frame.WriteTo(c.conn); err != nil {
		c.conn.Close()
		return 0, nil, nil, err
	}
	var replyHead [9]byte
	if _, err := io.ReadFull(c.r, replyHead[:]); err != nil {
		c.conn.Close()
		return 0, nil, nil, err
	}
	reply := make([]byte, binary.LittleEndian.Uint32(replyHead[:4])-5)
	if _, err := io.ReadFull(c.r, reply); err != nil {
		c.conn.Close()
		return 0, nil, nil, err
	}
	f.give(c)
	mdLen := binary.LittleEndian.Uint32(replyHead[5:])
	if int(mdLen) > len(reply) {
		return 0, nil, nil, errors.New("reply metadata longer than the reply")
	}
	trailer, err := parseMetadata(reply[:mdLen])
	if err != nil {
		return 0, nil, nil, err
	}
	return replyHead[4], trailer, reply[mdLen:], nil
}

func (f *front) handle(_ interface{}, stream grpc.ServerStream) error {
	method, _ := grpc.MethodFromServerStream(stream)
	if f.clientCA && !strings.HasPrefix(method, healthPrefix) && !verifiedClient(stream.Context()) {
		return status.Error(codes.Unauthenticated, "this server needs a client certificate "+
			"signed by its --tls-client-ca: connect over TLS with one")
	}
	if method != modelInfer {
		return f.proxy(method, stream)
	}
	var request []byte
	if err := stream.RecvMsg(&request); err != nil {
		return err
	}
	md, _ := metadata.FromIncomingContext(stream.Context())
	code, trailer, body, err := f.call(md, request)
	if err != nil {
		if _, refused := status.FromError(err); refused {
			return err
		}
		return status.Errorf(codes.Unavailable, "modelyard: the server process did not answer: %v", err)
	}
	stream.SetTrailer(trailer)
	if code != 0 {
		return status.Error(codes.Code(code), string(body))
	}
	return stream.SendMsg(&body)
}

// proxy relays any other call, streams included, to the process's gRPC server.
func (f *front) proxy(method string, stream grpc.ServerStream) error {
	md, _ := metadata.FromIncomingContext(stream.Context())
	out := metadata.MD{}
	for key, values := range md {
		if !pseudoHeader(key) {
			out[key] = values
		}
	}
	ctx, cancel := context.WithCancel(metadata.NewOutgoingContext(stream.Context(), out))
	defer cancel()
	desc := &grpc.StreamDesc{ServerStreams: true, ClientStreams: true}
	client, err := f.backend.NewStream(ctx, desc, method)
	if err != nil {
		return err
	}
	go func() {
		for {
			var msg []byte
			if err := stream.RecvMsg(&msg); err != nil {
				if err == io.EOF {
					client.CloseSend()
				} else {
					cancel()
				}
				return
			}
			if err := client.SendMsg(&msg); err != nil {
				return
			}
		}
	}()
	header, err := client.Header()
	if err == nil {
		stream.SendHeader(header)
	}
	for {
		var msg []byte
		if err := client.RecvMsg(&msg); err != nil {
			stream.SetTrailer(client.Trailer())
			if err == io.EOF {
				return nil
			}
			return err
		}
		if err := stream.SendMsg(&msg); err != nil {
			return err
		}
	}
}

func listen(address string) (net.Listener, error) {
	// Several server processes share the port; the kernel spreads connections.
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var opErr error
		err := c.Control(func(fd uintptr) {
			opErr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, 0xf /* SO_REUSEPORT */, 1)
		})
		if err != nil {
			return err
		}
		return opErr
	}}
	return lc.Listen(context.Background(), "tcp", address)
}

func main() {
	address := flag.String("listen", "127.0.0.1:8081", "address the gRPC port listens on")
	inferPath := flag.String("infer", "", "Unix socket of the process's ModelInfer handler")
	backendPath := flag.String("backend", "", "Unix socket of the process's gRPC server")
	maxBytes := flag.Int("max-message-bytes", 64<<20, "largest request or response")
	maxMetadata := flag.Uint("max-metadata-bytes", 16<<10, "largest metadata (headers) of one call")
	tlsCert := flag.String("tls-cert", "", "PEM certificate of the port's TLS (with --tls-key)")
	tlsKey := flag.String("tls-key", "", "PEM private key of --tls-cert")
	tlsClientCA := flag.String("tls-client-ca", "", "PEM CA that client certificates must be signed by")
	flag.Parse()
	log.SetPrefix("modelyard-grpc-front: ")
	// The front end's live heap is a few MB, and with Go's default GC target the
	// garbage of 1,000-row requests starts a collection every few calls; a higher
	// target gives 1.03-1.10x the requests/s at 1,000 rows (make bench's GOGC=100
	// row), and the soft limit keeps a run of large messages from growing the heap
	// 9-fold. GOGC and GOMEMLIMIT in the environment still decide.
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(800)
	}
	if os.Getenv("GOMEMLIMIT") == "" {
		debug.SetMemoryLimit(8 * int64(*maxBytes))
	}
	encoding.RegisterCodec(rawCodec{})
	// The process that started this one says when its sockets are up: a line on stdin.
	stdin := bufio.NewReader(os.Stdin)
	if _, err := stdin.ReadString('\n'); err != nil {
		return
	}
	backend, err := grpc.Dial("unix://"+*backendPath, grpc.WithInsecure(),
		grpc.WithDefaultCallOptions(grpc.WaitForReady(true),
			grpc.MaxCallRecvMsgSize(*maxBytes), grpc.MaxCallSendMsgSize(*maxBytes)))
	if err != nil {
		log.Fatal(err)
	}
	f := &front{inferPath: *inferPath, idle: make(chan *inferConn, 256), backend: backend,
		clientCA: *tlsClientCA != ""}
	lis, err := listen(*address)
	if err != nil {
		log.Fatalf("cannot listen on %s: %v", *address, err)
	}
	var creds []grpc.ServerOption
	if *tlsCert != "" {
		config, err := tlsConfig(*tlsCert, *tlsKey, *tlsClientCA)
		if err != nil {
			log.Fatal(err)
		}
		creds = append(creds, grpc.Creds(credentials.NewTLS(config)))
	}
	server := grpc.NewServer(append(creds,
		grpc.UnknownServiceHandler(f.handle),
		grpc.MaxRecvMsgSize(*maxBytes),
		grpc.MaxSendMsgSize(*maxBytes),
		grpc.MaxHeaderListSize(uint32(*maxMetadata)),
		// Fixed flow-control windows large enough for a 1,000-row request: with the
		// default 64 KB and its estimate of the link, a request waited for window
		// updates, and every request cost a ping (with the writev in call: about 1.08x
		// the requests/s at 1,000 rows, 1.05x at one row).
		grpc.InitialWindowSize(1<<20),
		grpc.InitialConnWindowSize(4<<20),
	)...)
	stop := func(grace time.Duration) {
		done := make(chan struct{})
		go func() { server.GracefulStop(); close(done) }()
		select {
		case <-done:
		case <-time.After(grace):
			server.Stop()
		}
		os.Exit(0)
	}
	// Its lifetime is that of the process that started it, which holds its stdin and
	// closes it to stop it, after a line "stop <seconds>" giving the time the calls in
	// flight have to finish. A Ctrl-C or SIGTERM sent to the whole process group must
	// not close the port while that process still drains its calls.
	signal.Ignore(syscall.SIGINT, syscall.SIGTERM)
	go func() {
		grace := 5 * time.Second
		for {
			line, err := stdin.ReadString('\n')
			var seconds float64
			if _, scanErr := fmt.Sscanf(line, "stop %g", &seconds); scanErr == nil {
				grace = time.Duration(seconds * float64(time.Second))
			}
			if err != nil {
				break
			}
		}
		stop(grace)
	}()
	// The process that started this one waits for this line.
	fmt.Printf("listening on %s\n", lis.Addr())
	log.Fatal(server.Serve(lis))
}
