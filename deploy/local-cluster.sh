#!/usr/bin/env bash
# A cluster on loopback: Redis, N `agent-memory serve` instances sharing it, HAProxy in front.
#
#   deploy/local-cluster.sh up 3      start (HAProxy on $BASE_PORT, instances on the ports after it)
#   deploy/local-cluster.sh kill I    kill instance I with SIGKILL (a crash: no drain), once it is gone
#   deploy/local-cluster.sh down      stop everything it started
#
# Settings (environment): BASE_PORT (8000), REDIS_PORT (6390), CLUSTER_DIR (.cluster: data dirs, logs,
# pids, the generated haproxy.cfg), AGENT_MEMORY (the agent-memory command; .venv/bin/agent-memory),
# NO_SHARED_TIER=1 (no Redis: each instance has only its own tiers, for comparison), and any SEMANTIC_*
# setting, passed to every instance. Needs redis-server and haproxy (Debian packages).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"
BASE_PORT="${BASE_PORT:-8000}"
REDIS_PORT="${REDIS_PORT:-6390}"
CLUSTER_DIR="${CLUSTER_DIR:-$root/.cluster}"
AGENT_MEMORY="${AGENT_MEMORY:-$root/.venv/bin/agent-memory}"

wait_for() {  # URL SECONDS: until URL answers 200
    local deadline=$((SECONDS + $2))
    until curl -fsS -o /dev/null "$1" 2>/dev/null; do
        if ((SECONDS > deadline)); then echo "error: $1 did not answer within $2 s" >&2; return 1; fi
        sleep 0.5
    done
}

up() {
    local count="$1"
    for tool in redis-server haproxy curl; do
        command -v "$tool" >/dev/null || { echo "error: $tool is not installed" >&2; exit 1; }
    done
    mkdir -p "$CLUSTER_DIR"
    local shared="redis://127.0.0.1:$REDIS_PORT/0"
    if [ -n "${NO_SHARED_TIER:-}" ]; then
        shared=""
    else
        redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no \
            --maxmemory-policy allkeys-lru >"$CLUSTER_DIR/redis.log" 2>&1 &
        echo $! >"$CLUSTER_DIR/redis.pid"
    fi
    local servers=""
    for i in $(seq 1 "$count"); do
        local port=$((BASE_PORT + i)) data="$CLUSTER_DIR/instance$i"
        mkdir -p "$data"
        SEMANTIC_DATA_DIR="$data" SEMANTIC_SHARED_TIER_URL="$shared" \
            "$AGENT_MEMORY" serve --host 127.0.0.1 --port "$port" >"$CLUSTER_DIR/instance$i.log" 2>&1 &
        echo $! >"$CLUSTER_DIR/instance$i.pid"
        servers+="    server instance$i 127.0.0.1:$port"$'\n'
    done
    # deploy/haproxy.cfg with this cluster's ports and servers
    sed -e "s/bind 127.0.0.1:8000/bind 127.0.0.1:$BASE_PORT/" -e '/^    server instance/d' "$here/haproxy.cfg" \
        >"$CLUSTER_DIR/haproxy.cfg"
    printf '%s' "$servers" >>"$CLUSTER_DIR/haproxy.cfg"
    for i in $(seq 1 "$count"); do wait_for "http://127.0.0.1:$((BASE_PORT + i))/health" 600; done
    haproxy -f "$CLUSTER_DIR/haproxy.cfg" -D -p "$CLUSTER_DIR/haproxy.pid"
    wait_for "http://127.0.0.1:$BASE_PORT/health" 60
    echo "cluster up: http://127.0.0.1:$BASE_PORT ($count instances, Redis on $REDIS_PORT; logs in $CLUSTER_DIR)"
}

kill_instance() {
    local pidfile="$CLUSTER_DIR/instance$1.pid" port=$((BASE_PORT + $1))
    [ -f "$pidfile" ] || { echo "error: instance $1 is not running" >&2; exit 1; }
    kill -9 "$(cat "$pidfile")"
    rm -f "$pidfile"
    # A killed process frees its memory before its sockets: until then its port still takes connections
    # (and resets them). Return once it refuses them, as it will for whatever comes next.
    local deadline=$((SECONDS + 30))
    while (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do
        if ((SECONDS > deadline)); then echo "error: instance $1 still listens on $port" >&2; exit 1; fi
        sleep 0.05
    done
    echo "instance $1 killed"
}

down() {
    for pidfile in "$CLUSTER_DIR"/haproxy.pid "$CLUSTER_DIR"/instance*.pid "$CLUSTER_DIR"/redis.pid; do
        [ -f "$pidfile" ] || continue
        while read -r pid; do kill "$pid" 2>/dev/null || true; done <"$pidfile"
        rm -f "$pidfile"
    done
    echo "cluster down"
}

case "${1:-}" in
    up) up "${2:-3}" ;;
    kill) kill_instance "${2:?usage: $0 kill I}" ;;
    down) down ;;
    *) echo "usage: $0 up N | kill I | down" >&2; exit 2 ;;
esac
