package wire

import (
	"fmt"
	"os"
	"path/filepath"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// UnixTarget checks that socket is a unix socket and returns its gRPC target.
// gRPC dials lazily, so without this check a missing plugin would only show
// as failed (or, with wait-for-ready, stalled) calls.
func UnixTarget(socket string) (string, error) {
	path, err := filepath.Abs(socket)
	if err != nil {
		return "", fmt.Errorf("socket path %q: %v", socket, err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		return "", fmt.Errorf("cannot connect: socket %s: %v", path, err)
	}
	if fi.Mode()&os.ModeSocket == 0 {
		return "", fmt.Errorf("cannot connect: %s is not a unix socket", path)
	}
	return "unix://" + path, nil
}

// NewClient creates a client for target that passes raw bytes (Codec) in
// plaintext, as the plugins' real callers do on a local socket; opts add to
// that.
func NewClient(target string, opts ...grpc.DialOption) (*grpc.ClientConn, error) {
	opts = append([]grpc.DialOption{
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithDefaultCallOptions(grpc.ForceCodecV2(Codec{})),
	}, opts...)
	conn, err := grpc.NewClient(target, opts...)
	if err != nil {
		return nil, fmt.Errorf("cannot create a gRPC client for %s: %v", target, err)
	}
	return conn, nil
}
