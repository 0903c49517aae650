// Command istiod-fake runs istiod's own discovery server (istio.io/istio/pilot/test/xds, the server
// istio's tests use) on a real TCP listener over a fake Kubernetes client, so istiod's real generators
// (WDS Address/Authorization over Delta, CDS/LDS/RDS/EDS, proxyless gRPC) serve real clients.
//
// PILOT_ENABLE_AMBIENT=true must be in the environment (istio reads its feature flags at start-up).
// It prints "ready xds=HOST:PORT control=HOST:PORT" on stdout once serving. The control port:
//
//	PUT    /objects     body: Kubernetes YAML (documents separated by ---); create or update each
//	DELETE /objects     body: Kubernetes YAML; delete each object named
//	GET    /callers     the authorization/clusterid headers of every xDS stream, one JSON object per line
//
// With --token T every xDS stream must carry "authorization: Bearer T" (a stand-in for istiod's
// Kubernetes JWT authenticator, which needs a kube-apiserver); the caller identity is --identity.
package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"

	networkingclient "istio.io/client-go/pkg/apis/networking/v1"
	securityclient "istio.io/client-go/pkg/apis/security/v1"
	"istio.io/istio/pilot/pkg/features"
	"istio.io/istio/pilot/test/xds"
	kubelib "istio.io/istio/pkg/kube"
	"istio.io/istio/pkg/kube/controllers"
	"istio.io/istio/pkg/kube/kclient/clienttest"
	"istio.io/istio/pkg/security"
)

// failer is the test.Failer istio's fake server wants: failures end the process with the message.
type failer struct {
	mu       sync.Mutex
	cleanups []func()
}

func (f *failer) Fail()                   { log.Fatal("istiod-fake: failed") }
func (f *failer) FailNow()                { log.Fatal("istiod-fake: failed") }
func (f *failer) Fatal(args ...any)       { log.Fatal(append([]any{"istiod-fake: "}, args...)...) }
func (f *failer) Fatalf(s string, a ...any) { log.Fatalf("istiod-fake: "+s, a...) }
func (f *failer) Log(args ...any)         { log.Print(args...) }
func (f *failer) Logf(s string, a ...any) { log.Printf(s, a...) }
func (f *failer) Helper()                 {}
func (f *failer) Skip(args ...any)        { f.Fatal(args...) }
func (f *failer) TempDir() string {
	d, err := os.MkdirTemp("", "istiod-fake-")
	if err != nil {
		f.Fatal(err)
	}
	f.Cleanup(func() { _ = os.RemoveAll(d) })
	return d
}
func (f *failer) Cleanup(fn func()) { f.mu.Lock(); f.cleanups = append(f.cleanups, fn); f.mu.Unlock() }
func (f *failer) runCleanups() {
	f.mu.Lock()
	list := f.cleanups
	f.cleanups = nil
	f.mu.Unlock()
	for i := len(list) - 1; i >= 0; i-- {
		list[i]()
	}
}

// callerLog records what each stream presented and, with a token configured, enforces it.
type callerLog struct {
	token, identity string
	mu              sync.Mutex
	seen            []map[string]string
}

func (c *callerLog) AuthenticatorType() string { return "hbone-test-bearer" }

func (c *callerLog) Authenticate(ctx security.AuthContext) (*security.Caller, error) {
	auth := strings.Join(ctx.Header("authorization"), ",")
	c.mu.Lock()
	c.seen = append(c.seen, map[string]string{"authorization": auth,
		"clusterid": strings.Join(ctx.Header("clusterid"), ","), "peer": ctx.RemoteAddress()})
	c.mu.Unlock()
	if c.token == "" {
		return nil, errors.New("no token configured")
	}
	if auth != "Bearer "+c.token {
		return nil, fmt.Errorf("bad bearer token %q", auth)
	}
	return &security.Caller{AuthSource: security.AuthSourceIDToken, Identities: []string{c.identity}}, nil
}

