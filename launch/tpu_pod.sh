#!/usr/bin/env bash
# Runs one vstar_jax command on every worker of a Cloud TPU VM pod slice (design §6).
#
# Every host must run the same command with the same flags: main calls
# jax.distributed.initialize() (config.distributed; no arguments needed on Cloud TPU) and assembles host-local
# batches into global arrays. See usage() or launch/README.md.
set -euo pipefail

REPO_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
readonly REPO_ROOT
readonly REMOTE_SRC_TGZ='vstar_jax-src.tgz'
readonly REMOTE_DATA_TGZ='vstar_jax-data.tgz'
readonly UV_INSTALLER='https://astral.sh/uv/install.sh'

usage() {
  cat <<'EOF'
Usage: launch/tpu_pod.sh --name=NAME [options] -- MAIN_FLAGS...

Runs `python -m vstar_jax.main MAIN_FLAGS... --config.distributed.enabled=True` on every worker of
the Cloud TPU VM NAME (gcloud compute tpus tpu-vm ssh NAME --worker=all). Relative paths in
MAIN_FLAGS and --data-dir are resolved in the checkout on the workers (--remote-dir).

Options (--opt=VALUE or --opt VALUE):
  --name=NAME            TPU VM name (required)
  --zone=ZONE            zone (default: gcloud's compute/zone property)
  --project=PROJECT      GCP project (default: gcloud's core/project property)
  --create               create the pod slice first (default: reuse an existing one)
  --accelerator=TYPE     accelerator type for --create (default: v4-32)
  --version=VERSION      TPU runtime version for --create (default: tpu-ubuntu2204-base)
  --spot                 with --create: use Spot capacity
  --git-url=URL          git clone/fetch URL on the workers (default: copy this working tree,
                         tracked and untracked-but-not-ignored files)
  --git-ref=REF          with --git-url: ref to check out (default: origin/HEAD)
  --remote-dir=DIR       checkout on the workers, relative to the remote home (default: vstar_jax)
  --data-dir=DIR         VSTAR_DATA_DIR on the workers (default: data/amazon)
  --copy-data=LOCAL_DIR  copy a local data directory to --data-dir on every worker
  --python=VERSION       Python for the workers' venv, made by uv (default: 3.11; jax needs >=3.11)
  --jax=SPEC             jax requirement installed with the package (default: jax[tpu]==0.10.2)
  --skip-setup           skip copying/cloning the code, data and installing (re-runs)
  --dry-run              print every command instead of running it
  -h, --help             this text

Example:
  launch/tpu_pod.sh --name=vstar-v4 --zone=us-central2-b --create --copy-data=../shared/data/amazon \
    -- --config=configs/amazon.py:industrial --workdir=workdirs/ind_rl --config.mode=rl
EOF
}

die() {
  echo "tpu_pod.sh: $*" >&2
  echo "Run launch/tpu_pod.sh --help for usage." >&2
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

# Joins words into one shell command line, each word quoted.
join_quoted() {
  local out=() word
  for word in "$@"; do
    out+=("$(quote "$word")")
  done
  printf '%s' "${out[*]}"
}

# Runs a command given as words, or prints it with --dry-run.
run() {
  if [[ $DRY_RUN == 1 ]]; then
    join_quoted "$@"
    echo
  else
    "$@"
  fi
}

# Runs a local pipeline given as one shell string, or prints it with --dry-run.
run_pipeline() {
  if [[ $DRY_RUN == 1 ]]; then
    printf '%s\n' "$1"
  else
    bash -o pipefail -c "$1"
  fi
}

NAME='' ZONE='' PROJECT='' CREATE=0 ACCELERATOR='v4-32' VERSION='tpu-ubuntu2204-base' SPOT=0
GIT_URL='' GIT_REF='origin/HEAD' REMOTE_DIR='vstar_jax' DATA_DIR='data/amazon' COPY_DATA=''
PYTHON_VERSION='3.11' JAX_SPEC='jax[tpu]==0.10.2' SKIP_SETUP=0 DRY_RUN=0

while (($#)); do
  opt=$1
  shift
  case $opt in
    --) break ;;
    -h | --help) usage; exit 0 ;;
    --create) CREATE=1; continue ;;
    --spot) SPOT=1; continue ;;
    --skip-setup) SKIP_SETUP=1; continue ;;
    --dry-run) DRY_RUN=1; continue ;;
    --*=*) value=${opt#*=}; opt=${opt%%=*} ;;
    --*)
      (($#)) || die "$opt needs a value"
      value=$1
      shift ;;
    *) die "unexpected argument '$opt' (main's flags go after --)" ;;
  esac
  case $opt in
    --name) NAME=$value ;;
    --zone) ZONE=$value ;;
    --project) PROJECT=$value ;;
    --accelerator) ACCELERATOR=$value ;;
    --version) VERSION=$value ;;
    --git-url) GIT_URL=$value ;;
    --git-ref) GIT_REF=$value ;;
    --remote-dir) REMOTE_DIR=$value ;;
    --data-dir) DATA_DIR=$value ;;
    --copy-data) COPY_DATA=$value ;;
    --python) PYTHON_VERSION=$value ;;
    --jax) JAX_SPEC=$value ;;
    *) die "unknown option $opt" ;;
  esac
