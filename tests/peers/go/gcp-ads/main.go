// Command gcp-ads is a go-control-plane ADS server (SotW and Delta, one LinearCache per type) used as a
// real peer by the Python interop tests and the xDS benchmark.
//
// It serves the resources of a JSON file, prints one line "ready xds=HOST:PORT control=HOST:PORT" on
// stdout once both listeners are bound, and answers on the control port:
//
//	PUT    /resource            body: one entry as in the file; replaces (or adds) that resource
//	PUT    /resources           body: a file; replaces (or adds) all its resources, one cache update per type
//	DELETE /resource?type=T&name=N
//	GET    /requests            every request received so far, one JSON object per line
//	GET    /acks?version=V      how many streams ACKed version V (SotW) or a response carrying V (Delta)
//	GET    /stats               streams open, requests seen
//
// File format: {"resources": [{"name": "optional", "resource": {"@type": "type.googleapis.com/...", ...}}]}.
// The name defaults to what go-control-plane derives for Envoy types.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"sort"
	"sync"
	"syscall"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cache "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	resourcev3 "github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	server "github.com/envoyproxy/go-control-plane/pkg/server/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/anypb"

	// Register the message types a file may name, so protojson can resolve "@type".
	_ "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/tcp_proxy/v3"
	_ "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	_ "istio.io/istio/pkg/workloadapi"
	_ "istio.io/istio/pkg/workloadapi/security"
)

const (
	addressType       = "type.googleapis.com/istio.workload.Address"
	authorizationType = "type.googleapis.com/istio.security.Authorization"
)

type entry struct {
	Name     string          `json:"name,omitempty"`
	Resource json.RawMessage `json:"resource"`
}

type file struct {
	Resources []entry `json:"resources"`
}

// seen is what the control port reports about one request.
type seen struct {
	Stream          int64             `json:"stream"`
	Delta           bool              `json:"delta"`
	Node            string            `json:"node,omitempty"`
	TypeURL         string            `json:"type_url"`
	VersionInfo     string            `json:"version_info,omitempty"`
	Nonce           string            `json:"response_nonce,omitempty"`
	Names           []string          `json:"resource_names,omitempty"`
	Unsubscribe     []string          `json:"unsubscribe,omitempty"`
	InitialVersions map[string]string `json:"initial_resource_versions,omitempty"`
	ErrorCode       int32             `json:"error_code,omitempty"`
	ErrorMessage    string            `json:"error_message,omitempty"`
	AtUnixNano      int64             `json:"at_unix_nano"`
}

type recorder struct {
	mu       sync.Mutex
	requests []seen
	keep     bool
	// nonce -> version of the response sent with it, per stream (Delta ACKs carry only the nonce).
	nonces map[int64]map[string]string
	acks   map[string]int
	open   int
}

func (r *recorder) add(s seen, version string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.keep {
		r.requests = append(r.requests, s)
	}
	if s.Nonce != "" && s.ErrorMessage == "" && s.ErrorCode == 0 && version != "" {
		r.acks[version]++
	}
}

func (r *recorder) deltaVersion(stream int64, nonce string) string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.nonces[stream][nonce]
}

func (r *recorder) sent(stream int64, nonce, version string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	m := r.nonces[stream]
	if m == nil {
		m = map[string]string{}
		r.nonces[stream] = m
	}
	m[nonce] = version
}

func errorDetail(code int32, msg string) (int32, string) { return code, msg }

