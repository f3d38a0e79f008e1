"""A trained model on disk: finding a checkpoint, reading it, and building the speech LLM it holds.

Decoding, ``Speech2Text``, ``tasu export`` and training (which builds the same model fresh, and
starts a curriculum stage from an earlier one's weights) all go through here, so every one of them
constructs exactly the same model from the same config, and none of the inference paths depends on
the training engine. An experiment directory::

    exp/<tag>/
      config.yaml                    the resolved config of the run
      train.log, tensorboard/
      checkpoints/
        step_000500/
          model/                     all that decoding needs, with the base encoder and LLM:
            trainable.safetensors      the trained weights only (projector, LoRA adapters)
            config.yaml                the resolved config
            prompts.jsonl              the prompt set it was trained with
          engine/                    what --resume needs (see tasu.train.checkpoint)
        last                         name of the newest complete checkpoint
        best.json                    the kept checkpoints by validation loss

A checkpoint is untrusted input (it may be copied from elsewhere): the weights are read as
safetensors, which hold tensors and nothing that could run code, and the config is plain YAML
checked against the dataclasses.

``audio=False`` builds the text-only model: the encoder's tokenizer is read for its vocabulary size,
its weights are not loaded, and funasr is not imported.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from tasu.config import ConfigError, load_config, require_dir, to_dict
from tasu.data.prompts import PromptSet, load_prompts
from tasu.experiment import ExperimentConfig
from tasu.fileio import combined_digest, file_entry, read_json, readable_by_others

if TYPE_CHECKING:   # the model (torch, transformers) is imported when one is built, not to find a checkpoint
    from tasu.model import SpeechLLM

MODEL_DIR = "model"
VOCAB_KEY = "encoder_vocab_sha256"   # in the weights file's metadata: see write_model
LLM_KEY = "llm_sha256"   # likewise
BASE_LLM_KEY = "base_llm_sha256"   # an export that merged no adapters: the base LLM its llm/ re-saves
STEP_KEY = "step"   # the training step the weights are of: a checkpoint copied or exported under another name
LLM_FILES = frozenset({"config.json", "tokenizer.json", "tokenizer.model", "vocab.json", "merges.txt",
                       "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json"})
CHAT_TEMPLATES = frozenset({"chat_template.jinja", "chat_template.json"})   # where transformers saves it now
LLM_DIGEST = "v2:"   # marks an llm_digest that covers the chat template files (see is_llm)
WEIGHTS, CONFIG, PROMPTS = "trainable.safetensors", "config.yaml", "prompts.jsonl"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used as it is: refused (unsafe) or not fitting the model."""


# --------------------------------------------------------------------------------------------------
# Where a checkpoint is


def checkpoint_name(step: int) -> str:
    return f"step_{step:06d}"


def is_checkpoint_name(name: str) -> bool:
    """Whether a pointer (``last``, an entry of ``best.json``) names a directory of ``checkpoints/``
    itself: an edited one must not lead to another experiment's model (``../../other/...``), nor, when
    empty, to ``checkpoints/`` itself."""
    return bool(name) and name not in (".", "..") and "/" not in name and "\\" not in name


def last_checkpoint(ckpt_root: Path) -> Path | None:
    """The newest complete checkpoint, or None when there is none yet (or ``last`` names none)."""
    pointer = ckpt_root / "last"
    if not pointer.exists():
        return None
    name = pointer.read_text(encoding="utf-8").strip()
    path = ckpt_root / name
    return path if is_checkpoint_name(name) and path.is_dir() else None


def refuse_lost_pointer(ckpt_root: Path) -> None:
    """Checkpoints with no ``last`` pointing at one of them: stop before a run takes the directory
    for empty, starts from step 0 and, at its first save, deletes them as old ones."""
    steps = sorted(p.name for p in ckpt_root.glob("step_*") if p.is_dir())
    if steps and last_checkpoint(ckpt_root) is None:
        raise CheckpointError(
            f"{ckpt_root} holds {', '.join(steps)}, but {ckpt_root / 'last'} is missing or names none of "
            f"them: write the name of the one to continue from into it (e.g. echo {steps[-1]} > "
            f"{ckpt_root / 'last'}) and pass --resume, or choose another directory")


