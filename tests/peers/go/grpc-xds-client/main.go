// Command grpc-xds-client is grpc-go's proxyless xDS client: it dials xds:///NAME (bootstrap from
// GRPC_XDS_BOOTSTRAP or GRPC_XDS_BOOTSTRAP_CONFIG) and calls one unary method in a loop, printing
// "ok <reply>" or "err <code> <message>" per call, until --duration has passed.
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/encoding"
	"google.golang.org/grpc/status"
	_ "google.golang.org/grpc/xds" // registers the xds:/// resolver and balancers
)

// rawCodec sends and receives message bytes as they are, so no generated stubs are needed.
type rawCodec struct{}

func (rawCodec) Marshal(v any) ([]byte, error) { return *(v.(*[]byte)), nil }
func (rawCodec) Unmarshal(data []byte, v any) error {
	*(v.(*[]byte)) = append([]byte(nil), data...)
	return nil
}
func (rawCodec) Name() string { return "raw" }

var _ encoding.Codec = rawCodec{}

func main() {
	target := flag.String("target", "xds:///echo", "gRPC target")
	method := flag.String("method", "/interop.Echo/Call", "full method name")
	duration := flag.Duration("duration", 30*time.Second, "how long to keep calling")
	interval := flag.Duration("interval", 100*time.Millisecond, "pause between calls")
	flag.Parse()
	conn, err := grpc.NewClient(*target, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		log.Fatalf("grpc-xds-client: %v", err)
	}
	defer conn.Close()
	end := time.Now().Add(*duration)
	for time.Now().Before(end) {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		req := []byte("ping")
		var resp []byte
		err := conn.Invoke(ctx, *method, &req, &resp, grpc.ForceCodec(rawCodec{}))
		cancel()
		if err != nil {
			st := status.Convert(err)
			fmt.Printf("err %s %s\n", st.Code(), strings.ReplaceAll(st.Message(), "\n", " "))
		} else {
			fmt.Printf("ok %s\n", resp)
		}
		time.Sleep(*interval) // call rate of the client under test
	}
}