done
MAIN_ARGS=("$@")

[[ -n $NAME ]] || die '--name is required'
[[ -n $REMOTE_DIR && -n $DATA_DIR ]] || die '--remote-dir and --data-dir must not be empty'
((${#MAIN_ARGS[@]})) || die 'pass the flags of python -m vstar_jax.main after --'
has_config=0 has_workdir=0
for arg in "${MAIN_ARGS[@]}"; do
  case $arg in
    --config | --config=*) has_config=1 ;;
    --workdir | --workdir=*) has_workdir=1 ;;
  esac
done
((has_config && has_workdir)) || die 'main flags need --config=... and --workdir=... (after --)'
if ((CREATE && SKIP_SETUP)); then
  die '--create needs the setup step; drop --skip-setup'
fi
if [[ -n $COPY_DATA && ! -d $COPY_DATA && $DRY_RUN == 0 ]]; then
  die "--copy-data: $COPY_DATA is not a directory"
fi
if [[ $DRY_RUN == 0 ]] && ! command -v gcloud >/dev/null; then
  die 'gcloud not found (install the Google Cloud SDK)'
fi

GCLOUD_FLAGS=()
[[ -n $ZONE ]] && GCLOUD_FLAGS+=("--zone=$ZONE")
[[ -n $PROJECT ]] && GCLOUD_FLAGS+=("--project=$PROJECT")
TPU=(gcloud compute tpus tpu-vm)
LOCAL_TMP=$(cd "${TMPDIR:-/tmp}" && pwd)
R=$(quote "$REMOTE_DIR")

on_all_workers() {
  run "${TPU[@]}" ssh "$NAME" ${GCLOUD_FLAGS[@]+"${GCLOUD_FLAGS[@]}"} --worker=all "--command=$1"
}

copy_to_all_workers() {
  run "${TPU[@]}" scp "$1" "$NAME:$2" ${GCLOUD_FLAGS[@]+"${GCLOUD_FLAGS[@]}"} --worker=all
}

if ((CREATE)); then
  create=("${TPU[@]}" create "$NAME" ${GCLOUD_FLAGS[@]+"${GCLOUD_FLAGS[@]}"} "--accelerator-type=$ACCELERATOR"
          "--version=$VERSION")
  ((SPOT)) && create+=(--spot)
  echo "== creating TPU VM $NAME ($ACCELERATOR)" >&2
  run "${create[@]}"
fi

if ((!SKIP_SETUP)); then
  setup=()
  if [[ -n $GIT_URL ]]; then
    setup+=("{ [ -d $R/.git ] || git clone $(quote "$GIT_URL") $R; }"
            "git -C $R fetch --quiet origin"
            "git -C $R checkout --quiet --detach $(quote "$GIT_REF")")
  else
    echo "== copying $REPO_ROOT to every worker" >&2
    src_tgz="$LOCAL_TMP/vstar_jax-src-$NAME.tgz"
    run_pipeline "cd $(quote "$REPO_ROOT") && git ls-files -z --cached --others --exclude-standard |\
 while IFS= read -r -d '' f; do if [ -e \"\$f\" ]; then printf '%s\\0' \"\$f\"; fi; done |\
 tar -czf $(quote "$src_tgz") --null -T -"
    copy_to_all_workers "$src_tgz" "$REMOTE_SRC_TGZ"
    run rm -f "$src_tgz"
    setup+=("mkdir -p $R" "tar -xzf $REMOTE_SRC_TGZ -C $R" "rm $REMOTE_SRC_TGZ")
  fi
  if [[ -n $COPY_DATA ]]; then
    echo "== copying $COPY_DATA to $DATA_DIR on every worker" >&2
    data_tgz="$LOCAL_TMP/vstar_jax-data-$NAME.tgz"
    run tar -czf "$data_tgz" -C "$COPY_DATA" .
    copy_to_all_workers "$data_tgz" "$REMOTE_DATA_TGZ"
    run rm -f "$data_tgz"
    d=$(quote "$DATA_DIR")
    setup+=("(cd $R && mkdir -p $d && tar -xzf ~/$REMOTE_DATA_TGZ -C $d)" "rm $REMOTE_DATA_TGZ")
  fi
  # shellcheck disable=SC2016  # $HOME and $PATH expand on the worker, not here.
  setup+=('export PATH="$HOME/.local/bin:$PATH"'
          "{ command -v uv >/dev/null || curl -LsSf $UV_INSTALLER | env UV_NO_MODIFY_PATH=1 sh; }"
          "cd $R"
          "{ [ -x .venv/bin/python ] || uv venv --python $(quote "$PYTHON_VERSION") .venv; }"
          "uv pip install --python .venv/bin/python -e . $(quote "$JAX_SPEC")")
  joined=$(printf ' && %s' "${setup[@]}")
  echo "== installing on every worker" >&2
  on_all_workers "set -o pipefail$joined"
fi

echo "== running on every worker" >&2
on_all_workers "cd $R && VSTAR_DATA_DIR=$(quote "$DATA_DIR") .venv/bin/python -m vstar_jax.main\
 $(join_quoted "${MAIN_ARGS[@]}") --config.distributed.enabled=True"