def read_best(ckpt_root: Path) -> list[dict]:
    """The checkpoints kept by validation loss, best first: ``[{"name": ..., "step": ..., "valid_loss": ...}]``."""
    path = ckpt_root / "best.json"
    if not path.exists():
        return []
    return read_json(path, lambda best: isinstance(best, list) and all(
                         isinstance(b["name"], str) and is_checkpoint_name(b["name"]) for b in best),
                     'a list of {"name": <a checkpoint of this directory>, ...} entries')


def resolve_checkpoint(path: str | Path, which: str = "best") -> Path:
    """A checkpoint directory from an experiment dir (``which``: best, last or step_N) or itself.

    ``best`` falls back to ``last`` when the run never validated. A checkpoint or export directory is
    itself, with ``which`` the default (best) or its own name: another name was ignored, and the
    directory given decoded as if it were the checkpoint asked for.
    """
    path = Path(path)
    found = path if (path / MODEL_DIR / WEIGHTS).exists() else \
        path.parent if (path / WEIGHTS).exists() and path.name == MODEL_DIR else None
    if found is not None:
        step = re.fullmatch(r"step_(\d+)", which)
        if which != "best" and (checkpoint_name(int(step.group(1))) if step else which) != found.resolve().name:
            raise FileNotFoundError(f"{path} is a checkpoint (or export) itself, not an experiment dir: "
                                    f"--checkpoint {which} names another; give the experiment dir to choose one")
        return found
    root = path / "checkpoints"
    if (path / MODEL_DIR).is_dir() and not root.is_dir():
        raise FileNotFoundError(f"{path}: a checkpoint without {MODEL_DIR}/{WEIGHTS}, its trained weights "
                                "(cut short, or removed?): use another checkpoint")
    if not root.is_dir():
        raise FileNotFoundError(f"{path} is neither an experiment dir (no checkpoints/) nor a checkpoint")
    if which == "best":
        best = read_best(root)
        if best:
            if not (root / best[0]["name"] / MODEL_DIR / WEIGHTS).exists():   # edited, or the checkpoint removed
                have = sorted(p.name for p in root.glob("step_*") if (p / MODEL_DIR / WEIGHTS).exists())
                raise FileNotFoundError(f"{root / 'best.json'} names {best[0]['name']}, which is not a complete "
                                        f"checkpoint there (it holds {', '.join(have) or 'none'}): name one "
                                        "with --checkpoint")
            return root / best[0]["name"]
        which = "last"
    if which == "last":
        last = last_checkpoint(root)
        if last is None:
            have = sorted(p.name for p in root.glob("step_*") if (p / MODEL_DIR / WEIGHTS).exists())
            if have:   # a pointer lost or edited: say so, and which checkpoints there are
                raise FileNotFoundError(f"{root / 'last'} is missing or names no checkpoint there, which holds "
                                        f"{', '.join(have)}: name one with --checkpoint")
            raise FileNotFoundError(f"{root} holds no complete checkpoint yet")
        return last
    step = re.fullmatch(r"step_(\d+)", which)
    candidate = root / (checkpoint_name(int(step.group(1))) if step else which)   # step_2 = step_000002
    if not (candidate / MODEL_DIR / WEIGHTS).exists():
        have = sorted(p.name for p in root.glob("step_*") if (p / MODEL_DIR / WEIGHTS).exists())
        raise FileNotFoundError(f"no checkpoint {which} in {root} (it has best, last"
                                f"{', ' + ', '.join(have) if have else ''})")
    return candidate


# --------------------------------------------------------------------------------------------------
# Its model/ directory, written and read


def dump_config(cfg: ExperimentConfig) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, allow_unicode=True)


def write_model(model_dir: Path, trainable: dict, cfg: ExperimentConfig, prompts_text: str,
                encoder_vocab: str, llm: str, base_llm: str | None = None, step: int = 0) -> None:
    """Fill ``model_dir`` (a fresh directory) with the decoding part of a checkpoint. The weights file
    records ``encoder_vocab`` (``vocab_digest`` of the encoder's tokenizer) and ``llm`` (``llm_digest``
    of the LLM): the projector reads ids of that vocabulary and writes into that LLM's embeddings, and
    another vocabulary of the same size, or another LLM of the same shapes, would load and decode
    nonsense, exit 0. ``base_llm``: an export's, when its ``llm/`` re-saves that LLM unchanged. ``step``:
    the training step of the weights (``checkpoint_step``)."""
    from safetensors.torch import save_file

    save_file({k: v.detach().contiguous().cpu() for k, v in trainable.items()}, str(model_dir / WEIGHTS),
              metadata={VOCAB_KEY: encoder_vocab, LLM_KEY: llm, STEP_KEY: str(step),
                        **({BASE_LLM_KEY: base_llm} if base_llm else {})})
    _sort_header(model_dir / WEIGHTS)
    readable_by_others(model_dir / WEIGHTS)   # safetensors writes it 0600
    (model_dir / CONFIG).write_text(dump_config(cfg), encoding="utf-8")
    (model_dir / PROMPTS).write_text(prompts_text, encoding="utf-8")


