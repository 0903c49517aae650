#!/usr/bin/env bash
# Build the Go test peers of tests/peers/go (go-control-plane ADS server, grpc-go xDS client, istiod's
# discovery server and CA on a fake cluster, istio's echo client/server, h2spec).
#
#   tools/go-peers.sh dir     print the directory the binaries of this source tree live in (builds nothing)
#   tools/go-peers.sh build   build them there unless already built (idempotent; a few ms when done)
#   tools/go-peers.sh check   exit 1 unless every binary is there
#
# The directory is outside the source tree, keyed by a hash of go.mod, go.sum, every .go file, the Go
# version and the build flags: ${HBONE_PEERS_CACHE:-~/.cache/hbone-peers}/go/<hash>. Go's own module and
# build caches (GOMODCACHE, GOCACHE) are left where Go keeps them, so a source change rebuilds only what
# changed. Versions are pinned by go.mod/go.sum; -mod=readonly makes a stale go.sum an error, not a download.
# A program that failed to build leaves NAME.failed (its log) there and is not retried for the same sources;
# delete that file to retry.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SRC="$ROOT/tests/peers/go"
TAGS="vtprotobuf,disable_pgv"   # how istio builds its binaries
# istiod-fake links istio's test helpers (pilot/test/xdstest), which call the protoc-gen-validate methods that
# disable_pgv compiles out: it is built like istio's tests are.
TEST_TAGS="vtprotobuf"
tags_for() { [[ "$1" == istiod-fake ]] && echo "$TEST_TAGS" || echo "$TAGS"; }
# name -> package (relative to the module)
PROGRAMS=(
    "gcp-ads=./gcp-ads"
    "grpc-xds-client=./grpc-xds-client"
    "h2spec=github.com/summerwind/h2spec/cmd/h2spec"
    "echo-client=istio.io/istio/pkg/test/echo/cmd/client"
    "echo-server=istio.io/istio/pkg/test/echo/cmd/server"
    "istiod-fake=./istiod-fake"
)
# istio's pilot-discovery (a `tool` of the module) is not built: at the pinned commit it cannot run without
# Kubernetes (`discovery --registries= --configDir DIR` panics in serviceentry.newController on the nil
# multicluster controller). istiod-fake serves istio's discovery and CA code instead.

export GOTOOLCHAIN=local GOFLAGS="-mod=readonly -buildvcs=false"

peers_dir() {
    local go_version sums
    go_version="$(go version 2>/dev/null)" || return 1
    sums="$(cd "$ROOT" && find tests/peers/go -type f \( -name '*.go' -o -name go.mod -o -name go.sum \) \
        | LC_ALL=C sort | xargs sha256sum)"
    local key
    key="$(printf '%s\n%s\ntags=%s/%s\n' "$sums" "$go_version" "$TAGS" "$TEST_TAGS" | sha256sum | cut -c1-16)"
    echo "${HBONE_PEERS_CACHE:-$HOME/.cache/hbone-peers}/go/$key"
}

complete() {  # dir
    local p
    for p in "${PROGRAMS[@]}"; do [[ -x "$1/${p%%=*}" ]] || return 1; done
}

build() {
    local dir tmp p name pkg start rc=0
    dir="$(peers_dir)" || { echo "go-peers: go not installed" >&2; return 1; }
    complete "$dir" && { echo "$dir"; return 0; }
    # One builder at a time per machine: concurrent test runs (several worktrees) would each compile all of istio.
    mkdir -p "$(dirname "$dir")" || return 1
    exec 8>"$(dirname "$dir")/.build.lock"
    if ! flock -n 8; then
        echo "go-peers: another build of the Go peers is running; waiting for it" >&2
        flock 8
    fi
    complete "$dir" && { echo "$dir"; return 0; }
    tmp="$dir.tmp.$$"
    mkdir -p "$tmp" || return 1
    for p in "${PROGRAMS[@]}"; do
        name="${p%%=*}" pkg="${p#*=}"
        [[ -x "$dir/$name" ]] && { cp "$dir/$name" "$tmp/$name"; continue; }
        # The same sources failed before: do not spend minutes failing again on every run.
        if [[ -f "$dir/$name.failed" ]]; then
            echo "go-peers: $name failed to build from these sources (see $dir/$name.failed)" >&2
            rc=1
            continue
        fi
        start=$SECONDS
        if (cd "$SRC" && nice -n 10 go build -tags="$(tags_for "$name")" -trimpath -o "$tmp/$name" "$pkg") 2>"$tmp/$name.log"; then
            echo "go-peers: built $name in $((SECONDS - start))s" >&2
            rm -f "$tmp/$name.log"
        else
            echo "go-peers: building $name failed: (cd tests/peers/go && go build -tags=$(tags_for "$name") -trimpath $pkg)" >&2
            tail -n 20 "$tmp/$name.log" >&2
            mv "$tmp/$name.log" "$tmp/$name.failed"
            rc=1
        fi
    done
    # Publish what was built; a failed program stays missing and is retried next time.
    mkdir -p "$dir" && for f in "$tmp"/*; do [[ -e "$f" ]] && mv -f "$f" "$dir/"; done
    rm -rf "$tmp"
    echo "$dir"
    return $rc
}

case "${1:-build}" in
    dir) peers_dir ;;
    build) build ;;
    check) d="$(peers_dir)" && complete "$d" ;;
    *) echo "usage: $0 dir|build|check" >&2; exit 2 ;;
esac
