package wire

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"
)

// MountMethod is the one call the Secrets Store CSI driver makes per volume mount.
const MountMethod = "/v1alpha1.CSIDriverProvider/Mount"

// MountRequest is one line of a requests file; the JSON names are the proto's.
type MountRequest struct {
	Attributes string `json:"attributes"`
	Secrets    string `json:"secrets"`
	TargetPath string `json:"target_path"`
	Permission string `json:"permission"`
}

// Encode is MountRequest: attributes = 1, secrets = 2, target_path = 3,
// permission = 4; current_object_version (5) stays empty, as driver v1.6 sends it.
func (r MountRequest) Encode() []byte {
	var b []byte
	b = AppendStringField(b, 1, r.Attributes)
	b = AppendStringField(b, 2, r.Secrets)
	b = AppendStringField(b, 3, r.TargetPath)
	b = AppendStringField(b, 4, r.Permission)
	return b
}

// ReadMountRequests reads a JSON array of MountRequests and encodes each once.
func ReadMountRequests(path string) ([][]byte, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading the requests: %v", err)
	}
	var parsed []MountRequest
	if err := json.Unmarshal(data, &parsed); err != nil {
		return nil, fmt.Errorf("%s is not a JSON array of MountRequests: %v", path, err)
	}
	if len(parsed) == 0 {
		return nil, fmt.Errorf("%s holds no requests", path)
	}
	reqs := make([][]byte, len(parsed))
	for i, r := range parsed {
		if r.Attributes == "" || r.TargetPath == "" {
			return nil, fmt.Errorf("%s: request %d has no attributes or target_path", path, i)
		}
		reqs[i] = r.Encode()
	}
	return reqs, nil
}

// DialCSIProvider connects as the CSI driver does: insecure, authority "localhost".
func DialCSIProvider(socket string) (*grpc.ClientConn, error) {
	target, err := UnixTarget(socket)
	if err != nil {
		return nil, err
	}
	return NewClient(target, grpc.WithAuthority("localhost"))
}

// Mount makes one call and returns "" when the provider served the files
// expected, else the MountResponse error code, "grpc:<Code>" for a gRPC
// failure, or "client:..." for a response that is not what a served mount
// looks like. timeout 0 means none.
func Mount(conn *grpc.ClientConn, req []byte, timeout time.Duration, expectFiles int) string {
	ctx := context.Background()
	if timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	}
	var resp []byte
	if err := conn.Invoke(ctx, MountMethod, &req, &resp, grpc.WaitForReady(true)); err != nil {
		return "grpc:" + status.Code(err).String()
	}
	return checkMount(resp, expectFiles)
}

// checkMount reads a MountResponse (object_version = 1, error = 2 {code = 1},
// files = 3 {path = 1, mode = 2, contents = 3}).
func checkMount(resp []byte, expectFiles int) string {
	var code string
	versions, files, emptyFiles := 0, 0, 0
	err := WalkFields(resp, func(num protowire.Number, val []byte) {
		switch num {
		case 1:
			versions++
		case 2:
			_ = WalkFields(val, func(n protowire.Number, v []byte) {
				if n == 1 {
					code = string(v)
				}
			})
		case 3:
			files++
			var contents []byte
			_ = WalkFields(val, func(n protowire.Number, v []byte) {
				if n == 3 {
					contents = v
				}
			})
			if len(contents) == 0 {
				emptyFiles++
			}
		}
	})
	switch {
	case err != nil:
		return "client:MalformedResponse"
	case code != "":
		return code
	case files == 0 || (expectFiles > 0 && files != expectFiles):
		return "client:UnexpectedFileCount"
	case versions == 0:
		return "client:NoObjectVersion"
	case emptyFiles > 0:
		return "client:EmptyFile"
	}
	return ""
}