def _sort_header(path: Path) -> None:
    """Sort the JSON header of safetensors file ``path``, in place.

    safetensors writes the metadata in a hash map's order, which changes from one write to the next:
    the same weights came out as other bytes, and a stage run again with the same result read as
    another model where a later run compares the file's sha256 (a resume's ``train.init_from``).
    Sorted, the bytes are a function of what the file holds. The text is the same, reordered, so it
    takes the same room."""
    with open(path, "r+b") as f:
        size = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(size))
        text = json.dumps(header, ensure_ascii=False, separators=(",", ":"), sort_keys=True).encode("utf-8")
        if len(text) > size:   # (not seen: JSON written otherwise than by safetensors)
            return
        f.seek(8)
        f.write(text.ljust(size))   # safetensors pads its header with spaces, as here


def read_model_config(ckpt: Path, overrides: list[str] | tuple[str, ...] = ()) -> ExperimentConfig:
    """The config a checkpoint was trained with; ``overrides`` such as ``llm.path=/models/qwen``.

    An export's config names its own ``llm/`` and ``encoder/``: they are read from the export, wherever
    it is (relative paths were read from the current directory, which may hold other models of those
    names); ``overrides`` still come last."""
    from tasu.export import ENCODER_DIR, LLM_DIR, is_export

    if is_export(ckpt):
        root = Path(ckpt).resolve()
        overrides = (f"encoder.path={root / ENCODER_DIR}", f"llm.path={root / LLM_DIR}", *overrides)
    return load_config(ExperimentConfig, ckpt / MODEL_DIR / CONFIG, overrides)


def _recorded(ckpt: Path, key: str) -> str | None:
    """What a checkpoint's weights file records under ``key`` (None: written before it did so)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(ckpt / MODEL_DIR / WEIGHTS), "pt") as f:
            return (f.metadata() or {}).get(key)
    except (SafetensorError, OSError):
        return None   # load_trainable names the damage


def trained_vocab(ckpt: Path) -> str | None:
    """The encoder vocabulary's digest a checkpoint's weights record (None: written before they did)."""
    return _recorded(ckpt, VOCAB_KEY)


def recorded_step(ckpt: Path) -> int | None:
    """The training step a checkpoint's weights record (None: written before they did so)."""
    recorded = _recorded(ckpt, STEP_KEY)
    return int(recorded) if recorded is not None and recorded.isdigit() else None


def checkpoint_step(ckpt: Path) -> int:
    """The training step of a checkpoint's weights: the one its weights file records, else (written
    before it did so) the one its name says (``step_000400``), else 0. Decoding simulated input reads
    the WER schedule at this step: from the name alone, an export or a copied checkpoint was step 0,
    its simulated input error-free where the checkpoint's had the step's WER."""
    recorded = recorded_step(ckpt)
    if recorded is not None:
        return recorded
    match = re.fullmatch(r"step_(\d+)", Path(ckpt).name)
    return int(match.group(1)) if match else 0


def recorded_llm(ckpt: Path) -> tuple[str | None, str | None]:
    """The LLM digests a checkpoint's weights record: the one it decodes with, and an export's base
    LLM when it merged no adapters (None: not recorded)."""
    return _recorded(ckpt, LLM_KEY), _recorded(ckpt, BASE_LLM_KEY)


def llm_digest(path: str | Path) -> str:
    """SHA-256 of an LLM directory's config, tokenizer, chat template and weight files (names, sizes,
    contents), marked ``LLM_DIGEST``.

    A projector is trained for one LLM: continued or decoded with another release of the same shapes
    (a base model for its instruct one) it loads, trains and decodes, half one model and half the
    other; and with another chat template or special tokens (tokenizer_config.json) it reads other
    prompts. The other files (a README, generation_config.json) may change. A few seconds for a 1.5B
    model in bf16 (sha256 at about 0.8 GB/s), read again from the page cache when the model loads.
    """
    return _llm_digests(path)[0]


