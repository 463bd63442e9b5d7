#!/usr/bin/env bash
# Runs vstar_jax on the GPUs of one host, or of several (one process per host, started on each):
# every visible GPU of every host joins the 'data' mesh axis (design §6).
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: launch/gpu.sh [options] -- MAIN_FLAGS...

Runs `python3 -m vstar_jax.main MAIN_FLAGS...` on this host's GPUs (run from the repo root).
Checks first that nvidia-smi lists GPUs and that jax's default backend is gpu
(pip install -e . 'jax[cuda12]').

Several hosts: run the same command on every host (same flags, same data, a --workdir every
host sees), each with its own --node-rank; they join through jax.distributed
(--config.distributed.*), host 0 runs the coordinator. Under SLURM, `srun launch/gpu.sh --slurm`
reads all of it from SLURM's environment instead.

Options (--opt=VALUE or --opt VALUE):
  --gpus=LIST            CUDA_VISIBLE_DEVICES, e.g. 0,1 (default: all GPUs)
  --mem-fraction=F       XLA_PYTHON_CLIENT_MEM_FRACTION in (0, 1] (default: jax's 0.75)
  --data-dir=DIR         VSTAR_DATA_DIR (default: inherited from the environment)
  --python=PY            interpreter (default: $PYTHON, else python3)
  --num-nodes=N          hosts in the run (default 1: this host alone)
  --node-rank=I          this host's index, 0..N-1 (with --num-nodes > 1)
  --coordinator=H:P      host 0's address and a free port, e.g. 10.0.0.2:1234 (with --num-nodes > 1)
  --slurm                join a multi-host run whose hosts and ranks SLURM's environment gives
  --dry-run              print the command instead of running it (skips the checks)
  -h, --help             this text

Examples:
  launch/gpu.sh --gpus=0,1 --mem-fraction=0.9 -- --config=configs/amazon.py:office \
    --workdir=workdirs/office_rl --config.mode=rl
  # on host 0 and host 1 of two:
  launch/gpu.sh --num-nodes=2 --node-rank=0 --coordinator=10.0.0.2:1234 -- --config=... --workdir=/shared/w
  launch/gpu.sh --num-nodes=2 --node-rank=1 --coordinator=10.0.0.2:1234 -- --config=... --workdir=/shared/w
EOF
}

die() {
  echo "gpu.sh: $*" >&2
  echo "Run launch/gpu.sh --help for usage." >&2
  exit 2
}

# Quotes one word for a POSIX shell exactly like Python's shlex.quote.
quote() {
  local safe='^[A-Za-z0-9_@%+=:,./-]+$'
  if [[ $1 =~ $safe ]]; then
    printf '%s' "$1"
  else
    printf "'%s'" "${1//\'/\'\"\'\"\'}"
  fi
}

GPUS='' MEM_FRACTION='' DATA_DIR='' PY=${PYTHON:-python3} DRY_RUN=0
NUM_NODES=1 NODE_RANK='' COORDINATOR='' SLURM=0

while (($#)); do
  opt=$1
  shift
  case $opt in
    --) break ;;
    -h | --help) usage; exit 0 ;;
    --dry-run) DRY_RUN=1; continue ;;
    --slurm) SLURM=1; continue ;;
    --*=*) value=${opt#*=}; opt=${opt%%=*} ;;
    --*)
      (($#)) || die "$opt needs a value"
      value=$1
      shift ;;
    *) die "unexpected argument '$opt' (main's flags go after --)" ;;
  esac
  case $opt in
    --gpus) GPUS=$value ;;
    --mem-fraction) MEM_FRACTION=$value ;;
    --data-dir) DATA_DIR=$value ;;
    --python) PY=$value ;;
    --num-nodes) NUM_NODES=$value ;;
    --node-rank) NODE_RANK=$value ;;
    --coordinator) COORDINATOR=$value ;;
    *) die "unknown option $opt" ;;
  esac
done
(($#)) || die 'pass the flags of python -m vstar_jax.main after --'

ENV=()
if [[ -n $GPUS ]]; then
  [[ $GPUS =~ ^[A-Za-z0-9-]+(,[A-Za-z0-9-]+)*$ ]] || die "--gpus: '$GPUS' is not a comma-separated list"
  ENV+=("CUDA_VISIBLE_DEVICES=$GPUS")
fi
if [[ -n $MEM_FRACTION ]]; then
  [[ $MEM_FRACTION =~ ^(0?\.[0-9]*[1-9][0-9]*|1(\.0*)?)$ ]] || die "--mem-fraction: '$MEM_FRACTION' is not in (0, 1]"
  ENV+=("XLA_PYTHON_CLIENT_MEM_FRACTION=$MEM_FRACTION")
fi
[[ -n $DATA_DIR ]] && ENV+=("VSTAR_DATA_DIR=$DATA_DIR")
[[ $NUM_NODES =~ ^[1-9][0-9]*$ ]] || die "--num-nodes: '$NUM_NODES' is not a positive integer"
DIST=()
if ((SLURM)); then
  ((NUM_NODES == 1)) && [[ -z $NODE_RANK$COORDINATOR ]] \
    || die '--slurm takes the hosts from SLURM: drop --num-nodes, --node-rank and --coordinator'
  DIST=(--config.distributed.enabled=True)
elif ((NUM_NODES > 1)); then
  [[ $NODE_RANK =~ ^[0-9]+$ ]] && ((NODE_RANK < NUM_NODES)) \
    || die "--node-rank: '$NODE_RANK' is not in 0..$((NUM_NODES - 1))"
  [[ $COORDINATOR =~ ^[^:[:space:]]+:[0-9]+$ ]] \
    || die "--coordinator: '$COORDINATOR' is not HOST:PORT"
  DIST=(--config.distributed.enabled=True "--config.distributed.coordinator=$COORDINATOR"
        "--config.distributed.num_processes=$NUM_NODES" "--config.distributed.process_id=$NODE_RANK")
else
  [[ -z $NODE_RANK$COORDINATOR ]] || die '--node-rank and --coordinator need --num-nodes > 1'
fi
CMD=(env ${ENV[@]+"${ENV[@]}"} "$PY" -m vstar_jax.main "$@" ${DIST[@]+"${DIST[@]}"})

if ((DRY_RUN)); then
  words=()
  for word in "${CMD[@]}"; do
    words+=("$(quote "$word")")
  done
  printf '%s\n' "${words[*]}"
  exit 0
fi

command -v nvidia-smi >/dev/null || die 'nvidia-smi not found: no NVIDIA driver on this host'
nvidia-smi -L >&2 || die 'nvidia-smi lists no GPUs'
env ${ENV[@]+"${ENV[@]}"} "$PY" -c 'import jax; assert jax.default_backend() == "gpu", jax.devices()' \
  || die "jax in $PY does not see the GPUs (install jax[cuda12])"
exec "${CMD[@]}"
