#!/usr/bin/env bash
# Named GPU bench steps under one deadline, run from the project root (docs/benchmarks.md has the recipe).
#
#   OUT=/some/dir bash bench/gpu/steps.sh DEADLINE_S STEP...
#
# Steps: info build gen_bf16 gen_q4 resume resume32 agents agents_keys agents_rows agents_chunks decode_steps
# decode_ladder kernel_test attention_kernels attention_chunks restore_paths shapes shapes_resume first_turn torch. Each
# step's stdout goes to $OUT/STEP.json (info and build: $OUT/setup.txt), its stderr and a line per
# start/end to $OUT/log.txt. A step that succeeded is marked under $WORK/done and skipped when a later call on the same
# warm machine names it again; a step that needs more seconds than the deadline leaves is skipped.
# Settings (environment): WORK (models, data dir, done marks; default /root/bench), TOK (tokenizer folder,
# default .gpu-tok), SITE (installed wheels, default /root/site), PY (python3), BUILD_ARGS (extra mkmodel.py
# arguments, e.g. a tiny model), Q4 (empty: the build step makes no 4-bit copy), GL (prefill lengths of
# bench/generate.py), RL and RL32 (history lengths of bench/resume.py), RPL (history lengths of
# bench/gpu/restore_paths.py), GEN_ARGS, RESUME_ARGS, AGENT_ARGS, ATTN_ARGS (attention_kernels.py: smaller
# shapes for a dry run), TORCH_ARGS (extra arguments of each bench).
set -u
deadline=$1
shift
start=$(date +%s)
: "${OUT:?set OUT to the folder for the results}"
WORK=${WORK:-/root/bench}
TOK=${TOK:-.gpu-tok}
PY=${PY:-python3}
M8B=$WORK/m8b
MQ4=$WORK/m8b-q4
Q4=${Q4-1}  # empty: build no 4-bit copy (gen_q4 needs it)
BUILD_ARGS=${BUILD_ARGS:-}
GL=${GL:-512,4096,16384}
RL=${RL:-4000,16000}
RL32=${RL32:-32000}
RPL=${RPL:-4400,17700}
GEN_ARGS=${GEN_ARGS:-}
RESUME_ARGS=${RESUME_ARGS:-}
AGENT_ARGS=${AGENT_ARGS:-}
ATTN_ARGS=${ATTN_ARGS:-}
TORCH_ARGS=${TORCH_ARGS:-}
SITE=${SITE-/root/site}
export PYTHONPATH=${SITE:+$SITE:}$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export SEMANTIC_DATA_DIR=$WORK/data
mkdir -p "$OUT" "$WORK/done" "$SEMANTIC_DATA_DIR"
log=$OUT/log.txt

left() { echo $((deadline - ($(date +%s) - start))); }

# run_step NAME NEED_S COMMAND...: run COMMAND if NAME is not done yet and NEED_S seconds are left.
run_step() {
  local name=$1 need=$2
  shift 2
  if [ -e "$WORK/done/$name" ]; then
    echo "== $name already done" | tee -a "$log"
    return 0
  fi
  local seconds_left
  seconds_left=$(left)
  if [ "$seconds_left" -lt "$need" ]; then
    echo "== skip $name: $seconds_left s left < $need" | tee -a "$log"
    return 1
  fi
  local dest=$OUT/$name.json
  case $name in info | build) dest=$OUT/setup.txt ;; esac
  echo "== $name start $(date +%T) ($seconds_left s left): $*" | tee -a "$log"
  local t0 rc limit=$((seconds_left > 40 ? seconds_left - 20 : seconds_left))
  local before
  before=$(stat -c %s "$dest" 2>/dev/null || echo 0)
  t0=$(date +%s)
  timeout -k 10 "$limit" "$@" >>"$dest" 2>>"$log"
  rc=$?
  echo "== $name rc=$rc took $(($(date +%s) - t0)) s" | tee -a "$log"
  tail -c +$((before + 1)) "$dest" | tail -c 2000  # this step's output only
  [ $rc -eq 0 ] && touch "$WORK/done/$name"
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=memory.used --format=csv,noheader | sed 's/^/   gpu memory after: /'
  fi
  return $rc
}

