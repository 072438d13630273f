package wire

import "google.golang.org/protobuf/encoding/protowire"

// Both plugins' messages are strings, bytes and nested messages only, so the
// helpers below handle length-delimited fields and skip everything else.

// AppendBytesField appends v as field num, even when empty (map entries carry
// empty values too).
func AppendBytesField(b []byte, num protowire.Number, v []byte) []byte {
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendBytes(b, v)
}

// AppendStringField appends v as field num, or nothing when v is empty, as a
// proto3 encoder does, so requests match the real client's byte for byte.
func AppendStringField(b []byte, num protowire.Number, v string) []byte {
	if v == "" {
		return b
	}
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendString(b, v)
}

// WalkFields calls fn for each length-delimited field of msg and skips the
// others. The value slices alias msg.
func WalkFields(msg []byte, fn func(num protowire.Number, val []byte)) error {
	for len(msg) > 0 {
		num, typ, n := protowire.ConsumeTag(msg)
		if n < 0 {
			return protowire.ParseError(n)
		}
		msg = msg[n:]
		if typ == protowire.BytesType {
			val, m := protowire.ConsumeBytes(msg)
			if m < 0 {
				return protowire.ParseError(m)
			}
			fn(num, val)
			msg = msg[m:]
			continue
		}
		m := protowire.ConsumeFieldValue(num, typ, msg)
		if m < 0 {
			return protowire.ParseError(m)
		}
		msg = msg[m:]
	}
	return nil
}