func decode(body []byte) ([]runtime.Object, error) {
	var out []runtime.Object
	dec := kubelib.IstioCodec.UniversalDeserializer()
	for _, doc := range strings.Split(string(body), "\n---") {
		if strings.TrimSpace(doc) == "" {
			continue
		}
		o, _, err := dec.Decode([]byte(doc), nil, nil)
		if err != nil {
			return nil, fmt.Errorf("object: %w", err)
		}
		out = append(out, o)
	}
	return out, nil
}

func write[T controllers.ComparableObject](t *failer, c kubelib.Client, o T, del bool) {
	w := clienttest.NewWriter[T](t, c)
	if del {
		w.Delete(o.GetName(), o.GetNamespace())
	} else {
		w.CreateOrUpdate(o)
	}
}

func apply(t *failer, c kubelib.Client, o runtime.Object, del bool) error {
	switch v := o.(type) {
	case *corev1.Namespace:
		write(t, c, v, del)
	case *corev1.Pod:
		write(t, c, v, del)
	case *corev1.Service:
		write(t, c, v, del)
	case *securityclient.AuthorizationPolicy:
		write(t, c, v, del)
	case *securityclient.PeerAuthentication:
		write(t, c, v, del)
	case *networkingclient.ServiceEntry:
		write(t, c, v, del)
	case *networkingclient.WorkloadEntry:
		write(t, c, v, del)
	default:
		return fmt.Errorf("unsupported object type %T", o)
	}
	return nil
}

func main() {
	xdsAddr := flag.String("xds", "127.0.0.1:0", "xDS gRPC listen address (plaintext, like istiod's 15010)")
	controlAddr := flag.String("control", "127.0.0.1:0", "control HTTP listen address")
	objects := flag.String("objects", "", "YAML file of Kubernetes objects for the fake cluster")
	token := flag.String("token", "", "bearer token every xDS stream must present (empty: no authentication)")
	identity := flag.String("identity", "spiffe://cluster.local/ns/istio-system/sa/ztunnel", "caller identity of --token")
	flag.Parse()
	if !features.EnableAmbient {
		log.Fatal("istiod-fake: PILOT_ENABLE_AMBIENT=true must be set in the environment")
	}
	var body []byte
	if *objects != "" {
		var err error
		if body, err = os.ReadFile(*objects); err != nil {
			log.Fatalf("istiod-fake: %v", err)
		}
	}
	t := &failer{}
	defer t.runCleanups()
	var xl net.Listener
	fake := xds.NewFakeDiscoveryServer(t, xds.FakeOptions{
		KubernetesObjectString: string(bytes.TrimSpace(body)),
		ListenerBuilder: func() (net.Listener, error) {
			l, err := net.Listen("tcp", *xdsAddr)
			xl = l
			return l, err
		},
	})
	callers := &callerLog{token: *token, identity: *identity}
	fake.Discovery.Authenticators = []security.Authenticator{callers}
	kc := fake.KubeClient()

	cl, err := net.Listen("tcp", *controlAddr)
	if err != nil {
		log.Fatalf("istiod-fake: %v", err)
	}
	http.HandleFunc("/objects", func(w http.ResponseWriter, req *http.Request) {
		raw, err := io.ReadAll(io.LimitReader(req.Body, 16<<20))
		var objs []runtime.Object
		if err == nil {
			objs, err = decode(raw)
		}
		for _, o := range objs {
			if err == nil {
				err = apply(t, kc, o, req.Method == http.MethodDelete)
			}
		}
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		fmt.Fprintf(w, "%d\n", len(objs))
	})
	http.HandleFunc("/callers", func(w http.ResponseWriter, _ *http.Request) {
		callers.mu.Lock()
		list := append([]map[string]string(nil), callers.seen...)
		callers.mu.Unlock()
		enc := json.NewEncoder(w)
		for _, s := range list {
			_ = enc.Encode(s)
		}
	})
	go func() { _ = http.Serve(cl, nil) }()
	fmt.Printf("ready xds=%s control=%s\n", xl.Addr(), cl.Addr())
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	<-stop
}
