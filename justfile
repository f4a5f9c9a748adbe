# sngin developer tasks. `just setup` first; every recipe uses the project's .venv.
export AWS_EC2_METADATA_DISABLED := "true"
venv := ".venv"
bin := venv / "bin"

# create .venv and install sngin with its dev tools, pinned by constraints.txt
setup:
    test -x {{bin}}/python || python3 -m venv {{venv}}
    {{bin}}/pip install -q -c constraints.txt -e '.[dev]'

# run the server on the folder store (./sites if present, else the bundled demo sites)
serve *args:
    {{bin}}/sngin serve {{args}}

# the whole test suite (the README's test command)
test *args:
    {{bin}}/python -m pytest {{args}}

# ruff check, ruff format --check, mypy --strict
lint:
    {{bin}}/ruff check .
    {{bin}}/ruff format --check .
    {{bin}}/mypy --strict sngin sandbox

# format and autofix
fmt:
    {{bin}}/ruff format .
    {{bin}}/ruff check --fix .

# build the web UI's bundle into sngin/ui_assets (npm; commit the result with ui/package-lock.json)
ui:
    cd ui && npm ci --no-audit --no-fund && npm run build

# benchmarks (`just bench --quick`: fewer rounds everywhere, under a minute)
bench *args:
    @echo "bench: sandbox micro-benchmark, then HTTP against the bare Hypercorn floor (needs hey, wrk)"
    @{{bin}}/python bench/sandbox_bench.py {{args}}
    @{{bin}}/python bench/limits_bench.py {{args}}
    @{{bin}}/python bench/serve_bench.py {{args}}
    @{{bin}}/python bench/wait_bench.py
    @{{bin}}/python bench/zipf_bench.py {{args}}
    @{{bin}}/python bench/module_bench.py {{args}}
    @{{bin}}/python bench/storage_bench.py {{args}}
    @{{bin}}/python bench/bounds_bench.py --env SNGIN_SEND_TIMEOUT_S=5
    @{{bin}}/python bench/cluster_bench.py {{args}}
    @{{bin}}/python bench/processes_bench.py {{args}}
    @{{bin}}/python bench/attacks_bench.py
    @{{bin}}/python bench/parked_bench.py
    @{{bin}}/python bench/spawn_bench.py
    @{{bin}}/python bench/cron_bench.py

# server CPU per request of this install against another sngin (e.g. a worktree's venv);
# flags: --storage (a storage read and write per request instead of hello)
bench-compare other rounds="6" *flags:
    {{bin}}/python bench/compare_bench.py {{other}} {{rounds}} {{flags}}

# regenerate constraints.txt from pyproject.toml in a throwaway venv
lock:
    rm -rf /tmp/sngin-lock && python3 -m venv /tmp/sngin-lock
    /tmp/sngin-lock/bin/pip install -q --upgrade pip
    /tmp/sngin-lock/bin/pip install -q -e '.[dev]'
    { echo "# Exact versions for CI and the README's quick start (pip install -c constraints.txt ...)."; echo "# Regenerate after changing pyproject.toml dependencies: just lock"; /tmp/sngin-lock/bin/pip freeze --exclude-editable | grep -v '^-e'; } > constraints.txt

# build the container image (needs podman or docker with a running engine; `--format docker` keeps
# the HEALTHCHECK); base="..." picks another base image
image tag="sngin:latest" base="docker.io/library/python:3.11-slim":
    podman build --format docker --build-arg BASE={{base}} -t {{tag}} -f Containerfile . || docker build --build-arg BASE={{base}} -t {{tag}} -f Containerfile .

# build the image on a local Debian base and smoke-test it (podman, buildah, mmdebstrap)
image-test:
    scripts/image-test

# a local cluster demo: redis-server and three nodes on loopback (8081-8083) sharing purges,
# quarantines and rate limits; the code is `./sites` (or the demo sites). Ctrl-C stops it all.
cluster redis_port="6390":
    #!/usr/bin/env bash
    set -euo pipefail
    command -v redis-server >/dev/null || { echo "needs redis-server (apt-get install redis-server)"; exit 2; }
    token="${SNGIN_ADMIN_TOKEN:-cluster-demo-token-0123456789}"
    redis-server --port {{redis_port}} --bind 127.0.0.1 --save "" --appendonly no >/dev/null & pids=($!)
    trap 'kill "${pids[@]}" 2>/dev/null; wait' EXIT INT TERM
    for port in 8081 8082 8083; do
        SNGIN_REDIS_URL="redis://127.0.0.1:{{redis_port}}/0" SNGIN_ADMIN_TOKEN="$token" \
            {{bin}}/sngin serve --bind "127.0.0.1:$port" --workers 2 & pids+=($!)
    done
    echo "nodes on 127.0.0.1:8081, :8082, :8083; admin token $token; Redis on :{{redis_port}}"
    echo "try: curl -H 'Host: hello.localhost' http://127.0.0.1:8082/"
    echo "     curl -X POST -H \"Authorization: Bearer $token\" -d '{\"host\": \"hello.localhost\"}' http://127.0.0.1:8081/__sngin/purge"
    echo "     curl -H \"Authorization: Bearer $token\" 'http://127.0.0.1:8083/__sngin/stats?cluster=1'"
    wait