def _llm_digests(path: str | Path) -> tuple[str, str]:
    """``llm_digest`` and, from the same reading of the files, the digest without the chat template files
    (and without ``LLM_DIGEST``'s mark), as the first version that recorded one took it."""
    entries = {file.name: file_entry(file) for file in sorted(Path(path).iterdir()) if file.is_file() and (
        file.name in LLM_FILES | CHAT_TEMPLATES or file.suffix in (".safetensors", ".bin"))}
    return (LLM_DIGEST + combined_digest(entries.values()),
            combined_digest(e for name, e in entries.items() if name not in CHAT_TEMPLATES))


def is_llm(path: str | Path, digests: tuple[str | None, ...], digest: str | None = None) -> bool:
    """Whether the LLM directory ``path`` (its ``llm_digest``, when known) is one of ``digests``. A
    digest without ``LLM_DIGEST``'s mark was recorded by an earlier version: of every file but the chat
    template ones (the first version that recorded one), or of them all (the next): it is compared with
    both digests of ``path``."""
    if digest is not None and digest in digests:
        return True
    if not any(d and not d.startswith(LLM_DIGEST) for d in digests):
        return (digest or llm_digest(path)) in digests
    full, without_template = _llm_digests(path)
    return any(d in digests for d in (full, full.removeprefix(LLM_DIGEST), without_template))


def check_vocab(ckpt: Path, cfg: ExperimentConfig, tokenizer) -> None:
    """Refuse an encoder whose vocabulary is not the one the checkpoint was trained on."""
    from tasu.simulate.base import vocab_digest

    trained = trained_vocab(ckpt)
    if trained and trained != vocab_digest(tokenizer):
        raise CheckpointError(f"{ckpt} was trained on the ids of another encoder vocabulary than encoder.path "
                              f"{cfg.encoder.path}'s ({tokenizer.vocab_size} pieces, other ones or in another "
                              "order): its projector would read these ids as those; use the encoder it was "
                              "trained with")


def check_llm(ckpt: Path, cfg: ExperimentConfig) -> None:
    """Refuse an LLM whose files are not the ones the checkpoint was trained for (a copy of them
    anywhere is the same LLM). An export records its own ``llm/`` (re-saved, LoRA merged), and the base
    LLM when it merged none: that one decodes it too."""
    trained, base = recorded_llm(ckpt)
    if trained and not is_llm(cfg.llm.path, (trained, base)):
        raise CheckpointError(f"{ckpt} was trained for another LLM than llm.path {cfg.llm.path} (other config, "
                              "tokenizer or weight files: another release of the same shapes?): its projector "
                              "writes into that LLM's embeddings; use the LLM it was trained with")


def load_trainable(ckpt: Path) -> dict:
    """The trained weights of checkpoint ``ckpt``, read as safetensors (never unpickled).

    A file cut short by a full disk or an interrupted copy, or another format under this name,
    is a ``CheckpointError`` naming the file: safetensors' own error names neither. So is a tensor
    that no training writes: whole numbers (loaded into a float model they would pass silently) or
    NaN/inf (every output would be garbage).
    """
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = ckpt / MODEL_DIR / WEIGHTS
    try:
        state = load_file(str(path))
    except SafetensorError as e:
        raise CheckpointError(f"{path}: damaged: truncated, or not a safetensors file ({e}); "
                              "use another checkpoint, or train again") from None
    for name, t in state.items():
        if not t.is_floating_point():
            raise CheckpointError(f"{path}: {name} holds {str(t.dtype).removeprefix('torch.')} values, "
                                  "where trained weights are floating point: not a checkpoint tasu wrote")
        if not torch.isfinite(t).all():
            raise CheckpointError(f"{path}: {name} holds NaN or infinite values: use another checkpoint, "
                                  "or train again")
    return state


def check_fits(model_shapes: dict, state: dict, source: Path) -> None:
    """Raise ``CheckpointError`` when a tensor of ``state`` has another shape than the model's.

    ``model_shapes`` maps parameter names to shapes. A checkpoint read with a changed config
    (another projector size, LoRA rank) would otherwise stop in ``load_state_dict`` with a
    multi-line traceback.
    """
    wrong = [f"{name}: {tuple(t.shape)} in the checkpoint, {tuple(model_shapes[name])} in the model"
             for name, t in state.items() if name in model_shapes and tuple(t.shape) != tuple(model_shapes[name])]
    if wrong:
        raise CheckpointError(f"{source}: the trained weights do not fit the model its config builds "
                              f"({'; '.join(wrong[:3])}{'; ...' if len(wrong) > 3 else ''}): "
                              "the projector, LoRA or LLM settings differ from the ones it was trained with")


