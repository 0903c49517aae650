// Command istiod-fake runs istiod's own discovery server (istio.io/istio/pilot/test/xds, the server
// istio's tests use) on a real TCP listener over a fake Kubernetes client, so istiod's real generators
// (WDS Address/Authorization over Delta, CDS/LDS/RDS/EDS, proxyless gRPC) serve real clients.
//
// PILOT_ENABLE_AMBIENT=true must be in the environment (istio reads its feature flags at start-up).
// --xds serves istiod's discovery service plaintext (like 15010). With --tls-cert/--tls-key it is TLS instead and,
// with --cacerts DIR (plugged-in ca-cert.pem, ca-key.pem, root-cert.pem, cert-chain.pem), also serves istio's CA
// (security/pkg/server/ca) on the same port, like istiod's 15012: CSRs are authenticated by --token (see below)
// and a trusted node account (CA_TRUSTED_NODE_ACCOUNTS, e.g. istio-system/ztunnel) may impersonate the service
// accounts of pods on its node, checked by istio's own node authorizer against the fake cluster's pods.
//
// It prints "ready xds=HOST:PORT control=HOST:PORT" on stdout once serving. The control port:
//
//	PUT    /objects     body: Kubernetes YAML (documents separated by ---); create or update each
//	DELETE /objects     body: Kubernetes YAML; delete each object named
//	GET    /callers     the authorization/clusterid headers of every xDS stream, one JSON object per line
//
// With --token T every xDS stream and CSR must carry "authorization: Bearer T" (a stand-in for istiod's
// Kubernetes JWT authenticator, which needs a kube-apiserver): the caller is the pod --pod NS/NAME of the fake
// cluster, with the SPIFFE identity of its service account, as a projected token's claims would say.
package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
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
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/test/bufconn"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"

	networkingclient "istio.io/client-go/pkg/apis/networking/v1"
	securityclient "istio.io/client-go/pkg/apis/security/v1"
	"istio.io/istio/pilot/pkg/features"
	"istio.io/istio/pilot/test/xds"
	"istio.io/istio/pkg/cluster"
	"istio.io/istio/pkg/config/constants"
	kubelib "istio.io/istio/pkg/kube"
	"istio.io/istio/pkg/kube/controllers"
	"istio.io/istio/pkg/kube/kclient/clienttest"
	"istio.io/istio/pkg/kube/multicluster"
	"istio.io/istio/pkg/security"
	"istio.io/istio/pkg/test"
	"istio.io/istio/security/pkg/pki/ca"
	caserver "istio.io/istio/security/pkg/server/ca"
	"istio.io/istio/security/pkg/server/ca/authenticate"
)

// failer is the test.Failer istio's fake server wants: failures end the process with the message.
type failer struct {
	mu       sync.Mutex
	cleanups []func()
}

func (f *failer) Fail()                     { log.Fatal("istiod-fake: failed") }
func (f *failer) FailNow()                  { log.Fatal("istiod-fake: failed") }
func (f *failer) Fatal(args ...any)         { log.Fatal(append([]any{"istiod-fake: "}, args...)...) }
func (f *failer) Fatalf(s string, a ...any) { log.Fatalf("istiod-fake: "+s, a...) }
func (f *failer) Log(args ...any)           { log.Print(args...) }
func (f *failer) Logf(s string, a ...any)   { log.Printf(s, a...) }
func (f *failer) Helper()                   {}
func (f *failer) Skip(args ...any)          { f.Fatal(args...) }
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
	token    string
	pod      string // NS/NAME of the caller's pod in the fake cluster
	kc       kubelib.Client
	trustDom string
	mu       sync.Mutex
	seen     []map[string]string
}

func (c *callerLog) AuthenticatorType() string { return "hbone-test-bearer" }

