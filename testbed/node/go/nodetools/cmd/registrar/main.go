// Test-only stand-in for node-driver-registrar (the Go module proxy refuses that module): it asks
// the CSI driver its name and registers it with kubelet through the plugin registration API.
package main

import (
	"context"
	"flag"
	"log"
	"net"
	"os"
	"os/signal"
	"syscall"
	"time"

	csi "github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	registration "k8s.io/kubelet/pkg/apis/pluginregistration/v1"
)

type registrar struct {
	registration.UnimplementedRegistrationServer
	name, endpoint string
}

func (r *registrar) GetInfo(context.Context, *registration.InfoRequest) (*registration.PluginInfo, error) {
	return &registration.PluginInfo{
		Type:              registration.CSIPlugin,
		Name:              r.name,
		Endpoint:          r.endpoint,
		SupportedVersions: []string{"1.0.0"},
	}, nil
}

func (r *registrar) NotifyRegistrationStatus(_ context.Context, s *registration.RegistrationStatus) (*registration.RegistrationStatusResponse, error) {
	if s.PluginRegistered {
		log.Printf("kubelet registered %s", r.name)
	} else {
		log.Printf("kubelet refused %s: %s", r.name, s.Error)
	}
	return &registration.RegistrationStatusResponse{}, nil
}

// driverName asks the driver for its name, retrying until it answers: the driver may still be
// starting. A new connection per attempt: one connection's reconnect backoff grows to minutes.
func driverName(ctx context.Context, csiAddress string) (string, error) {
	for {
		name, err := getPluginName(ctx, csiAddress)
		if err == nil {
			return name, nil
		}
		log.Printf("waiting for the CSI driver at %s: %v", csiAddress, err)
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case <-time.After(500 * time.Millisecond):
		}
	}
}

func getPluginName(ctx context.Context, csiAddress string) (string, error) {
	conn, err := grpc.NewClient("unix://"+csiAddress, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return "", err
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	info, err := csi.NewIdentityClient(conn).GetPluginInfo(ctx, &csi.GetPluginInfoRequest{})
	if err != nil {
		return "", err
	}
	return info.GetName(), nil
}

func main() {
	csiAddress := flag.String("csi-address", "", "path of the CSI driver's socket")
	registrationSocket := flag.String("registration-socket", "", "socket to serve kubelet's registration API on (in kubelet's plugins_registry)")
	kubeletPath := flag.String("kubelet-registration-path", "", "the driver socket's path as kubelet sees it (default: --csi-address)")
	flag.Parse()
	if *csiAddress == "" || *registrationSocket == "" {
		log.Fatal("--csi-address and --registration-socket are required")
	}
	if *kubeletPath == "" {
		*kubeletPath = *csiAddress
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	name, err := driverName(ctx, *csiAddress)
	if err != nil {
		return // stopped before the driver answered
	}

	// A socket left by a killed registrar would make Listen fail.
	if err := os.Remove(*registrationSocket); err != nil && !os.IsNotExist(err) {
		log.Fatal(err)
	}
	listener, err := net.Listen("unix", *registrationSocket)
	if err != nil {
		log.Fatal(err)
	}
	server := grpc.NewServer()
	registration.RegisterRegistrationServer(server, &registrar{name: name, endpoint: *kubeletPath})
	go func() {
		<-ctx.Done()
		server.Stop()
	}()
	log.Printf("serving registration of %s (endpoint %s) on %s", name, *kubeletPath, *registrationSocket)
	err = server.Serve(listener)
	// kubelet drops the plugin when its registration socket goes away.
	os.Remove(*registrationSocket)
	if err != nil {
		log.Fatal(err)
	}
}