func callbacks(r *recorder) server.CallbackFuncs {
	return server.CallbackFuncs{
		StreamOpenFunc: func(context.Context, int64, string) error {
			r.mu.Lock()
			r.open++
			r.mu.Unlock()
			return nil
		},
		StreamClosedFunc: func(int64, *core.Node) { r.mu.Lock(); r.open--; r.mu.Unlock() },
		DeltaStreamOpenFunc: func(context.Context, int64, string) error {
			r.mu.Lock()
			r.open++
			r.mu.Unlock()
			return nil
		},
		DeltaStreamClosedFunc: func(id int64, _ *core.Node) {
			r.mu.Lock()
			r.open--
			delete(r.nonces, id)
			r.mu.Unlock()
		},
		StreamRequestFunc: func(id int64, req *discovery.DiscoveryRequest) error {
			s := seen{Stream: id, TypeURL: req.GetTypeUrl(), VersionInfo: req.GetVersionInfo(),
				Nonce: req.GetResponseNonce(), Names: req.GetResourceNames(), Node: req.GetNode().GetId(),
				AtUnixNano: time.Now().UnixNano()}
			if d := req.GetErrorDetail(); d != nil {
				s.ErrorCode, s.ErrorMessage = errorDetail(d.GetCode(), d.GetMessage())
			}
			r.add(s, req.GetVersionInfo())
			return nil
		},
		StreamDeltaRequestFunc: func(id int64, req *discovery.DeltaDiscoveryRequest) error {
			s := seen{Stream: id, Delta: true, TypeURL: req.GetTypeUrl(), Nonce: req.GetResponseNonce(),
				Names: req.GetResourceNamesSubscribe(), Unsubscribe: req.GetResourceNamesUnsubscribe(),
				InitialVersions: req.GetInitialResourceVersions(), Node: req.GetNode().GetId(),
				AtUnixNano: time.Now().UnixNano()}
			if d := req.GetErrorDetail(); d != nil {
				s.ErrorCode, s.ErrorMessage = errorDetail(d.GetCode(), d.GetMessage())
			}
			r.add(s, r.deltaVersion(id, req.GetResponseNonce()))
			return nil
		},
		StreamDeltaResponseFunc: func(id int64, _ *discovery.DeltaDiscoveryRequest, resp *discovery.DeltaDiscoveryResponse) {
			r.sent(id, resp.GetNonce(), resp.GetSystemVersionInfo())
		},
	}
}

// decode turns one file entry into (type URL, name, message).
func decode(e entry) (string, string, types.Resource, error) {
	var a anypb.Any
	if err := protojson.Unmarshal(e.Resource, &a); err != nil {
		return "", "", nil, fmt.Errorf("resource: %w", err)
	}
	msg, err := a.UnmarshalNew()
	if err != nil {
		return "", "", nil, fmt.Errorf("resource %s: %w", a.GetTypeUrl(), err)
	}
	name := e.Name
	if name == "" {
		name = cache.GetResourceName(msg)
	}
	if name == "" {
		return "", "", nil, fmt.Errorf("resource of type %s has no name", a.GetTypeUrl())
	}
	return a.GetTypeUrl(), name, msg, nil
}

func readFile(path string) (map[string]map[string]types.Resource, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var f file
	if err := json.Unmarshal(raw, &f); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	out := map[string]map[string]types.Resource{}
	for _, e := range f.Resources {
		typ, name, msg, err := decode(e)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		if out[typ] == nil {
			out[typ] = map[string]types.Resource{}
		}
		out[typ][name] = msg
	}
	return out, nil
}

