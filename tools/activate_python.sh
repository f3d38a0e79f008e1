#!/usr/bin/env bash
# Sourced by every recipe's path.sh: puts tools/venv (made by tools/setup.sh) on PATH.
_tasu_tools=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
if [ ! -f "${_tasu_tools}/venv/bin/activate" ]; then
  echo "tools/venv does not exist: run tools/setup.sh first" >&2
  return 1 2>/dev/null || exit 1
fi
# shellcheck disable=SC1091
. "${_tasu_tools}/venv/bin/activate"
unset _tasu_tools
# Huge pages for large CPU tensors: cuts the page-fault cost of big fresh buffers (the projector's
# weight gradient) when training on CPU; harmless elsewhere.
export THP_MEM_ALLOC_ENABLE="${THP_MEM_ALLOC_ENABLE:-1}"
