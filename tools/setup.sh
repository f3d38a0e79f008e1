#!/usr/bin/env bash
# Create tools/venv with the pinned TASU stack and the tasu package (editable).
#
#   tools/setup.sh                  # picks the device: cuda if nvidia-smi works, npu if npu-smi does, else cpu
#   tools/setup.sh --device cuda    # NVIDIA GPUs (CUDA build of torch)
#   tools/setup.sh --device npu     # Huawei Ascend: torch + torch_npu; needs the CANN toolkit installed
#   tools/setup.sh --with espnet    # also tools/espnet-venv, where ESPnet encoders load (see below)
#
# Safe to re-run: when nothing it installs from has changed it only checks the venv and exits.
# Every pip call is constrained by tools/constraints.txt, so no dependency can swap the torch build.
set -euo pipefail

device=auto          # auto | cpu | cuda | npu
python=python3       # interpreter the venv is made from (3.11 or newer)
torch_index_url=""   # e.g. the PyTorch CPU wheel index, to avoid a CUDA download on a CPU-only machine
system_packages=true # install missing system tools (sox, espeak-ng, flite, ffmpeg) with apt-get when root
with=""              # optional environments: espnet

help_message="Usage: $0 [options]
  --device <auto|cpu|cuda|npu>   torch build to install (default: ${device})
  --python <exe>                 python used to create tools/venv (default: ${python})
  --torch_index_url <url>        extra index for the torch wheel (default: none)
  --system_packages <true|false> apt-get install missing sox/espeak-ng/flite/ffmpeg when root (default: ${system_packages})
  --with <espnet>                also make tools/espnet-venv: espnet with the torch it needs, and tasu,
                                 where ESPnet encoders write posterior dumps (default: none)"
. "$(dirname "${BASH_SOURCE[0]}")/../utils/parse_options.sh"
tools_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root_dir=$(dirname "${tools_dir}")

log() { echo "$(date '+%Y-%m-%dT%H:%M:%S') (setup.sh) $*"; }
die() { echo "setup.sh: error: $*" >&2; exit 1; }

# Stop before an install that cannot fit, with one line, rather than half-way through it with pip's
# "No space left on device" and an environment that is neither the old one nor the new.
need_space() {  # <GiB> <what>: free space on the file system of tools/ (pip unpacks on the same disk)
  local free_kib
  free_kib=$(df -Pk "${tools_dir}" 2>/dev/null | awk 'NR == 2 {print $4}') || free_kib=""  # no df: no check
  if [[ "${free_kib}" =~ ^[0-9]+$ ]] && [ "${free_kib}" -lt $(( $1 * 1024 * 1024 )) ]; then
    die "$2 needs about $1 GiB free beside ${tools_dir}; $(( free_kib / 1024 / 1024 )) GiB are: free some and re-run"
  fi
}

if [ "${device}" = auto ]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then device=cuda
  elif command -v npu-smi >/dev/null 2>&1 && npu-smi info >/dev/null 2>&1; then device=npu
  else device=cpu; fi
fi
case "${device}" in cpu|cuda|npu) ;; *) die "--device must be auto, cpu, cuda or npu, not '${device}'" ;; esac
case "${with}" in ""|espnet) ;; *) die "--with must be espnet (or empty), not '${with}'" ;; esac

torch_version=$(sed -n 's/^torch==//p' "${tools_dir}/constraints.txt")
[ -n "${torch_version}" ] || die "tools/constraints.txt does not pin torch"
torch_pkgs=("torch==${torch_version}")
if [ "${device}" = npu ]; then
  if [ -z "${ASCEND_TOOLKIT_HOME:-}" ]; then
    die "--device npu needs the Ascend CANN toolkit: source its set_env.sh (it sets ASCEND_TOOLKIT_HOME) and re-run"
  fi
  torch_pkgs+=("torch-npu==${torch_version}")
fi

# System tools: sox (wav.scp pipes, resampling, speed perturbation), espeak-ng and flite (the
# self-contained recipe's speech), ffmpeg (mp3 of Common Voice). Only what is missing is installed; without root we say what to run.
missing=()
for tool in sox espeak-ng flite ffmpeg; do command -v "${tool}" >/dev/null 2>&1 || missing+=("${tool}"); done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "${system_packages}" = true ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    log "installing system packages: ${missing[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    log "warning: ${missing[*]} not found; recipes that need them will stop and say so (apt-get install ${missing[*]})"
  fi
fi

