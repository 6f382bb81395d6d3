#!/usr/bin/env bash
# Reference checks of the project's rewards against their authors' packages (tests/reference/README.md).
#
#   bash tests/reference/run.sh hpsv2|imagereward|aesthetics|all
#
# Builds (once; reused while the pins below are unchanged) two virtual environments under
# ${EAM_REF_VENVS:-/tmp}, runs the scripts there and writes their output to
# tests/reference/results/<name>.txt. Exit status: non-zero if any check fails.
#   eam-ref-pinned: the project's own pins (torch, transformers 5.23, open_clip 3.3, ...) + hpsv2x
#   eam-ref-tf4:    what image-reward 1.5 needs (transformers 4.46, timm 0.6.13, fairscale, ...)
#                   + OpenAI's clip; also the aesthetics reference
# The project is put on each venv's path with a .pth file (see README: `pip install -e` would
# rewrite the repository's eam.egg-info/).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
RESULTS=$HERE/results
VENVS=${EAM_REF_VENVS:-/tmp}
PYTHON=${PYTHON:-python3.11}
PINNED=$VENVS/eam-ref-pinned
TF4=$VENVS/eam-ref-tf4

export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} MKL_NUM_THREADS=${MKL_NUM_THREADS:-1}
export PYTHONDONTWRITEBYTECODE=1 PIP_DISABLE_PIP_VERSION_CHECK=1 TOKENIZERS_PARALLELISM=false

# torch is pinned exactly in every pip call (as a constraint too): an open range pulls a multi-GB build.
TORCH_PINS=("torch==2.14.1" "torchvision==0.29.1")

PINNED_REQS=("numpy==2.4.6" "safetensors==0.8.0" "huggingface_hub==2.4.0" "transformers==5.23.0"
             "open-clip-torch==3.3.0" "tqdm==4.70.1" "PyYAML==6.0.3" "pillow==13.0.0"
             "clint==0.5.1" "requests==2.34.2")
PINNED_NODEPS=("hpsv2x==1.2.0")   # its declared deps pin pytest==7.2.0, protobuf<4, ...: not on the scoring path

TF4_REQS=("numpy==2.4.6" "safetensors==0.8.0" "pillow==13.0.0" "setuptools<81" "wheel"
          "transformers==4.46.3" "tokenizers==0.20.3" "huggingface_hub==0.26.5"
          "diffusers==0.31.0" "accelerate==1.1.1" "datasets==3.1.0"   # `import ImageReward` imports its ReFL trainer
          "openai-clip==1.0.1")   # setuptools<81: openai-clip imports pkg_resources
TF4_NODEPS=("timm==0.6.13" "image-reward==1.5")   # image-reward pins timm==0.6.13, which would pull its own torch range
TF4_NODEPS_NOISOLATION=("fairscale==0.4.13")      # an sdist; built against the torch already installed

log() { printf '%s\n' "$*" >&2; }