func main() {
	xdsAddr := flag.String("xds", "127.0.0.1:0", "ADS gRPC listen address")
	controlAddr := flag.String("control", "127.0.0.1:0", "control HTTP listen address")
	path := flag.String("config", "", "JSON file of resources (required)")
	keep := flag.Bool("record", true, "keep every request for GET /requests (off for benchmarks)")
	flag.Parse()
	if *path == "" {
		log.Fatal("gcp-ads: --config is required")
	}
	initial, err := readFile(*path)
	if err != nil {
		log.Fatalf("gcp-ads: %v", err)
	}
	// Every type a client may ask for gets a cache, so an unknown type answers empty instead of
	// closing the stream (MuxCache fails a watch on a type without a cache).
	typeURLs := []string{resourcev3.ClusterType, resourcev3.ListenerType, resourcev3.RouteType,
		resourcev3.EndpointType, resourcev3.SecretType, resourcev3.RuntimeType, addressType, authorizationType}
	for t := range initial {
		typeURLs = append(typeURLs, t)
	}
	caches := map[string]cache.Cache{}
	linear := map[string]*cache.LinearCache{}
	for _, t := range typeURLs {
		if _, ok := linear[t]; ok {
			continue
		}
		lc := cache.NewLinearCache(t, cache.WithInitialResources(initial[t]))
		linear[t] = lc
		caches[t] = lc
	}
	mux := &cache.MuxCache{
		Classify:      func(r *cache.Request) string { return r.GetTypeUrl() },
		ClassifyDelta: func(r *cache.DeltaRequest) string { return r.GetTypeUrl() },
		Caches:        caches,
	}
	rec := &recorder{keep: *keep, nonces: map[int64]map[string]string{}, acks: map[string]int{}}
	ctx, cancel := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer cancel()
	srv := server.NewServer(ctx, mux, callbacks(rec))

	gs := grpc.NewServer(grpc.MaxConcurrentStreams(1<<20),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: time.Second, PermitWithoutStream: true}))
	discovery.RegisterAggregatedDiscoveryServiceServer(gs, srv)
	xl, err := net.Listen("tcp", *xdsAddr)
	if err != nil {
		log.Fatalf("gcp-ads: %v", err)
	}
	cl, err := net.Listen("tcp", *controlAddr)
	if err != nil {
		log.Fatalf("gcp-ads: %v", err)
	}
	http.HandleFunc("/resource", func(w http.ResponseWriter, req *http.Request) {
		switch req.Method {
		case http.MethodPut, http.MethodPost:
			body, err := io.ReadAll(io.LimitReader(req.Body, 64<<20))
			var e entry
			if err == nil {
				err = json.Unmarshal(body, &e)
			}
			var typ, name string
			var msg types.Resource
			if err == nil {
				typ, name, msg, err = decode(e)
			}
			if err == nil {
				lc, ok := linear[typ]
				if !ok {
					err = fmt.Errorf("no cache for type %s (name it in the initial file)", typ)
				} else {
					err = lc.UpdateResource(name, msg)
				}
			}
			if err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			fmt.Fprintf(w, "%s\n", name)
		case http.MethodDelete:
			lc, ok := linear[req.URL.Query().Get("type")]
			if !ok {
				http.Error(w, "unknown type", http.StatusBadRequest)
				return
			}
			if err := lc.DeleteResource(req.URL.Query().Get("name")); err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
			}
		default:
			http.Error(w, "method", http.StatusMethodNotAllowed)
		}
	})
	http.HandleFunc("/resources", func(w http.ResponseWriter, req *http.Request) {
		body, err := io.ReadAll(io.LimitReader(req.Body, 256<<20))
		var f file
		if err == nil {
			err = json.Unmarshal(body, &f)
		}
		byType := map[string]map[string]types.Resource{}
		for _, e := range f.Resources {
			if err != nil {
				break
			}
			var typ, name string
			var msg types.Resource
			if typ, name, msg, err = decode(e); err == nil {
				if _, ok := linear[typ]; !ok {
					err = fmt.Errorf("no cache for type %s (name it in the initial file)", typ)
				} else if byType[typ] == nil {
					byType[typ] = map[string]types.Resource{}
				}
				if err == nil {
					byType[typ][name] = msg
				}
			}
		}
		for typ, m := range byType {
			if err == nil {
				err = linear[typ].UpdateResources(m, nil)
			}
		}
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		fmt.Fprintf(w, "%d\n", len(f.Resources))
	})
	http.HandleFunc("/requests", func(w http.ResponseWriter, _ *http.Request) {
		rec.mu.Lock()
		list := append([]seen(nil), rec.requests...)
		rec.mu.Unlock()
		enc := json.NewEncoder(w)
		for _, s := range list {
			_ = enc.Encode(s)
		}
	})
	http.HandleFunc("/acks", func(w http.ResponseWriter, req *http.Request) {
		rec.mu.Lock()
		n := rec.acks[req.URL.Query().Get("version")]
		rec.mu.Unlock()
		fmt.Fprintf(w, "%d\n", n)
	})
	http.HandleFunc("/versions", func(w http.ResponseWriter, req *http.Request) {
		lc, ok := linear[req.URL.Query().Get("type")]
		if !ok {
			http.Error(w, "unknown type", http.StatusBadRequest)
			return
		}
		names := []string{}
		for n := range lc.GetResources() {
			names = append(names, n)
		}
		sort.Strings(names)
		_ = json.NewEncoder(w).Encode(names)
	})
	http.HandleFunc("/stats", func(w http.ResponseWriter, _ *http.Request) {
		rec.mu.Lock()
		defer rec.mu.Unlock()
		_ = json.NewEncoder(w).Encode(map[string]int{"open_streams": rec.open, "requests": len(rec.requests)})
	})
	go func() { _ = http.Serve(cl, nil) }()
	go func() {
		if err := gs.Serve(xl); err != nil {
			log.Fatalf("gcp-ads: %v", err)
		}
	}()
	fmt.Printf("ready xds=%s control=%s\n", xl.Addr(), cl.Addr())
	_ = os.Stdout.Sync()
	<-ctx.Done()
	gs.Stop()
}