main_venv() {  # tools/venv: the pinned TASU stack and tasu (editable)
  local venv="${tools_dir}/venv" stamp want pip extra
  stamp="${venv}/.tasu-setup"
  want=$( { echo "device=${device} torch_index_url=${torch_index_url}";
            cat "${tools_dir}/requirements.txt" "${tools_dir}/constraints.txt" "${root_dir}/setup.py"; } | sha256sum | cut -d' ' -f1)

  if [ -f "${stamp}" ] && [ "$(cat "${stamp}")" = "${want}" ] && "${venv}/bin/python" -c "import tasu, torch" 2>/dev/null; then
    log "tools/venv is up to date (device: ${device})"
    return
  fi

  if [ "${device}" = cpu ]; then need_space 3 "tools/venv (CPU torch)"; else need_space 10 "tools/venv (${device} torch)"; fi
  if [ ! -x "${venv}/bin/python" ]; then
    log "creating tools/venv with $(${python} --version 2>&1)"
    "${python}" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
      die "${python} is older than Python 3.11"
    "${python}" -m venv "${venv}"
  fi
  rm -f "${stamp}"
  pip=("${venv}/bin/python" -m pip --disable-pip-version-check)
  extra=()
  [ -n "${torch_index_url}" ] && extra=(--extra-index-url "${torch_index_url}")

  log "installing ${torch_pkgs[*]} (${device})"
  "${pip[@]}" install -c "${tools_dir}/constraints.txt" "${extra[@]}" "${torch_pkgs[@]}" setuptools wheel
  log "installing tools/requirements.txt and tasu (editable)"
  "${pip[@]}" install -c "${tools_dir}/constraints.txt" -r "${tools_dir}/requirements.txt"
  "${pip[@]}" install -c "${tools_dir}/constraints.txt" --no-build-isolation --no-deps -e "${root_dir}"

  "${venv}/bin/python" - <<PY
import sys, torch, tasu
assert torch.__version__.split("+")[0] == "${torch_version}", f"torch {torch.__version__} was installed, not ${torch_version}"
# pip keeps an installed torch of the pinned version, whatever its build (a CPU one, for --device cuda)
if "${device}" == "cuda" and torch.version.cuda is None:
    sys.exit(f"setup.sh: error: tools/venv holds torch {torch.__version__}, a build without CUDA: remove tools/venv "
             "and re-run with --device cuda (and --torch_index_url, to choose the CUDA wheels)")
print(f"tasu {tasu.__version__}, torch {torch.__version__}, python {__import__('sys').version.split()[0]}")
PY
  if [ "${device}" = cpu ]; then
    # DeepSpeed compiles its CPU ops (collectives, fused AdamW) on first use, ~1 min; do it once, here,
    # into this environment's own cache (where tasu's trainer looks: two checkouts never share one).
    log "building DeepSpeed's CPU ops (communication, fused AdamW)"
    # (ninja, which torch compiles with, lives in the environment: hence its bin/ on PATH)
    PATH="${venv}/bin:${PATH}" TORCH_EXTENSIONS_DIR="${venv}/torch_extensions" DS_ACCELERATOR=cpu \
      "${venv}/bin/python" -c "
from deepspeed.accelerator import get_accelerator
for name in ('ShareMemCommBuilder', 'FusedAdamBuilder'):
    b = get_accelerator().create_op_builder(name)
    b is None or b.load(verbose=False)" >/dev/null 2>&1
    for op in deepspeed_shm_comm fused_adam; do
      [ -f "${venv}/torch_extensions/${op}/${op}.so" ] \
        || log "warning: DeepSpeed's ${op} op did not build; DeepSpeed will try again at run time"
    done
    # tasu's own CPU kernels (projector, compression) build in about a second on first use; building
    # them here says now, not mid-training, when there is no working C compiler.
    "${venv}/bin/python" -c "
from tasu.compress_kernels import KERNELS as compress
from tasu.projectors.layernorm_linear_kernels import KERNELS as projector
raise SystemExit(0 if projector.library() and compress.library() else 1)" >/dev/null 2>&1 \
      || log "warning: tasu's CPU kernels did not build (is a C compiler with OpenMP installed?); torch ops will run instead, slower"
  fi
  echo "${want}" > "${stamp}"
  log "done: recipes activate it through tools/activate_python.sh"
}

espnet_venv() {  # tools/espnet-venv: espnet, the torch build it runs with, and tasu (editable)
  # espnet 202511 imports torchaudio, which loads only beside its own torch release (none beside the
  # main environment's), so ESPnet encoders get an environment of their own: tasu dump-posteriors
  # runs there, and the main environment trains and decodes from the dumps. PyPI's torch for it is a
  # CUDA build (~7.5 GB installed with its libraries; the install needs ~12 GB free) that also runs on the CPU.
  local venv="${tools_dir}/espnet-venv" stamp want pip
  stamp="${venv}/.tasu-setup"
  want=$(cat "${tools_dir}/espnet-constraints.txt" "${root_dir}/setup.py" | sha256sum | cut -d' ' -f1)
  if [ -f "${stamp}" ] && [ "$(cat "${stamp}")" = "${want}" ] && \
      "${venv}/bin/python" -c "import tasu, espnet2.tasks.asr" >/dev/null 2>&1; then
    log "tools/espnet-venv is up to date"
    return
  fi
  need_space 12 "tools/espnet-venv"
  [ -x "${venv}/bin/python" ] || { log "creating tools/espnet-venv"; "${python}" -m venv "${venv}"; }
  rm -f "${stamp}"
  # (no wheel cache: it would keep another ~4 GB of CUDA libraries beside the installed ones)
  pip=("${venv}/bin/python" -m pip --disable-pip-version-check --no-cache-dir)
  log "installing tools/espnet-constraints.txt's espnet, torch and torchaudio, and tasu (editable)"
  "${pip[@]}" install -c "${tools_dir}/espnet-constraints.txt" espnet torch torchaudio matplotlib tensorboard \
    soxr tqdm setuptools wheel   # (espnet's trainer plots and logs with the two; tasu reads audio with soxr)
  "${pip[@]}" install -c "${tools_dir}/espnet-constraints.txt" --no-build-isolation --no-deps -e "${root_dir}"
  "${venv}/bin/python" -c "import espnet, torch, tasu.dump, espnet2.tasks.asr
print(f'espnet {espnet.__version__}, torch {torch.__version__} in tools/espnet-venv')"
  echo "${want}" > "${stamp}"
}

main_venv
[ "${with}" = espnet ] && espnet_venv
exit 0
