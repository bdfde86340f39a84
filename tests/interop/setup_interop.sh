#!/usr/bin/env bash
# Idempotent setup for the interop tests (tests/interop), safe to run again and again:
#
#   .venv-tritonclient/    latest tritonclient[grpc,http]: the RPC and REST checks (tritonclient_checks.py,
#                          tritonclient_http_checks.py). tritonclient
#                          registers protobuf symbols under inference.*, as tensorgate does, so it must run in
#                          its own process and venv.
#   .venv-perf-analyzer/   tritonclient[grpc]==2.51.0 + nvidia-cuda-runtime-cu12: bin/perf_analyzer. 2.52+ ship a
#                          binary that needs glibc 2.38 (Debian 12 has 2.36); the binary needs libcudart.so.12
#                          (from nvidia-cuda-runtime-cu12's lib/ folder, via LD_LIBRARY_PATH) and libb64.so.0d.
#   libb64-0d              the Debian package with libb64.so.0d, installed with apt-get when missing.
#
# CUDA shared memory (tests/interop/test_shared_memory.py, gpu-marked): tritonclient.utils.cuda_shared_memory
# imports cuda-python (`cuda.bindings.runtime`), which tritonclient[grpc,http] does not pull in, so on a GPU
# host set TRITONCLIENT_REQUIREMENT='tritonclient[grpc,http,cuda]' (cuda-python imports without a GPU too, but
# the test only runs where there is one); without it that test skips and says why.
#
# Each venv holds a marker file with the requirement string it was built from; a venv whose marker matches is
# left alone, so a warm run takes well under a second. Override the requirements with TRITONCLIENT_REQUIREMENT
# and PERF_ANALYZER_REQUIREMENTS (space-separated), the base interpreter with INTEROP_PYTHON (default python3).
set -euo pipefail
set -f  # requirement strings contain [brackets]: no globbing

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
PYTHON="${INTEROP_PYTHON:-python3}"
TC_REQ="${TRITONCLIENT_REQUIREMENT:-tritonclient[grpc,http]}"
PA_REQ="${PERF_ANALYZER_REQUIREMENTS:-tritonclient[grpc]==2.51.0 nvidia-cuda-runtime-cu12}"
MARKER=".tensorgate-interop-requirements"

# one setup at a time (pytest's fixture and CI may both call this): lock this script file itself
exec 9<"${BASH_SOURCE[0]}"
if command -v flock >/dev/null 2>&1; then
    flock 9
fi

log() { echo "setup_interop: $*"; }

# ensure_venv DIR CHECK_COMMAND REQUIREMENT...
ensure_venv() {
    local dir="$1" check="$2"
    shift 2
    local req="$*"
    if [[ -x "$dir/bin/python" && -f "$dir/$MARKER" && "$(cat "$dir/$MARKER")" == "$req" ]]; then
        log "$(basename "$dir"): up to date ($req)"
        return
    fi
    local start=$SECONDS
    if [[ ! -x "$dir/bin/python" ]]; then
        log "$(basename "$dir"): creating venv with $PYTHON"
        "$PYTHON" -m venv "$dir"
    fi
    rm -f "$dir/$MARKER"
    log "$(basename "$dir"): pip install $req"
    "$dir/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade "$@"
    (cd "$dir" && set +f && eval "$check") || { log "$(basename "$dir"): check failed: $check" >&2; exit 1; }
    echo "$req" >"$dir/$MARKER"
    log "$(basename "$dir"): installed in $((SECONDS - start)) s"
}

have_libb64() {
    ldconfig -p 2>/dev/null | grep -q 'libb64\.so\.0d' && return 0
    local d
    for d in /lib/x86_64-linux-gnu /usr/lib/x86_64-linux-gnu /lib /usr/lib /usr/local/lib; do
        [[ -e "$d/libb64.so.0d" ]] && return 0
    done
    return 1
}

ensure_libb64() {
    if have_libb64; then
        log "libb64.so.0d: present"
        return
    fi
    local sudo=""
    if [[ "$(id -u)" != 0 ]]; then
        if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
            sudo="sudo -n"
        else
            log "libb64.so.0d is missing and this is not root: run 'apt-get install -y libb64-0d' as root" >&2
            exit 1
        fi
    fi
    log "libb64.so.0d: missing, apt-get install -y libb64-0d"
    export DEBIAN_FRONTEND=noninteractive
    if ! $sudo apt-get install -y -q libb64-0d; then
        log "apt-get install failed; apt-get update and retry"
        $sudo apt-get update -q
        $sudo apt-get install -y -q libb64-0d
    fi
    have_libb64 || { log "libb64.so.0d still not found after installing libb64-0d" >&2; exit 1; }
}

ensure_libb64

# shellcheck disable=SC2086  # the requirement lists are split on spaces on purpose
ensure_venv "$ROOT/.venv-tritonclient" \
    'bin/python -c "import tritonclient.grpc, tritonclient.grpc.aio, tritonclient.http, tritonclient.http.aio, numpy"' \
    $TC_REQ
# shellcheck disable=SC2086
ensure_venv "$ROOT/.venv-perf-analyzer" \
    'test -x bin/perf_analyzer && ls lib/python*/site-packages/nvidia/cuda_runtime/lib/libcudart.so.12 >/dev/null' \
    $PA_REQ

log "tritonclient $("$ROOT/.venv-tritonclient/bin/python" -c 'import importlib.metadata as m; print(m.version("tritonclient"))') in .venv-tritonclient"
log "perf_analyzer: $ROOT/.venv-perf-analyzer/bin/perf_analyzer"