for step in "$@"; do
  case $step in
  info)
    run_step info 10 bash -c "command -v nvidia-smi >/dev/null && nvidia-smi; free -g; df -h $WORK /tmp; $PY bench/gpu/info.py"
    ;;
  build)
    # shellcheck disable=SC2086  # BUILD_ARGS holds several arguments
    run_step build 150 "$PY" bench/gpu/mkmodel.py --tok "$TOK" --out "$M8B" ${Q4:+--q4-out "$MQ4"} $BUILD_ARGS
    ;;
  gen_bf16)
    # shellcheck disable=SC2086
    run_step gen_bf16 200 "$PY" bench/generate.py --model "$M8B" --prompt-lengths "$GL" --json $GEN_ARGS
    ;;
  gen_q4)
    if [ ! -e "$MQ4/config.json" ]; then
      echo "== skip gen_q4: no 4-bit model at $MQ4 (the build ran with Q4=)" | tee -a "$log"
      continue
    fi
    # shellcheck disable=SC2086
    run_step gen_q4 150 "$PY" bench/generate.py --model "$MQ4" --prompt-lengths "$GL" --json $GEN_ARGS
    ;;
  resume)
    # shellcheck disable=SC2086
    run_step resume 300 "$PY" bench/resume.py --model "$M8B" --lengths "$RL" --json $RESUME_ARGS
    ;;
  resume32)
    # A 32k-token bf16 history of the 8B shapes is 4.2 GB of KV: more than the default hot budget.
    # shellcheck disable=SC2086
    run_step resume32 240 env SEMANTIC_MLX_CACHE_BUDGET_MB=16384 \
      "$PY" bench/resume.py --model "$M8B" --lengths "$RL32" --json $RESUME_ARGS
    ;;
  agents)
    # Side by side, with our server's debug log under $OUT/agents and bench/timeline.py of it on stderr
    run_step agents 240 bash -c "SEMANTIC_MLX_MODEL_ID=$M8B $PY bench/agents.py --json --server-logs $OUT/agents \
      --server-log-level debug $AGENT_ARGS && $PY bench/timeline.py --json $OUT/agents/agent-memory.log >&2"
    ;;
  agents_keys)
    # Ours alone with padded prefill keys on, then off, each with its debug log and bench/timeline.py
    run_step agents_keys 300 bash -c "for keys in true false; do SEMANTIC_MLX_PADDED_PREFILL_KEYS=\$keys \
      SEMANTIC_MLX_MODEL_ID=$M8B $PY bench/agents.py --json --only ours --server-logs $OUT/keys-\$keys \
      --server-log-level debug $AGENT_ARGS && $PY bench/timeline.py --json $OUT/keys-\$keys/agent-memory.log; done"
    ;;
  agents_rows)
    # Ours alone with row-by-row decode attention off (the agents step runs it on), with its timeline
    run_step agents_rows 150 bash -c "SEMANTIC_MLX_DECODE_ROWS=false SEMANTIC_MLX_MODEL_ID=$M8B $PY bench/agents.py \
      --json --only ours --server-logs $OUT/rows-false --server-log-level debug $AGENT_ARGS \
      && $PY bench/timeline.py --json $OUT/rows-false/agent-memory.log"
    ;;
  agents_chunks)
    # Ours alone with prompt chunks padded to a few lengths (off by default), with its timeline
    run_step agents_chunks 150 bash -c "SEMANTIC_MLX_ROUNDED_CHUNKS=true SEMANTIC_MLX_MODEL_ID=$M8B $PY bench/agents.py \
      --json --only ours --server-logs $OUT/chunks-true --server-log-level debug $AGENT_ARGS \
      && $PY bench/timeline.py --json $OUT/chunks-true/agent-memory.log"
    ;;
  decode_ladder)
    # One agent's decode through bare loops over both cache kinds, generate_step, mlx-lm's BatchGenerator,
    # ours, and the engine
    run_step decode_ladder 120 "$PY" bench/gpu/decode_ladder.py --model "$M8B" --json
    ;;
  kernel_test)
    # The tests that need MLX's CUDA backend (skipped on the CPU): the batch decode kernel against MLX's attention
    run_step kernel_test 60 "$PY" -m pytest -q --noconftest -p no:cacheprovider -rs tests/engine/test_ragged_decode.py
    ;;
  attention_kernels)
    # The decode attention of one step of 8 agents, the keys laid out five ways and the batch kernel
    # shellcheck disable=SC2086
    run_step attention_kernels 45 "$PY" bench/gpu/attention_kernels.py --json $ATTN_ARGS
    ;;
  attention_chunks)
    # The same for a resumed turn's 82-token prompt chunk per agent, and the padded keys of short chunks
    # shellcheck disable=SC2086
    run_step attention_chunks 45 "$PY" bench/gpu/attention_kernels.py --queries 82 --json $ATTN_ARGS
    ;;
  decode_steps)
    run_step decode_steps 90 "$PY" bench/gpu/decode_steps.py --model "$M8B"
    ;;
  restore_paths)
    run_step restore_paths 150 "$PY" bench/gpu/restore_paths.py --dir "$WORK/restore" --tokens "$RPL" --json
    ;;
  first_turn)
    run_step first_turn 120 "$PY" bench/gpu/first_turn.py --model "$M8B"
    ;;
  shapes)
    # The cost of a new prompt length with MLX's defaults, without cuDNN's attention, without CUDA graphs
    run_step shapes 120 bash -c "$PY bench/gpu/shapes.py --model $M8B && MLX_CUDA_USE_CUDNN_SDPA=0 $PY \
      bench/gpu/shapes.py --model $M8B && MLX_USE_CUDA_GRAPHS=0 $PY bench/gpu/shapes.py --model $M8B"
    ;;
  shapes_resume)
    # New turns of new lengths after one 2,600-token history, as agents resume
    run_step shapes_resume 90 "$PY" bench/gpu/shapes.py --model "$M8B" --history 2600 \
      --lengths 40,75,120,260,700,1500,41,76
    ;;
  torch)
    # shellcheck disable=SC2086
    run_step torch 150 "$PY" bench/gpu/torch_anchor.py $TORCH_ARGS
    ;;
  *)
    steps="info build gen_bf16 gen_q4 resume resume32 agents agents_keys agents_rows agents_chunks decode_steps"
    steps="$steps decode_ladder kernel_test attention_kernels attention_chunks restore_paths"
    steps="$steps shapes shapes_resume"
    steps="$steps first_turn torch"
    echo "== unknown step $step (steps: $steps)" | tee -a "$log"
    ;;
  esac
done
echo "== end, $(left) s left of the deadline" | tee -a "$log"
