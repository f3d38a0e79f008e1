"""Reading released weights as untrusted input: every tensor there, nothing that runs code.

A user's copy of a model directory is whatever was downloaded, converted or copied: a pickle that
runs code when loaded, a file cut short by an interrupted copy, or a checkpoint of another model
(wav2vec2-base without its CTC head, an LLM missing a layer). torch and transformers load the last
one with the missing tensors initialised at random and a warning: a frozen encoder or LLM that is
part noise, with exit 0. Each of these is refused here in one line naming the file or directory.
"""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Iterable

import torch

# Missing tensors that inference never reads: wav2vec2's learned mask embedding (SpecAugment while
# fine-tuning), absent from some releases.
_UNUSED_AT_INFERENCE = ("masked_spec_embed",)


class ModelFilesError(ValueError):
    """A model directory or weights file that cannot be used as it is; the message names it."""


def _code_refused(where: str) -> ModelFilesError:
    return ModelFilesError(f"{where} holds Python objects besides tensors, and loading them could run code: "
                           "refused; use the model's safetensors release, or a copy you trust")


def load_state_file(path: Path) -> dict:
    """``torch.load`` of a released weights file (``model.pt``, ``*.pth``) as tensors only.

    Python objects are refused as code; a file that is no pickle at all is named for what it is:
    a git-lfs pointer (a model repository cloned without git-lfs: the weights were never fetched),
    or damage (torch said "KeyError: 101", or that weights_only refused it, as if it held code)."""
    with open(path, "rb") as f:
        head = f.read(64)
    if head.startswith(b"version https://git-lfs"):
        raise ModelFilesError(f"{path}: a git-lfs pointer, not the weights: the model's repository was cloned "
                              "without git-lfs; run 'git lfs pull' there, or download the file again")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:   # torch's message names no file and suggests weights_only=False
        if "Unsupported global" in str(e) or "GLOBAL" in str(e):
            raise _code_refused(f"{path}:") from None
        raise _damaged(path, e) from None
    except (FileNotFoundError, PermissionError):   # named by the error itself, and not damage
        raise
    except (EOFError, RuntimeError, OSError, KeyError, ValueError) as e:   # "Invalid argument", "KeyError: 101"
        raise _damaged(path, e) from None
    if not isinstance(state, dict):
        raise ModelFilesError(f"{path}: holds a {type(state).__name__}, not a dict of weights")
    return state


def _damaged(path: Path, e: Exception) -> ModelFilesError:
    why = "not a torch file" if isinstance(e, pickle.UnpicklingError) else \
        f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else 'no message'}"
    return ModelFilesError(f"{path}: not a readable weights file, damaged or cut short ({why}): copy it again")


def first_non_finite(named: Iterable[tuple[str, torch.Tensor]]) -> str | None:
    """The name of the first floating-point tensor holding a NaN or an infinity; None if none does.

    A NaN or infinity carries through a sum, so a finite sum clears a tensor, several times faster
    than ``isfinite().all()`` (``bench/nonfinite.py``). Types of a narrower range than float32
    (float16, the 8-bit ones, which torch cannot sum on CPU) are summed in float32; a sum that
    overflows is looked at value by value."""
    for name, t in named:
        if not t.is_floating_point():
            continue
        wide = t.float() if t.element_size() == 1 else t   # (torch cannot sum the 8-bit types on CPU)
        total = wide.sum(dtype=torch.float32) if wide.dtype == torch.float16 else wide.sum()
        if not bool(torch.isfinite(total)) and not bool(torch.isfinite(wide).all()):
            return name
    return None


def _non_finite(where: str, name: str) -> ModelFilesError:
    return ModelFilesError(f"{where}: {name} holds NaN or infinite values: the file is damaged, or the model's "
                           "training diverged; every output would be garbage (a NaN encoder keeps no frame)")


def load_into(module: torch.nn.Module, state: dict, path: Path) -> None:
    """``module.load_state_dict(state)``, every parameter required (extra entries are ignored, as
    funasr does); a missing or misshapen one is refused naming ``path``, as is integer data for a
    floating-point weight (torch casts it silently: the encoder then wrote garbage posteriors) and a
    NaN or infinity in a weight (every posterior NaN: compression kept no frame, and every recording
    decoded to the same text as if silent, exit 0)."""
    own = module.state_dict()
    for name, value in state.items():
        if name in own and own[name].is_floating_point() and isinstance(value, torch.Tensor) and \
                not value.is_floating_point():
            raise ModelFilesError(f"{path}: {name} holds {value.dtype} values, and {type(module).__name__}'s "
                                  f"{name} is a floating-point weight: not this model's weights")
    try:
        missing, _ = module.load_state_dict(state, strict=False)
    except RuntimeError as e:   # size mismatches: torch's multi-line message names no file
        first = next((ln.strip() for ln in str(e).splitlines() if "size mismatch" in ln), str(e).splitlines()[0])
        raise ModelFilesError(f"{path}: does not fit {type(module).__name__} ({first.rstrip('.')}): weights of "
                              "another model, or a config of another size") from None
    if missing:
        raise ModelFilesError(f"{path} lacks {len(missing)} parameters of {type(module).__name__}, "
                              f"e.g. {missing[:5]}")
    bad = first_non_finite(module.named_parameters())
    if bad:
        raise _non_finite(str(path), bad)


def from_pretrained(auto_class, path: str | Path, what: str, dtype: torch.dtype = torch.float32):
    """``auto_class.from_pretrained(path, dtype=dtype)`` of a local directory, refusing what
    transformers lets through: a tensor of the model missing from the files (it would start random;
    tied embeddings are not missing), a pickle with code, a damaged safetensors file. ``what`` names
    the model in messages ("LLM", "CTC encoder"). ``dtype`` is explicit: transformers' default
    ("auto") keeps a bf16 release in bf16, whatever its caller feeds it."""
    from safetensors import SafetensorError

    try:
        model, info = auto_class.from_pretrained(str(path), dtype=dtype, output_loading_info=True)
    except pickle.UnpicklingError:
        raise _code_refused(f"{path}: a weights file (pytorch_model.bin)") from None
    except SafetensorError as e:
        raise ModelFilesError(f"{path}: a safetensors weights file is damaged or cut short ({e}): copy it "
                              "again") from None
    except RuntimeError as e:
        if "ignore_mismatched_sizes" not in str(e):   # transformers' "look at the above report" names no file
            raise
        raise ModelFilesError(f"{path}: the weights do not fit the {what} its config.json describes (a tensor of "
                              "another size, as the load report above says: a vocab_size or width edited, or "
                              "weights of another model)") from None
    missing = [k for k in info["missing_keys"] if not k.endswith(_UNUSED_AT_INFERENCE)]
    if missing:
        raise ModelFilesError(f"{path}: the weights lack {len(missing)} tensors of the {what} "
                              f"({', '.join(sorted(missing)[:3])}{', ...' if len(missing) > 3 else ''}), which "
                              "would start random: weights of another model (a release without its head?), or "
                              "a file missing from the copy")
    bad = first_non_finite(model.named_parameters())
    if bad:
        raise _non_finite(f"{path}: the {what}'s weights", bad)
    return model