make_venv() {  # make_venv DIR "spec..." installer-function
    local dir=$1 spec=$2 install=$3
    local stamp; stamp=$(printf '%s' "$spec" | sha1sum | cut -c1-16)
    if [[ -f $dir/.eam-ref-stamp && $(cat "$dir/.eam-ref-stamp") == "$stamp" ]]; then
        return 0
    fi
    log "== creating $dir"
    rm -rf "$dir"
    "$PYTHON" -m venv "$dir"
    local cons="$dir/torch-constraints.txt"
    printf '%s\n' "${TORCH_PINS[@]}" >"$cons"
    "$dir/bin/pip" install -q -c "$cons" "${TORCH_PINS[@]}"
    "$install" "$dir" "$cons"
    # the project, from this checkout, without installing it (no -e: that rewrites eam.egg-info/ in the repo)
    mkdir -p "$dir/eam-src"
    ln -sfn "$REPO/eam" "$dir/eam-src/eam"
    local site; site=$("$dir/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
    echo "$dir/eam-src" >"$site/eam_checkout.pth"
    "$dir/bin/python" -c 'import eam.rewards' >/dev/null
    echo "$stamp" >"$dir/.eam-ref-stamp"
}

install_pinned() {
    local dir=$1 cons=$2
    "$dir/bin/pip" install -q -c "$cons" "${PINNED_REQS[@]}"
    "$dir/bin/pip" install -q -c "$cons" --no-deps "${PINNED_NODEPS[@]}"
}

install_tf4() {
    local dir=$1 cons=$2
    "$dir/bin/pip" install -q -c "$cons" "${TF4_REQS[@]}"
    "$dir/bin/pip" install -q -c "$cons" --no-deps "${TF4_NODEPS[@]}"
    "$dir/bin/pip" install -q -c "$cons" --no-deps --no-build-isolation "${TF4_NODEPS_NOISOLATION[@]}"
}

venv_pinned() { make_venv "$PINNED" "${TORCH_PINS[*]} ${PINNED_REQS[*]} ${PINNED_NODEPS[*]}" install_pinned; }
venv_tf4() { make_venv "$TF4" "${TORCH_PINS[*]} ${TF4_REQS[*]} ${TF4_NODEPS[*]} ${TF4_NODEPS_NOISOLATION[*]}" install_tf4; }

header() {  # header NAME: what was run, on which checkout
    echo "# tests/reference/run.sh $1 — $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
    echo "# checkout: $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?')" \
         "(uncommitted changes under eam/rewards: $(git -C "$REPO" status --porcelain -- eam/rewards 2>/dev/null | wc -l | tr -d ' ') files)"
    echo
}

step() {  # step TITLE PYTHON ARGS...: run one script step, echoing what runs
    local title=$1 py=$2; shift 2
    echo "## $title"
    echo "\$ $(basename "$(dirname "$(dirname "$py")")")/bin/python ${*#"$REPO/"}"
    local rc=0
    "$py" "$@" || rc=$?
    echo
    return $rc
}

run_hpsv2() {
    venv_pinned
    local w; w=$(mktemp -d "${TMPDIR:-/tmp}/eam-ref-hpsv2.XXXXXX")
    local rc=0
    { header hpsv2 &&
      step "project and authors' hpsv2x, same venv (project pins)" "$PINNED/bin/python" \
          "$HERE/hpsv2_reference.py" --workdir "$w"
    } 2>&1 | tee "$RESULTS/hpsv2.txt" || rc=$?
    rm -rf "$w"
    return $rc
}

run_two_venvs() {  # run_two_venvs NAME: build (tf4 venv), project in the pinned venv, compare (tf4 venv)
    local name=$1
    venv_pinned
    venv_tf4
    local w; w=$(mktemp -d "${TMPDIR:-/tmp}/eam-ref-$name.XXXXXX")
    local rc=0
    { header "$name" &&
      step "build the weights with the authors' code (eam-ref-tf4)" "$TF4/bin/python" \
          "$HERE/${name}_reference.py" --workdir "$w" --build-only &&
      step "the project's scores under its own pins (eam-ref-pinned)" "$PINNED/bin/python" \
          "$HERE/${name}_reference.py" --workdir "$w" --project-only "$w/project_pinned.json" &&
      step "the authors' scores and the project's (eam-ref-tf4), compared" "$TF4/bin/python" \
          "$HERE/${name}_reference.py" --workdir "$w" --project-scores "$w/project_pinned.json"
    } 2>&1 | tee "$RESULTS/$name.txt" || rc=$?
    rm -rf "$w"
    return $rc
}

run_imagereward() { run_two_venvs imagereward; }
run_aesthetics() { run_two_venvs aesthetics; }

freeze() {  # the exact versions in each venv, for the record
    [[ -x $PINNED/bin/pip ]] && "$PINNED/bin/pip" freeze --exclude-editable >"$RESULTS/venv-eam-ref-pinned.txt"
    [[ -x $TF4/bin/pip ]] && "$TF4/bin/pip" freeze --exclude-editable >"$RESULTS/venv-eam-ref-tf4.txt"
    return 0
}

main() {
    local what=${1:-}
    case $what in
        hpsv2|imagereward|aesthetics) set -- "$what" ;;
        all) set -- hpsv2 imagereward aesthetics ;;
        *) echo "usage: $0 hpsv2|imagereward|aesthetics|all" >&2; exit 2 ;;
    esac
    mkdir -p "$RESULTS"
    local failed=()
    for name in "$@"; do
        log "== $name"
        set +e
        ( set -e; "run_$name" )   # a subshell, so that errexit still holds inside (it would not after ||)
        local rc=$?
        set -e
        ((rc == 0)) || failed+=("$name")
    done
    freeze
    if ((${#failed[@]})); then
        log "FAILED: ${failed[*]}"
        exit 1
    fi
    log "all passed: $*"
}

main "$@"