# --------------------------------------------------------------------------------------------------
# The model


def encoder_tokenizer(cfg: ExperimentConfig):
    """The encoder's tokenizer alone (no weights): what text-only training and simulated decoding need."""
    from tasu.encoders import load_tokenizer

    return load_tokenizer(cfg.encoder.path, cfg.encoder.type)


def check_model_dirs(cfg: ExperimentConfig) -> None:
    """``encoder.path`` and ``llm.path`` are directories here (see :func:`tasu.config.require_dir`), and
    the encoder's backend takes the ``encoder.options`` given (a text-only run too: a misspelt option
    would otherwise wait for the first audio stage)."""
    require_dir("encoder.path", cfg.encoder.path, "the encoder's directory is needed (its tokenizer at least)")
    require_dir("llm.path", cfg.llm.path, "the directory of a Hugging Face causal LM is needed")
    llm_config = Path(cfg.llm.path) / "config.json"   # transformers' own error names neither key nor file
    if not llm_config.is_file() or "model_type" not in read_json(llm_config, expected="a model's config.json"):
        raise ConfigError(f"llm.path {cfg.llm.path}: not a Hugging Face causal LM's directory ({llm_config} "
                          "is missing or names no model_type)")
    if cfg.encoder.options:
        from tasu.encoders import check_options

        try:
            check_options(cfg.encoder.path, cfg.encoder.type, cfg.encoder.options)
        except ValueError as e:
            raise ConfigError(f"encoder.options: {e}") from None


def build_model(cfg: ExperimentConfig, audio: bool, device: str = "cpu") -> SpeechLLM:
    """The speech LLM the config describes, with an untrained projector (and LoRA adapters)."""
    from tasu.encoders import load_encoder
    from tasu.model import SpeechLLM

    check_model_dirs(cfg)
    # load_encoder leaves the global random stream as it was: training from posterior dumps (no
    # encoder) starts from the same fresh projector weights as training on audio
    encoder = load_encoder(cfg.encoder.path, cfg.encoder.type, device=device, **cfg.encoder.options) if audio else None
    vocab_size = (encoder.tokenizer if encoder is not None else encoder_tokenizer(cfg)).vocab_size
    model = SpeechLLM.from_pretrained(cfg.llm.path, cfg.projector.name, vocab_size, lora=cfg.llm.lora,
                                      projector_options=cfg.projector.options, dtype=cfg.llm.dtype,
                                      encoder=encoder, gradient_checkpointing=cfg.llm.gradient_checkpointing)
    return model.to(device)


def load_trained(path: str | Path, which: str = "best", audio: bool = True, device: str = "cpu",
                 overrides: tuple[str, ...] | list[str] = ()) -> tuple[SpeechLLM, ExperimentConfig, PromptSet, Path]:
    """A trained model from an experiment dir or checkpoint dir: (model, config, prompts, checkpoint).

    ``overrides`` change the saved config before building, e.g. ``llm.path=...`` for base models
    that live elsewhere on this machine. Torch's global random stream is left as it was (the model's
    fresh weights are drawn from it, then overwritten by the checkpoint's).
    """
    import torch

    ckpt = resolve_checkpoint(path, which)
    cfg = read_model_config(ckpt, overrides)
    with torch.random.fork_rng(devices=[]):
        model = build_model(cfg, audio=audio, device=device)   # first: it says what an LLM directory lacks
    check_vocab(ckpt, cfg, model.encoder.tokenizer if model.encoder is not None else encoder_tokenizer(cfg))
    check_llm(ckpt, cfg)
    trained = load_trainable(ckpt)
    check_fits({name: p.shape for name, p in model.named_parameters()}, trained, ckpt)
    try:
        model.load_trainable_state_dict({k: v.to(device) for k, v in trained.items()})
    except KeyError as e:  # other names: another projector or LoRA layout than the config's
        raise CheckpointError(f"{ckpt}: {e.args[0]}: the config differs from the one it was trained with") from None
    prompts = load_prompts(ckpt / MODEL_DIR / PROMPTS)
    return model.eval(), cfg, prompts, ckpt
