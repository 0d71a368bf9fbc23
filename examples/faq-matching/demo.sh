#!/usr/bin/env bash
# `make demo`: train + register the FAQ matcher in a temporary registry, fetch it like a scoring
# pod's init container does, serve it, ask it two questions over HTTP, then stop and clean up.
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-python3}
SCORING=("$PYTHON" -m scoring_runtime.cli)

work=$(mktemp -d -t scoring-demo-XXXXXX)
server_pid=""
cleanup() {
  if [[ -n "$server_pid" ]] && kill -0 "$server_pid" 2>/dev/null; then
    kill -TERM "$server_pid" && wait "$server_pid" || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

port=$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
base="http://127.0.0.1:$port"

echo "==> train on examples/faq-matching/data and register into $work/registry"
version=$("$PYTHON" examples/faq-matching/train.py --registry "$work/registry")
"${SCORING[@]}" models --registry "$work/registry"

echo "==> fetch faq-matcher version $version (checksums verified)"
"${SCORING[@]}" fetch --registry "file://$work/registry" --name faq-matcher --dest "$work/model"

echo "==> serve on $base"
"${SCORING[@]}" serve --model-dir "$work/model" --port "$port" --log-format text >"$work/server.log" 2>&1 &
server_pid=$!
for _ in $(seq 1 120); do
  if curl -fsS "$base/v2/health/ready" >/dev/null 2>&1; then break; fi
  if ! kill -0 "$server_pid" 2>/dev/null; then cat "$work/server.log"; echo "server exited" >&2; exit 1; fi
  sleep 0.5
done
curl -fsS "$base/v2/health/ready" >/dev/null || { cat "$work/server.log"; echo "server not ready" >&2; exit 1; }

question="I can't remember my console password, how do I reset it?"
echo "==> POST /score  {\"question\": \"$question\", \"top_k\": 3}"
curl -fsS -X POST "$base/score" -H 'Content-Type: application/json' \
  -d "{\"question\": \"$question\", \"top_k\": 3}" | "$PYTHON" -m json.tool

echo "==> POST /score  {\"question\": \"recipe for chocolate cake\"}  (nothing in the FAQ answers it)"
curl -fsS -X POST "$base/score" -H 'Content-Type: application/json' \
  -d '{"question": "recipe for chocolate cake"}' | "$PYTHON" -m json.tool

echo "==> POST /v2/models/faq-matcher/infer (Open Inference Protocol V2), top 1"
curl -fsS -X POST "$base/v2/models/faq-matcher/infer" -H 'Content-Type: application/json' \
  -d '{"inputs": [{"name": "question", "datatype": "BYTES", "shape": [1], "data": ["my pod keeps restarting"]}],
       "parameters": {"top_k": 1},
       "outputs": [{"name": "id"}, {"name": "question"}, {"name": "score"}, {"name": "no_match"}]}' \
  | "$PYTHON" -m json.tool

echo "==> stop (server log: first lines)"
kill -TERM "$server_pid" && wait "$server_pid"
server_pid=""
head -n 8 "$work/server.log"
echo "demo ok"
