#!/usr/bin/env bash
# Run a command inside the project's virtual environment, creating it on first use.
#   bash tools/env.sh python experiments/quickstart.py
#   bash tools/env.sh python -m pytest -q
# The environment (.venv, Python 3.12 when available) is installed from setup.cfg with the pinned
# versions of constraints.txt; delete .venv to reinstall.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
stamp="$venv/.installed-$(cat "$root/setup.cfg" "$root/constraints.txt" | cksum | cut -d' ' -f1)"
if [ ! -f "$stamp" ]; then
  if [ ! -x "$venv/bin/python" ]; then
    if PYENV_VERSION=3.12.1 python3.12 -c 'import sys' >/dev/null 2>&1; then
      PYENV_VERSION=3.12.1 python3.12 -m venv "$venv"
    elif command -v python3.12 >/dev/null 2>&1; then
      python3.12 -m venv "$venv"
    else
      python3 -m venv "$venv"
    fi
  fi
  echo "installing vdvae_jax and its dependencies into $venv (about a minute)..." >&2
  "$venv/bin/python" -m pip install -q --upgrade pip >&2
  "$venv/bin/python" -m pip install -q -c "$root/constraints.txt" -e "$root[test]" >&2
  rm -f "$venv"/.installed-*
  touch "$stamp"
fi
cd "$root"
export PATH="$venv/bin:$PATH" MPLBACKEND=Agg
exec "$@"
