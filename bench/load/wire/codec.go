// Package wire is what the bench load generators (cmd/kms-*, cmd/csi-*)
// share: gRPC over a unix socket with protobuf messages encoded by hand (no
// protoc, little client CPU per call), and the shape of their output.
package wire

import (
	"fmt"

	"google.golang.org/grpc/mem"
)

// Codec sends and receives *[]byte as the message bytes, so requests are
// encoded once and responses parsed in place. It is named "proto" so the
// content-type stays application/grpc+proto, which every server accepts.
type Codec struct{}

func (Codec) Name() string { return "proto" }

// Marshal hands gRPC the caller's bytes without copying: a caller must not
// modify them while a call may still read them.
func (Codec) Marshal(v any) (mem.BufferSlice, error) {
	b, ok := v.(*[]byte)
	if !ok {
		return nil, fmt.Errorf("wire.Codec: cannot marshal %T", v)
	}
	return mem.BufferSlice{mem.SliceBuffer(*b)}, nil
}

// Unmarshal copies into the caller's slice, reusing its capacity: gRPC frees
// data once we return.
func (Codec) Unmarshal(data mem.BufferSlice, v any) error {
	b, ok := v.(*[]byte)
	if !ok {
		return fmt.Errorf("wire.Codec: cannot unmarshal into %T", v)
	}
	out := (*b)[:0]
	for _, buf := range data {
		out = append(out, buf.ReadOnlyData()...)
	}
	*b = out
	return nil
}