func (c *callerLog) Authenticate(ctx security.AuthContext) (*security.Caller, error) {
	auth := strings.Join(ctx.Header("authorization"), ",")
	c.mu.Lock()
	c.seen = append(c.seen, map[string]string{"authorization": auth,
		"clusterid": strings.Join(ctx.Header("clusterid"), ","), "peer": ctx.RemoteAddress()})
	c.mu.Unlock()
	if c.token == "" {
		return nil, errors.New("no bearer token configured")
	}
	if auth != "Bearer "+c.token {
		return nil, fmt.Errorf("bad bearer token %q", auth)
	}
	ns, name, _ := strings.Cut(c.pod, "/")
	pod, err := c.kc.Kube().CoreV1().Pods(ns).Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("token pod %s: %v", c.pod, err)
	}
	sa := pod.Spec.ServiceAccountName
	return &security.Caller{
		AuthSource: security.AuthSourceIDToken,
		Identities: []string{fmt.Sprintf("spiffe://%s/ns/%s/sa/%s", c.trustDom, ns, sa)},
		KubernetesInfo: security.KubernetesInfo{PodName: name, PodNamespace: ns, PodUID: string(pod.UID),
			PodServiceAccount: sa},
	}, nil
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
	xdsAddr := flag.String("xds", "127.0.0.1:0", "xDS gRPC listen address (plaintext like 15010, or TLS with --tls-cert)")
	controlAddr := flag.String("control", "127.0.0.1:0", "control HTTP listen address")
	objects := flag.String("objects", "", "YAML file of Kubernetes objects for the fake cluster")
	token := flag.String("token", "", "bearer token every xDS stream and CSR must present (empty: no authentication)")
	pod := flag.String("pod", "istio-system/ztunnel", "NS/NAME of the pod --token belongs to")
	tlsCert := flag.String("tls-cert", "", "serving certificate chain (PEM): serve TLS like 15012")
	tlsKey := flag.String("tls-key", "", "serving key (PEM)")
	cacerts := flag.String("cacerts", "", "plugged-in CA directory: serve istio's CA too (needs --tls-cert)")
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
	// The fake serves on an in-memory listener nobody uses; the real listener below gets its own gRPC server,
	// so the CA can share the port with discovery as on istiod's 15012.
	fake := xds.NewFakeDiscoveryServer(t, xds.FakeOptions{
		KubernetesObjectString: string(bytes.TrimSpace(body)),
		ListenerBuilder:        func() (net.Listener, error) { return bufconn.Listen(1 << 20), nil },
	})
	kc := fake.KubeClient()
	callers := &callerLog{token: *token, pod: *pod, kc: kc, trustDom: "cluster.local"}
	// As istiod: the recorder (which checks the bearer token, standing in for the Kubernetes JWT authenticator),
	// then istio's client-certificate authenticator (callers with a certificate from the mesh root).
	authn := []security.Authenticator{callers, &authenticate.ClientCertAuthenticator{}}
	if *token != "" {
		// istio skips authentication on plaintext connections unless told otherwise.
		security.AuthPlaintext = true
	}
	fake.Discovery.Authenticators = authn

	var opts []grpc.ServerOption
	if *tlsCert != "" {
		cert, err := tls.LoadX509KeyPair(*tlsCert, *tlsKey)
		if err != nil {
			log.Fatalf("istiod-fake: %v", err)
		}
		cfg := &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{"h2"}, MinVersion: tls.VersionTLS12}
		if *cacerts != "" {
			// istiod's 15012: a client certificate is optional, and verified against the mesh root when given.
			root, err := os.ReadFile(*cacerts + "/root-cert.pem")
			if err != nil {
				log.Fatalf("istiod-fake: %v", err)
			}
			pool := x509.NewCertPool()
			pool.AppendCertsFromPEM(root)
			cfg.ClientCAs, cfg.ClientAuth = pool, tls.VerifyClientCertIfGiven
		}
		opts = append(opts, grpc.Creds(credentials.NewTLS(cfg)))
	}
	gs := grpc.NewServer(opts...)
	fake.Discovery.Register(gs)
	if *cacerts != "" {
		if *tlsCert == "" {
			log.Fatal("istiod-fake: --cacerts needs --tls-cert/--tls-key (the CA is served over TLS, as on 15012)")
		}
		dir := *cacerts
		caOpts, err := ca.NewPluggedCertIstioCAOptions(ca.SigningCAFileBundle{
			RootCertFile: dir + "/root-cert.pem", CertChainFiles: []string{dir + "/cert-chain.pem"},
			SigningCertFile: dir + "/ca-cert.pem", SigningKeyFile: dir + "/ca-key.pem",
		}, 24*time.Hour, 90*24*time.Hour, 2048)
		if err != nil {
			log.Fatalf("istiod-fake: CA: %v", err)
		}
		istioCA, err := ca.NewIstioCA(caOpts)
		if err != nil {
			log.Fatalf("istiod-fake: CA: %v", err)
		}
		mc := multicluster.NewFakeController()
		cas, err := caserver.New(istioCA, 24*time.Hour, authn, mc)
		if err != nil {
			log.Fatalf("istiod-fake: CA: %v", err)
		}
		stop := test.NewStop(t)
		mc.Add(cluster.ID(constants.DefaultClusterName), kc, stop)
		kc.RunAndWait(stop) // start the pod informer istio's node authorizer just created
		cas.Register(gs)
	}
	xl, err := net.Listen("tcp", *xdsAddr)
	if err != nil {
		log.Fatalf("istiod-fake: %v", err)
	}
	go func() { _ = gs.Serve(xl) }()
	defer gs.Stop()

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
	stopSig := make(chan os.Signal, 1)
	signal.Notify(stopSig, syscall.SIGTERM, syscall.SIGINT)
	<-stopSig
}
