#!/usr/bin/env bash
# `make demo`: serve a Workspace with `kairay up` in the background, wait until it is ready, show one
# /chat answer, and leave it serving. `make stop` (this script with --stop) ends it.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
DIR=.cache/demo
PIDFILE=$DIR/kairay-up.pid
LOG=$DIR/kairay-up.log
mkdir -p "$DIR"

stop() {
  if [ -f "$PIDFILE" ] && kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
    echo "stopping kairay up (pid $(cat "$PIDFILE"))"
    kill -INT "$(cat "$PIDFILE")"
    for _ in $(seq 1 60); do kill -0 "$(cat "$PIDFILE")" 2>/dev/null || break; sleep 1; done
    kill -9 "$(cat "$PIDFILE")" 2>/dev/null || true
  fi
  rm -f "$PIDFILE"
}

if [ "${1:-}" = "--stop" ]; then stop; exit 0; fi
FILE="$1"
PORT="$2"
stop

echo "== kairay up $FILE --port $PORT   (log: $LOG)"
nohup "$PYTHON" -m kairay.cli up "$FILE" --port "$PORT" >"$LOG" 2>&1 &
echo $! >"$PIDFILE"
for _ in $(seq 1 900); do
  if grep -q "^ready in" "$LOG"; then break; fi
  if ! kill -0 "$(cat "$PIDFILE")" 2>/dev/null; then
    echo "kairay up exited:"; tail -40 "$LOG"; exit 1
  fi
  sleep 1
done
grep -q "^ready in" "$LOG" || { echo "not ready after 900 s:"; tail -40 "$LOG"; exit 1; }
grep -m1 "^  dtype " "$LOG" || true
sed -n '/^ready in/,$p' "$LOG"
echo
# Greedy, so the answer is the model's best one and the same on every machine (the CPU engine
# serves float32: see the README's "CPU dtype").
BODY='{"prompt":"What is the capital of France?","generate_kwargs":{"do_sample":false,"max_length":64}}'
echo "== curl -X POST http://127.0.0.1:$PORT/chat -d '$BODY'"
curl -sS -X POST "http://127.0.0.1:$PORT/chat" -H 'Content-Type: application/json' -d "$BODY"
echo
echo
echo "The Workspace is still serving on http://127.0.0.1:$PORT (OpenAI API under /v1). Stop it with: make stop"
