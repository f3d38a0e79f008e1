#!/usr/bin/env bash
# Sourced by every recipe's path.sh: puts tools/venv (made by tools/setup.sh) on PATH.
if [ -z "${BASH_VERSION:-}" ]; then   # sh, dash, zsh: no BASH_SOURCE to find tools/ by
  echo "tools/activate_python.sh: source it from bash (or run tools/venv/bin/activate)" >&2
  return 1 2>/dev/null || exit 1
fi
_tasu_tools=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
if [ ! -f "${_tasu_tools}/venv/bin/activate" ]; then
  echo "tools/venv does not exist: run tools/setup.sh first" >&2
  return 1 2>/dev/null || exit 1
fi
# shellcheck disable=SC1091
. "${_tasu_tools}/venv/bin/activate"
unset _tasu_tools
# Big CPU buffers (logits, the projector's 205 MB weight gradient) are allocated afresh every
# training step, and the first touch of fresh memory costs page faults: tens of ms per step, and
# far more on some virtual machines. Huge pages make those faults fewer; glibc keeping freed memory
# for reuse (instead of returning each big buffer to the kernel) avoids most of them. The price: a
# process holds on to its peak memory. Harmless on GPUs.
export THP_MEM_ALLOC_ENABLE="${THP_MEM_ALLOC_ENABLE:-1}"
case ":${GLIBC_TUNABLES:-}:" in
  *:glibc.malloc.mmap_threshold=*) ;;
  *) export GLIBC_TUNABLES="${GLIBC_TUNABLES:+${GLIBC_TUNABLES}:}glibc.malloc.mmap_threshold=4294967296:glibc.malloc.trim_threshold=68719476736" ;;
esac
