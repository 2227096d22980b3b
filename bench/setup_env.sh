#!/usr/bin/env bash
# Builds the benchmark environment: bench/.venv (promptwire + every bench/requirements-*.txt) and,
# for a requirements file whose first line is `# venv: NAME`, a separate venv bench/NAME.
# Idempotent: a venv is (re)installed only when its inputs changed. Usage: bash bench/setup_env.sh
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BENCH="$ROOT/bench"
PYTHON="${PYTHON:-python3}"
TORCH_PIN="torch==2.13.0"
cd "$ROOT"

log() { printf '[setup_env] %s\n' "$*"; }

# make_venv DIR: create the venv if missing and upgrade pip once.
make_venv() {
    local dir="$1"
    if [[ ! -x "$dir/bin/python" ]]; then
        log "creating venv $dir with $($PYTHON --version 2>&1)"
        "$PYTHON" -m venv "$dir"
        "$dir/bin/python" -m pip install --quiet --upgrade pip
    else
        log "venv $dir exists"
    fi
}

# stamp_of FILES...: a hash of the given input files (what the venv was built from).
stamp_of() { cat "$@" | sha256sum | cut -d' ' -f1; }

# up_to_date DIR STAMP: true when DIR was built from the same inputs.
up_to_date() { [[ -f "$1/.bench-stamp" && "$(cat "$1/.bench-stamp")" == "$2" ]]; }

venv_of() {  # the venv a requirements file asks for (first line `# venv: NAME`), default .venv
    local first
    first="$(head -n1 "$1")"
    if [[ "$first" =~ ^\#\ venv:\ *([A-Za-z0-9._-]+) ]]; then
        echo "${BASH_REMATCH[1]}"
    else
        echo ".venv"
    fi
}

shopt -s nullglob
REQS=("$BENCH"/requirements-*.txt)
MAIN_REQS=()
declare -A SEPARATE=()
for req in "${REQS[@]}"; do
    name="$(venv_of "$req")"
    if [[ "$name" == ".venv" ]]; then
        MAIN_REQS+=("$req")
    else
        SEPARATE["$name"]+="$req "
    fi
done

# 1. bench/.venv: torch (CPU wheel first; never a CUDA build), promptwire with the lock, peer pins.
MAIN="$BENCH/.venv"
make_venv "$MAIN"
stamp="$(stamp_of pyproject.toml requirements.lock "${MAIN_REQS[@]}" "$BENCH/setup_env.sh")"
if up_to_date "$MAIN" "$stamp"; then
    log "$MAIN is up to date"
else
    # Pin the +cpu local version: only a CPU build can match it (pip's find-links or PyTorch's CPU
    # index carry it; plain PyPI's Linux torch is the multi-GB CUDA build and never matches).
    if "$MAIN/bin/python" -m pip install --quiet "$TORCH_PIN+cpu"; then
        log "installed $TORCH_PIN+cpu into $MAIN"
    else
        log "no $TORCH_PIN+cpu wheel on the configured indexes; trying PyTorch's CPU index"
        "$MAIN/bin/python" -m pip install --quiet --extra-index-url https://download.pytorch.org/whl/cpu \
            "$TORCH_PIN+cpu"
    fi
    if "$MAIN/bin/python" -W ignore -c 'import torch, sys; sys.exit(0 if torch.version.cuda is None else 1)'; then
        log "torch is the CPU build"
    else
        log "ERROR: a CUDA build of torch was installed; remove $MAIN and retry" >&2
        exit 1
    fi
    # [dev] too, so bench/.venv is a superset of .venv (llmlingua, psutil, openai for the benchmarks).
    log "installing promptwire (-e '.[dev,local]') with -c requirements.lock"
    "$MAIN/bin/python" -m pip install --quiet -c requirements.lock -e '.[dev,local]'
    for req in "${MAIN_REQS[@]}"; do
        log "installing $(basename "$req") with -c requirements.lock"
        "$MAIN/bin/python" -m pip install --quiet -c requirements.lock -r "$req"
    done
    "$MAIN/bin/python" -m pip check || log "WARNING: pip check reports problems (above)"
    echo "$stamp" > "$MAIN/.bench-stamp"
fi

# 2. Separate venvs for peers whose pins conflict with promptwire's (run as subprocess servers).
for name in "${!SEPARATE[@]}"; do
    dir="$BENCH/$name"
    read -r -a files <<< "${SEPARATE[$name]}"
    make_venv "$dir"
    stamp="$(stamp_of "${files[@]}" "$BENCH/setup_env.sh")"
    if up_to_date "$dir" "$stamp"; then
        log "$dir is up to date"
        continue
    fi
    for req in "${files[@]}"; do
        log "installing $(basename "$req") into $dir (own venv: its pins conflict with the lock)"
        "$dir/bin/python" -m pip install --quiet -r "$req"
    done
    echo "$stamp" > "$dir/.bench-stamp"
done

log "done: $MAIN/bin/python bench/<benchmark>.py"
