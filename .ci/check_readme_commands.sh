#!/usr/bin/env bash
# The README's commands, run the way someone who has just cloned the repository runs them: from a `git clone` in a
# temporary folder with nothing beside it (no ../shared, no runs/, an empty home), each one either to its end or,
# for the long ones (demo, benchmark, servers), until it prints the line that shows its real work has started.
# Each command is first looked up verbatim in README.md, so a README edit that breaks one fails here.
#
#   .ci/check_readme_commands.sh        # VENV=path/to/venv (default: .venv, as `make test` builds it)
#
# The existing virtualenv is reused (nothing is installed): `make -o STAMP` keeps make from reinstalling into it,
# and PYTHONPATH puts the clone's own src/ first. It tests the committed HEAD (git clone), not uncommitted edits.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VENV="$(cd "${VENV:-$ROOT/.venv}" && pwd)"
test -x "$VENV/bin/tuneforge" || { echo "check_readme_commands: no tuneforge in $VENV (run make test first)" >&2; exit 2; }

WORK="$(mktemp -d)"
PIDS=()
# Stops a command started with setsid and everything it started (make -> python -> workers, server -> job).
stop_group() {
    kill -TERM -- "-$1" 2>/dev/null || return 0
    for _ in $(seq 20); do kill -0 -- "-$1" 2>/dev/null || break; sleep 0.5; done
    kill -KILL -- "-$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}
cleanup() {
    trap '' TERM INT  # a second signal must not cut the cleanup short and leave servers behind
    for pid in "${PIDS[@]}"; do stop_group "$pid"; done
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 143' TERM INT
git clone -q "$ROOT" "$WORK/tuneforge"
cd "$WORK/tuneforge"
test ! -e ../shared
# `~/.tuneforge` in the README lands in the temporary home; converted models and the HF cache are reused.
export XDG_CACHE_HOME="${XDG_CACHE_HOME:-$HOME/.cache}" HOME="$WORK/home"
mkdir -p "$HOME"
export PYTHONPATH="$PWD/src" PATH="$VENV/bin:$PATH" OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
python -c 'import os, tuneforge; assert tuneforge.__file__.startswith(os.getcwd()), tuneforge.__file__'
MAKE="make VENV=$(printf %q "$VENV") -o $(printf %q "$VENV/.installed-stamp")"
export PYTHONUNBUFFERED=1  # progress lines reach the logs as they are printed
LOGS="$WORK/logs"
mkdir -p "$LOGS"
N=0

fail() { echo "FAIL: $*" >&2; exit 1; }
# The README must still show this command (the check runs what users read, not a copy that drifted from it).
shown() { grep -qF -- "$1" README.md || fail "README.md no longer shows: $1"; }
# A fresh, empty log per command (created before the command starts, so nothing stale is ever read): sets LOG.
new_log() { N=$((N + 1)); LOG="$LOGS/$N.log"; : >"$LOG"; }
# The command as run: `make X` with this venv and without reinstalling into it.
runnable() { if [[ $1 == "make "* ]]; then echo "$MAKE ${1#make }"; else echo "$1"; fi; }

# to_end "README command" [extra args]: runs it to its end; it must exit 0.
to_end() {
    local cmd="$1" extra="${2:-}" log
    shown "$cmd"
    new_log; log="$LOG"
    local started=$SECONDS
    if ! eval "$(runnable "$cmd") $extra" >"$log" 2>&1; then
        tail -20 "$log" >&2
        fail "$cmd $extra"
    fi
    echo "ok   $cmd $extra  ($((SECONDS - started)) s)"
}

# until_line "README command" "extra args" REGEX SECONDS: starts it, waits for a line matching REGEX (its real work
# has started), then stops it. Exiting first, or no such line in time, fails.
until_line() {
    local cmd="$1" extra="$2" regex="$3" limit="$4" log pid
    shown "$cmd"
    new_log; log="$LOG"
    local started=$SECONDS
    setsid bash -c "exec $(runnable "$cmd") $extra" >"$log" 2>&1 &
    pid=$!
    PIDS+=("$pid")
    while ! grep -qE -- "$regex" "$log"; do
        if ! kill -0 "$pid" 2>/dev/null; then
            tail -20 "$log" >&2
            fail "$cmd $extra: exited before printing /$regex/"
        fi
        if ((SECONDS - started > limit)); then
            tail -20 "$log" >&2
            fail "$cmd $extra: no /$regex/ within $limit s"
        fi
        sleep 1
    done
    stop_group "$pid"
    echo "ok   $cmd $extra  (started its work: $(grep -m1 -E -- "$regex" "$log" | cut -c1-90); $((SECONDS - started)) s)"
}

# A server started in the background, stopped at exit; waits until URL answers.
serve_bg() {
    local cmd="$1" extra="$2" url="$3" limit="$4" log pid
    shown "$cmd"
    new_log; log="$LOG"
    local started=$SECONDS
    setsid bash -c "exec $(runnable "$cmd") $extra" >"$log" 2>&1 &
    pid=$!
    PIDS+=("$pid")
    until curl -sf -o /dev/null "$url"; do
        kill -0 "$pid" 2>/dev/null || { tail -20 "$log" >&2; fail "$cmd $extra: exited"; }
        ((SECONDS - started <= limit)) || { tail -20 "$log" >&2; fail "$cmd $extra: $url did not answer in $limit s"; }
        sleep 1
    done
    echo "ok   $cmd $extra  (answers $url; $((SECONDS - started)) s)"
}

free_port() { python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# --- the quick start: make demo and make bench (make test is what .ci/run runs anyway)
until_line "make demo" "" '^data: [0-9]+ train, [0-9]+ validation, [0-9]+ held-out test rows' 600
until_line "make bench" "" '^data: [0-9]+ train / [0-9]+ validation examples \(bench/bench_data.py\)' 600

# --- the command-line section, with the job spec exactly as the README shows it
awk '/^# job.yaml$/ {on = 1} on && /^```/ {exit} on' README.md > job.yaml
test -s job.yaml || fail "README.md has no job.yaml block"
to_end 'tuneforge data validate examples/demo/orders.jsonl --template "Order: {text}\nJSON: {json}" --model smollm2'
to_end "tuneforge spec job.yaml"
to_end "tuneforge estimate job.yaml"
to_end "tuneforge models"
# One optimizer step is enough to prove the run works end to end (data, model, LoRA, checkpoint, adapter, report).
to_end "tuneforge train job.yaml --output runs/orders --set training_config.learning_rate=5e-4" \
       "--set training_config.max_steps=1"
test -f runs/orders/adapter/adapter_config.json || fail "no adapter in runs/orders/adapter"
to_end 'tuneforge generate --adapter runs/orders/adapter "Order: Ann wants 2 lamps in Oslo."' "--max-new-tokens 8"
to_end "tuneforge merge runs/orders/adapter --output runs/orders-merged"
to_end "tuneforge export runs/orders/adapter --merged out/orders-merged --gguf out/orders.gguf --gguf-type q8_0"

# --- the service: a key, the server (API + worker), a dataset upload as the README's curl does it
to_end "tuneforge keys create alice --home ~/.tuneforge"
KEY="$(tail -1 "$LOG")"
PORT="$(free_port)"
serve_bg "tuneforge server --home ~/.tuneforge" "--port $PORT" "http://127.0.0.1:$PORT/docs" 120
shown 'curl -H "Authorization: Bearer $KEY" -F file=@train.jsonl'
curl -sf -H "Authorization: Bearer $KEY" -F file=@examples/demo/orders.jsonl \
     -F 'prompt_template=Order: {text}\nJSON: {json}' "http://127.0.0.1:$PORT/v1/datasets" | grep -q '"id"' \
    || fail "dataset upload to the server"
echo "ok   curl ... /v1/datasets (upload and validation report)"
until_line "tuneforge worker --home ~/.tuneforge" "" '^tuneforge worker .*: started' 120

# --- serving adapters on the OpenAI-compatible API
PORT="$(free_port)"
serve_bg "tuneforge serve --model smollm2 --adapter orders=runs/orders/adapter" "--port $PORT" \
         "http://127.0.0.1:$PORT/v1/models" 180
curl -sf "http://127.0.0.1:$PORT/v1/models" | grep -q '"orders"' || fail "tuneforge serve does not list the adapter"
# --- the fast CPU decode step: its C kernels build on first use and answer for the adapter
PORT="$(free_port)"
serve_bg "tuneforge serve --model smollm2 --adapter orders=runs/orders/adapter --weights int8" "--port $PORT" \
         "http://127.0.0.1:$PORT/v1/models" 180
curl -sf "http://127.0.0.1:$PORT/v1/chat/completions" -H 'content-type: application/json' \
     -d '{"model": "orders", "messages": [{"role": "user", "content": "Ann wants 2 lamps."}], "max_tokens": 8}' \
    | grep -q '"chat.completion"' || fail "tuneforge serve --weights int8 did not answer a chat request"
grep -q "lean decode on (cpu, float32, int8 weights)" "$LOG" \
    || { tail -20 "$LOG" >&2; fail "tuneforge serve --weights int8 did not decode with the int8 step"; }
echo "ok   chat completion from the int8 step"
echo "all README commands ran from a plain clone ($SECONDS s)"
