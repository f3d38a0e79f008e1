"""The learned simulator (TASU2): a small Transformer that writes an encoder's posteriors from text.

The rules (``rules.py``) put one smoothed one-hot row per token and edit them at random; a real
encoder's compressed rows are not like that: blank rows, split and merged tokens, confusions
between pieces that *sound* alike, and a spread of mass over the alternatives. This model learns
them from the encoder itself (``tasu train-simulator``: teacher = the encoder's compressed
posteriors of clean and degraded audio) and then writes such rows for any transcript.

Model (one encoder-decoder, written out like nanoGPT so it can be read in one sitting):

- encoder input: the transcript's encoder-token ids, embedded, with sinusoidal positions, after one
  extra token made from the **condition**;
- decoder: autoregressive over posterior rows. A row enters as the mixture of its top-k ids'
  embeddings weighted by their probabilities (so a confident row is its token, an unsure one a blend),
  after a learned start row; pre-LN blocks of causal self-attention, cross-attention, MLP;
- output: V + 1 classes, the next row's distribution over the encoder vocabulary plus an end class.
  Trained with teacher forcing and a soft cross-entropy against the teacher's top-k row (its
  probabilities renormalised over the k kept entries), and the end class after the last row.

The condition is the target **WER as a scalar** (through Fourier features and an MLP), not a bin.
Why: the teacher's examples come with their own measured token error rate, a number, and a scalar
keeps all of it where bins would throw away where inside a bin an example lies; the text-only
curriculum (``WERSchedule``) asks for rates anywhere in a range and moves them smoothly, which bins
can only follow in jumps of their width (5 to 10 points, wider than the ±3 points the simulation is
meant to hit). The range the teacher covered is stored with the model, and asking outside it is
an error rather than an extrapolation nobody measured.

**Calibration.** The condition the model learns is the teacher's error rate, but the rows it writes
are *sampled*, and at the usual temperature 0.5 sampling sharpens each row towards its top entry:
asked for 30 % it writes rows that err at 9 % (measured on egs/mini). So ``tasu
train-simulator`` ends by measuring the sampled rows' token error rate at a grid of conditions over
the trained range, at the temperature it is told (``train.temperature``, the simulation's default),
and stores that curve in ``config.json``; the simulator then inverts it: asked for a WER it feeds
the model the condition whose rows err at that rate. Sampled at another temperature the curve does
not hold, and the raw condition is used (with a warning once); so it is in a directory without a
curve (a checkpoint's, or trained with ``train.report_utterances=0``: a warning on loading). An asked
rate more than ``REACH`` outside what the curve reaches gets its nearest end (a warning once).

Sampling (batched, with ``temperature``): at each step the next row's token is drawn from the output
distribution at that temperature (Gumbel noise from the caller's generator, drawn on the CPU so that
the rows do not depend on the device); the end class ends the utterance (not before its first row,
at the latest after ``max_rows_per_token * L + 8`` rows). The emitted row is the model's distribution
at the same temperature with the drawn token's and the top entry's probabilities exchanged: the
drawn token is the row's top-1 (what decides its error), the spread of the rest is the model's. The
temperature applies to the row too because the model predicts the *mean* of the rows a context can
have, flatter than any one of them: on egs/mini's dev set the untempered rows had 3.3 bits of
entropy against the encoder's 0.88, the tempered ones 0.95 (``tasu analyze``). Rows are kept sparse, top-k.

A simulator directory holds ``config.json`` (sizes, the encoder's vocabulary size, blank id and a
digest of its pieces, the trained WER range) and ``model.safetensors``: loading reads tensors and
JSON, never a pickle. A directory made for another encoder vocabulary is refused. Its config also
records the teacher (``tasu.dump.identity``: the encoder's backend, files and options, and the
compression), compared with the encoder and compression it is used with (``check_teacher``).
"""
from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from tasu.fileio import file_sha256
from tasu.posteriors import Posteriors, length_mask
from tasu.simulate.base import PosteriorSimulator, Vocabulary, register, target_rates, vocab_digest
from tasu.simulate.config import SimulationConfig

CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"
REACH = 0.03   # how far off an asked WER the calibrated rows may err (the ±3 points the simulation is meant to hit)
log = logging.getLogger("tasu.simulate")


class SimulatorError(ValueError):
    """A learned simulator that cannot serve this request: missing files, another vocabulary, a
    condition outside its trained range. The message says which."""


@dataclass
class SimulatorArchitecture:
    """The learned simulator's sizes: what a user chooses (``model:`` of ``tasu train-simulator``'s
    config). The defaults fit a small encoder vocabulary on a couple of CPU cores."""

    topk: int = 10                         # entries per row: the teacher's targets and the emitted rows
    d_model: int = 128
    heads: int = 4
    encoder_layers: int = 2
    decoder_layers: int = 2
    ffn: int = 512
    dropout: float = 0.1
    max_rows_per_token: float = 3.0        # sampling stops at max_rows_per_token * L + 8 rows

    def check(self) -> None:
        """Each size before a model is built of it (a config's ``model:``, a saved ``config.json``)."""
        for name in ("topk", "d_model", "heads", "encoder_layers", "decoder_layers", "ffn"):
            value = getattr(self, name)
            if type(value) is not int or value < 1:
                raise ValueError(f"{name} {value!r}: not a whole number of at least 1")
        if self.d_model % self.heads:
            raise ValueError(f"d_model {self.d_model} is not a multiple of heads {self.heads}")
        if type(self.dropout) not in (int, float) or not 0 <= self.dropout < 1:
            raise ValueError(f"dropout {self.dropout!r}: not a probability below 1")
        if type(self.max_rows_per_token) not in (int, float) or not 1 <= self.max_rows_per_token < math.inf:
            raise ValueError(f"max_rows_per_token {self.max_rows_per_token!r}: not a number of at least 1")


@dataclass(kw_only=True)
class LearnedSimulatorConfig(SimulatorArchitecture):
    """The architecture plus what the encoder and teacher decide (``config.json`` of its directory)."""

    vocab_size: int
    blank_id: int
    vocab_digest: str = ""                 # SHA-256 of the encoder's pieces, one per line
    wer_range: tuple[float, float] = (0.0, 1.0)   # the teacher's measured token error rates (min, max)
    encoder: dict = field(default_factory=dict)   # what the teacher was: backend, file digest, compress
    # {"temperature": T, "condition": [...], "wer": [...]}: the sampled rows' token error rate at each
    # condition, at temperature T (nondecreasing); empty: not calibrated, asked WER = condition
    calibration: dict = field(default_factory=dict)
    weights_sha256: str = ""   # of the model.safetensors written with it (empty: an older tasu wrote it)

    def __post_init__(self) -> None:
        # config.json is a file on disk, edited or not: each field is checked before a model is built of it
        self.check()
        if type(self.vocab_size) is not int or self.vocab_size < 1:
            raise ValueError(f"vocab_size {self.vocab_size!r}: not a whole number of at least 1")
        if self.topk > self.vocab_size:   # a row keeps top-k of the vocabulary: torch fails naming nothing
            raise ValueError(f"topk {self.topk} exceeds vocab_size {self.vocab_size}")
        if type(self.blank_id) is not int:
            raise ValueError(f"blank_id {self.blank_id!r}: not a whole number")
        if self.calibration:
            _check_calibration(self.calibration)
        if not 0 <= self.blank_id < self.vocab_size:
            raise ValueError(f"blank_id {self.blank_id} outside a vocabulary of {self.vocab_size}")
        # widened, the range would serve WERs the teacher never showed the model; reversed or cut short,
        # every condition would fail in torch naming nothing
        lo_hi = self.wer_range
        if not (isinstance(lo_hi, (list, tuple)) and len(lo_hi) == 2 and all(map(_is_number, lo_hi))
                and 0 <= lo_hi[0] <= lo_hi[1] <= 1):
            raise ValueError(f"wer_range {lo_hi!r}: not two rates 0 <= lo <= hi <= 1")
        cal = self.calibration.get("condition")
        if cal and not all(math.isclose(a, b, abs_tol=1e-6) for a, b in zip((cal[0], cal[-1]), lo_hi)):
            raise ValueError(f"wer_range {list(lo_hi)}: not the range its calibration was measured over "
                             f"({cal[0]:.4g}-{cal[-1]:.4g})")
        self.wer_range = tuple(self.wer_range)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1) + "\n"

    @classmethod
    def from_json(cls, text: str, source: str = CONFIG_FILE) -> "LearnedSimulatorConfig":
        try:
            data = json.loads(text)
            known = {f.name for f in fields(cls)}
            unknown = sorted(set(data) - known)
            if unknown:
                raise ValueError(f"unknown keys {unknown}")
            return cls(**data)
        except (ValueError, TypeError) as e:
            raise SimulatorError(f"{source}: not a learned simulator's config: {e}") from None


def _is_number(x) -> bool:
    return type(x) in (int, float) and math.isfinite(x)


def _check_calibration(cal: dict) -> None:
    """``{"temperature": T, "condition": [...], "wer": [...]}``: two nondecreasing lists of rates of one
    length, as calibration writes them (inverting it interpolates between their points)."""
    cond, wer = cal.get("condition"), cal.get("wer")
    if not (_is_number(cal.get("temperature")) and isinstance(cond, list) and isinstance(wer, list)
            and len(cond) == len(wer) >= 2 and all(map(_is_number, cond + wer))
            and all(a <= b for a, b in zip(cond, cond[1:])) and all(a <= b for a, b in zip(wer, wer[1:]))):
        raise ValueError("calibration: not {temperature, condition, wer} with two nondecreasing lists of numbers "
                         "of one length")


# --------------------------------------------------------------------------------------------------
# The model


def sinusoids(length: int, dim: int, device=None) -> torch.Tensor:
    """[length, dim] fixed sinusoidal positions (no learned table: any length works)."""
    pos = torch.arange(length, device=device, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / dim))
    out = torch.zeros(length, dim, device=device)
    out[:, 0::2] = torch.sin(pos * freq)
    out[:, 1::2] = torch.cos(pos * freq)
    return out


class Attention(nn.Module):
    """Multi-head attention; ``memory`` None is self-attention. ``mask``: [B, 1|Tq, Tk] True = attend."""

    def __init__(self, d: int, heads: int, dropout: float):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.q, self.kv, self.out = nn.Linear(d, d), nn.Linear(d, 2 * d), nn.Linear(d, d)

    def forward(self, x: torch.Tensor, mask: torch.Tensor, memory: torch.Tensor | None = None) -> torch.Tensor:
        b, t, d = x.shape
        src = x if memory is None else memory
        q = self.q(x).view(b, t, self.heads, -1).transpose(1, 2)
        k, v = self.kv(src).view(b, src.shape[1], 2, self.heads, -1).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None],
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.out(y.transpose(1, 2).reshape(b, t, d))


class Block(nn.Module):
    """Pre-LN: self-attention, cross-attention (decoder blocks only), MLP; each a residual branch."""

    def __init__(self, d: int, heads: int, ffn: int, dropout: float, cross: bool):
        super().__init__()
        self.ln1, self.attn = nn.LayerNorm(d), Attention(d, heads, dropout)
        self.cross = cross
        if cross:
            self.ln2, self.xattn = nn.LayerNorm(d), Attention(d, heads, dropout)
        self.ln3 = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, ffn), nn.GELU(), nn.Linear(ffn, d), nn.Dropout(dropout))

    def forward(self, x, mask, memory=None, memory_mask=None):
        x = x + self.attn(self.ln1(x), mask)
        if self.cross:
            x = x + self.xattn(self.ln2(x), memory_mask, memory)
        return x + self.mlp(self.ln3(x))


class SimulatorModel(nn.Module):
    """Transcript ids + WER -> logits over V + 1 for each next row (see the module doc)."""

    FOURIER = 8

    def __init__(self, c: LearnedSimulatorConfig):
        super().__init__()
        self.c = c
        d, v = c.d_model, c.vocab_size
        self.token = nn.Embedding(v, d)          # transcript tokens
        self.row = nn.Embedding(v, d)            # decoder input: rows as mixtures of these
        self.start = nn.Parameter(torch.zeros(d))
        self.condition = nn.Sequential(nn.Linear(1 + 2 * self.FOURIER, d), nn.GELU(), nn.Linear(d, d))
        self.drop = nn.Dropout(c.dropout)
        self.encoder = nn.ModuleList(Block(d, c.heads, c.ffn, c.dropout, cross=False) for _ in range(c.encoder_layers))
        self.decoder = nn.ModuleList(Block(d, c.heads, c.ffn, c.dropout, cross=True) for _ in range(c.decoder_layers))
        self.ln_enc, self.ln_dec = nn.LayerNorm(d), nn.LayerNorm(d)
        self.head = nn.Linear(d, v + 1)
        nn.init.normal_(self.start, std=0.02)

    @property
    def end_id(self) -> int:
        return self.c.vocab_size

    def wer_features(self, wer: torch.Tensor) -> torch.Tensor:
        k = torch.arange(1, self.FOURIER + 1, device=wer.device, dtype=torch.float32)
        w = wer.float()[:, None]
        return torch.cat([w, torch.sin(math.pi * k * w), torch.cos(math.pi * k * w)], 1)

    def encode(self, src: torch.Tensor, src_len: torch.Tensor, wer: torch.Tensor):
        """Memory [B, 1 + L, d] and its mask [B, 1, 1 + L] (the condition token is always valid)."""
        b, L = src.shape
        x = torch.cat([self.condition(self.wer_features(wer))[:, None], self.token(src)], 1)
        x = self.drop(x + sinusoids(L + 1, self.c.d_model, src.device))
        valid = length_mask(src_len + 1, L + 1)[:, None]
        for block in self.encoder:
            x = block(x, valid)
        return self.ln_enc(x), valid

    def embed_rows(self, ids: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
        """[B, T, K] ids and their probabilities -> [B, T, d]: each row as the mixture of its entries."""
        p = probs / probs.sum(-1, keepdim=True).clamp_min(1e-9)
        return (self.row(ids) * p[..., None]).sum(2)

    def decode(self, memory, memory_mask, row_ids, row_probs):
        """Logits [B, 1 + T, V + 1]: position t predicts row t from the start row and rows < t."""
        b, t = row_ids.shape[:2]
        x = torch.cat([self.start.expand(b, 1, -1), self.embed_rows(row_ids, row_probs)], 1)
        x = self.drop(x + sinusoids(t + 1, self.c.d_model, x.device))
        causal = torch.ones(t + 1, t + 1, dtype=torch.bool, device=x.device).tril()[None]
        for block in self.decoder:
            x = block(x, causal, memory, memory_mask)
        return self.head(self.ln_dec(x))

    def loss(self, src, src_len, wer, row_ids, row_probs, row_len) -> torch.Tensor:
        """Teacher forcing: soft cross-entropy against the teacher's rows, then the end class.

        ``row_probs`` [B, T, K] are the teacher's top-k probabilities (renormalised here), zero on
        padding rows; the mean is over every predicted position (rows + one end per utterance).
        """
        memory, memory_mask = self.encode(src, src_len, wer)
        logp = self.decode(memory, memory_mask, row_ids, row_probs).log_softmax(-1)   # [B, T + 1, V + 1]
        b, t = row_ids.shape[:2]
        target = row_probs / row_probs.sum(-1, keepdim=True).clamp_min(1e-9)
        rows = -(logp[:, :t].gather(2, row_ids) * target).sum(-1)                      # [B, T]
        rows = rows * length_mask(row_len, t)
        end = -logp[torch.arange(b, device=logp.device), row_len, self.end_id]         # [B]
        return (rows.sum() + end.sum()) / (row_len.sum() + b)

    @torch.no_grad()
    def sample(self, src, src_len, wer, temperature: float, generator: torch.Generator | None = None):
        """Rows for a batch: (ids [B, T, K], probs [B, T, K], floor [B, T], blank [B, T], lengths [B])."""
        device, b, v, k = src.device, src.shape[0], self.c.vocab_size, self.c.topk
        memory, memory_mask = self.encode(src, src_len, wer)
        limit = (self.c.max_rows_per_token * src_len.double()).long() + 8
        ids = torch.zeros(b, 0, k, dtype=torch.long, device=device)
        probs = torch.zeros(b, 0, k, device=device)
        floors, blanks = [], []
        lengths = torch.zeros(b, dtype=torch.long, device=device)
        alive = torch.ones(b, dtype=torch.bool, device=device)
        for t in range(int(limit.max())):
            logits = self.decode(memory, memory_mask, ids, probs)[:, -1].float()        # [B, V + 1]
            if t == 0:
                logits[:, self.end_id] = -math.inf                                        # at least one row
            gumbel = -torch.log(-torch.log(torch.rand(b, v + 1, generator=generator).clamp(1e-10, 1 - 1e-7)))
            drawn = (logits / temperature + gumbel.to(device)).argmax(-1)
            alive = alive & (drawn != self.end_id) & (t < limit)
            if not bool(alive.any()):
                break
            lengths += alive.long()
            p = (logits[:, :v] / temperature).softmax(-1)                               # the row, as sharp as the draw
            token = drawn.clamp_max(v - 1)[:, None]
            top = p.argmax(-1, keepdim=True)
            p_token, p_top = p.gather(1, token), p.gather(1, top)
            p = p.scatter(1, token, p_top).scatter(1, top, p_token)                      # drawn token on top
            w, i = p.topk(k, dim=-1)
            rest = (1.0 - w.sum(-1)).clamp_min(0.0) / max(v - k, 1)
            keep = alive[:, None].float()
            ids = torch.cat([ids, torch.where(alive[:, None], i, self.c.blank_id)[:, None]], 1)
            probs = torch.cat([probs, (w * keep)[:, None]], 1)
            floors.append(rest * alive)
            blanks.append(p[:, self.c.blank_id] * alive)
        t = int(lengths.max())
        ids, probs = ids[:, :t], probs[:, :t]
        floor = torch.stack(floors, 1)[:, :t] if floors else probs.new_zeros(b, 0)
        blank = torch.stack(blanks, 1)[:, :t] if blanks else probs.new_zeros(b, 0)
        return ids, probs, floor, blank, lengths


# --------------------------------------------------------------------------------------------------
# The simulator


def read_simulator_dir(path: str | Path) -> tuple[LearnedSimulatorConfig, dict]:
    """(config, weights) of a learned simulator's directory; safetensors and JSON only.

    Weights cut short, whole numbers (they would load into the float model without a word) or NaN/inf
    (every simulated row would be garbage) are refused, naming the file and the tensor."""
    root = Path(path)
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not (root / name).is_file():
            raise SimulatorError(f"{root}: not a learned simulator's directory (no {name}); "
                                 "tasu train-simulator --out writes one")
    config = LearnedSimulatorConfig.from_json((root / CONFIG_FILE).read_text(encoding="utf-8"),
                                              str(root / CONFIG_FILE))
    weights = root / WEIGHTS_FILE
    state = read_safetensors(weights)
    for name, t in state.items():
        if not t.is_floating_point():
            raise SimulatorError(f"{weights}: {name} holds {str(t.dtype).removeprefix('torch.')} values, where "
                                 "a trained simulator's weights are floating point")
        if not torch.isfinite(t).all():
            raise SimulatorError(f"{weights}: {name} holds NaN or infinite values: train the simulator again")
    if config.weights_sha256 and config.weights_sha256 != file_sha256(weights):
        raise SimulatorError(f"{weights} is not the model written with {root / CONFIG_FILE} (a run stopped between "
                             "writing the two, or one was copied from elsewhere): run tasu train-simulator again "
                             "with the same --out and --resume to write both")
    return config, state


def read_safetensors(path: Path, remedy: str = "") -> dict:
    """A safetensors file of a learned simulator or its training, or a ``SimulatorError`` naming it
    (cut short, or not one: safetensors' own error names no file); ``remedy`` ends the message."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except SafetensorError as e:
        raise SimulatorError(f"{path}: damaged: truncated, or not a safetensors file ({e}){remedy}") from None


def write_simulator_dir(path: str | Path, config: LearnedSimulatorConfig, state: dict) -> None:
    """Write ``config.json`` and ``model.safetensors`` into ``path``, each through a temporary file
    and a rename, weights first, never a half-written file. The config records the weights' digest:
    a run killed between the two renames left new weights beside the old config (its calibration
    another model's), which ``read_simulator_dir`` refuses."""
    from dataclasses import replace

    from tasu.fileio import write_atomic

    root = Path(path)
    save_safetensors_atomic(root / WEIGHTS_FILE, state)
    write_atomic(root / CONFIG_FILE, replace(config, weights_sha256=file_sha256(root / WEIGHTS_FILE)).to_json())


def save_safetensors_atomic(path: Path, state: dict) -> None:
    """Save ``state`` as safetensors through ``tasu.fileio.atomic_replace``: a reader (a resumed run)
    finds the old file or the whole new one. Missing parent directories are created."""
    from safetensors.torch import save_file

    from tasu.fileio import atomic_replace

    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_replace(path) as tmp:
        save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(tmp))


@register("learned")
class LearnedSimulator(PosteriorSimulator):
    """``SimulatorModel`` behind the simulator interface; condition = the target WER per utterance."""

    def __init__(self, model: SimulatorModel, config: SimulationConfig | None = None, temperature: float = 0.5,
                 source: str = "the learned simulator"):
        self.model = model.eval()
        self.c = model.c
        self.config = config
        self.temperature = temperature
        self.source = source
        self.vocab_size, self.blank_id = self.c.vocab_size, self.c.blank_id
        self._warned = self._warned_reach = False

    def condition(self, rates: torch.Tensor) -> torch.Tensor:
        """The model's condition for asked WERs: the inverse of the calibration curve when it was
        measured at this temperature (see the module doc), else the asked WERs themselves."""
        cal = self.c.calibration
        if not cal:
            return rates
        if abs(cal["temperature"] - self.temperature) > 1e-9:
            if not self._warned:
                log.warning("%s is calibrated for temperature %g, not %g: the asked WER is its raw condition",
                            self.source, cal["temperature"], self.temperature)
                self._warned = True
            return rates
        self._warn_unreached(rates, cal["wer"])
        return invert_calibration(rates, cal["condition"], cal["wer"])

    def _warn_unreached(self, rates: torch.Tensor, reached: Sequence[float]) -> None:
        """Once: asked WERs the calibration curve does not reach (beyond ``REACH``) get its nearest end,
        rows that err at another rate than asked."""
        lo, hi = float(rates.min()), float(rates.max())
        if self._warned_reach or reached[0] - REACH <= lo and hi <= reached[-1] + REACH:
            return
        log.warning("%s: asked WER %.1f-%.1f %%, but its sampled rows err at %.1f-%.1f %% only (its calibration, "
                    "config.json): outside that, rows err at the nearest end; ask inside it, or train the simulator "
                    "on a teacher that covers the rest", self.source, 100 * lo, 100 * hi, 100 * reached[0],
                    100 * reached[-1])
        self._warned_reach = True

    @classmethod
    def load(cls, path: str | Path, tokenizer: Vocabulary | None = None, device: str | torch.device = "cpu",
             config: SimulationConfig | None = None, temperature: float = 0.5) -> "LearnedSimulator":
        c, state = read_simulator_dir(path)
        if tokenizer is not None:
            check_vocabulary(c, tokenizer, path)
        with torch.random.fork_rng(devices=[]):   # its fresh weights, drawn before the file's: keep the caller's stream
            model = SimulatorModel(c)
        try:
            missing, unexpected = model.load_state_dict(state, strict=False)
        except RuntimeError:   # tensors of other sizes: torch lists each, over many lines
            raise SimulatorError(f"{path}: the weights do not fit its config.json (tensors of other sizes than "
                                 "its model.* settings give)") from None
        if missing or unexpected:
            raise SimulatorError(f"{path}: the weights do not fit its config.json "
                                 f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
        if not c.calibration:   # a checkpoint directory, or trained with train.report_utterances=0
            log.warning("%s is not calibrated: an asked WER is its raw condition, whose rows err far less than "
                        "asked; use the directory tasu train-simulator --out wrote, with train.report_utterances > 0",
                        path)
        return cls(model.to(device), config, temperature, source=str(path))

    @classmethod
    def from_config(cls, config: SimulationConfig, tokenizer: Vocabulary,
                    device: str | torch.device = "cpu") -> "LearnedSimulator":
        sim = cls.load(config.path, tokenizer, device, config, config.temperature)
        if config.wer is not None:   # a schedule's range moves between its start and its end
            for name in ("start", "end"):
                sim.check_wer(getattr(config.wer, name), f"simulation.wer.{name}")
        return sim

    @property
    def wer_range(self) -> tuple[float, float]:
        return tuple(self.c.wer_range)

    def check_wer(self, rates: Sequence[float], what: str = "wer") -> None:
        lo, hi = self.c.wer_range
        bad = [r for r in rates if not lo - 1e-9 <= r <= hi + 1e-9]
        if bad:
            raise SimulatorError(f"{what}: asks for a WER of {100 * bad[0]:.1f} %, outside the range "
                                 f"{100 * lo:.1f}-{100 * hi:.1f} % that {self.source} was trained on")

    def check_teacher(self, ident: dict, where: str, refuse_compression: bool, say=log.warning) -> None:
        """Say when the encoder or compression of ``ident`` (``tasu.dump.identity``: what ``where`` uses)
        are not those of this simulator's teacher (``encoder`` of its config.json; absent: not recorded).

        Other compression settings keep other rows per token and blank rows than the simulator learned to
        write: a text-only model trained on its rows would meet other rows at decoding, so training
        refuses them (``refuse_compression``). Other encoder files may be deliberate (a fine-tuned encoder
        with the same vocabulary): one line through ``say``, as is other compression anywhere else. An
        ``ident`` without ``compress`` (``tasu simulate`` without a config) has only the encoder's files."""
        teacher = self.c.encoder
        if not teacher:
            return
        full = "compress" in ident
        if full and teacher.get("compress") != ident["compress"]:
            message = (f"{self.source} was trained on rows compressed with {_compress(teacher.get('compress'))}, "
                       f"but {where} compresses with {_compress(ident['compress'])}: its rows are not the rows "
                       "this compression keeps; set compress.* to the simulator's, or train one with these")
            if refuse_compression:
                raise SimulatorError(message)
            say(message)
        then, now = teacher.get("encoder") or {}, ident["encoder"]
        changed = [f"{name} {_short(then.get(key))} vs {_short(now.get(key))}"
                   for key, name in (("type", "type"), ("sha256", "files sha256"), ("options", "options"))
                   if then.get(key) != now.get(key) and (full or key != "options")]
        if changed:
            say(f"{self.source} was trained on another encoder's posteriors than {where}'s ({', '.join(changed)}): "
                "its rows imitate that encoder's errors; train one for this encoder unless that is meant")

    def __call__(self, token_ids: Sequence[Sequence[int]], generator: torch.Generator | None = None,
                 step: int = 0, wer: float | Sequence[float] | None = None) -> Posteriors:
        if len(token_ids) == 0:
            raise ValueError("cannot simulate an empty batch")
        schedule = self.config.wer if self.config is not None else None
        if wer is None and schedule is None:
            raise SimulatorError("the learned simulator needs a target WER: pass wer= or set simulation.wer")
        rates = target_rates(token_ids, wer, None if wer is not None else schedule.at(step), generator)
        self.check_wer(rates.tolist())
        device = next(self.model.parameters()).device
        lengths = torch.tensor([len(x) for x in token_ids])
        flat = [t for x in token_ids for t in x]
        if flat and (min(flat) < 0 or max(flat) >= self.vocab_size):
            raise ValueError(f"token ids must be in [0, {self.vocab_size})")
        src = torch.full((len(token_ids), max(int(lengths.max()), 1)), self.blank_id, dtype=torch.long)
        for i, x in enumerate(token_ids):
            src[i, :len(x)] = torch.tensor(x, dtype=torch.long)
        ids, probs, floor, blank, out_len = self.model.sample(
            src.to(device), lengths.to(device), self.condition(rates).float().to(device), self.temperature, generator)
        empty = (lengths == 0).to(device)
        if bool(empty.any()):   # the model writes confident tokens of nothing: one blank row, as the rules give
            ids[empty], probs[empty], floor[empty], blank[empty] = self.blank_id, 0.0, 0.0, 0.0
            probs[empty, 0, 0] = blank[empty, 0] = 1.0
            out_len = torch.where(empty, 1, out_len)
            t = int(out_len.max())
            ids, probs, floor, blank = ids[:, :t], probs[:, :t], floor[:, :t], blank[:, :t]
        return Posteriors(ids=ids, weights=probs - floor[:, :, None] * (probs > 0), floor=floor, blank=blank,
                          lengths=out_len, vocab_size=self.vocab_size, blank_id=self.blank_id)


def _compress(settings: dict | None) -> str:
    """``threshold 0.9, topk 16`` of a compression identity (``compression disabled`` when it is off)."""
    if not settings:
        return "unrecorded settings"
    if not settings.get("enabled", True):
        return "compression disabled"
    return f"threshold {settings.get('threshold')}, topk {settings.get('topk')}"


def _short(value) -> str:
    """A digest cut to its first 12 digits; anything else as it is (None: none)."""
    if isinstance(value, str) and len(value) == 64:
        return value[:12] + "..."
    return "none" if value is None else str(value)


def invert_calibration(rates: torch.Tensor, condition: Sequence[float], wer: Sequence[float]) -> torch.Tensor:
    """Conditions whose sampled rows err at ``rates``: linear interpolation of the measured curve
    (``wer`` nondecreasing in ``condition``) read backwards; a rate beyond what the curve reaches gets
    its nearest end.

    The curve is a running maximum of measurements (``calibrate``), so it has flat stretches: a dip, or
    0 % errors at the low end. A rate equal to a flat stretch's value is read at its first condition,
    the lowest that reaches it; a rate above it is interpolated from the stretch's *last* condition,
    the one where the curve starts to rise towards it (from the first, the result would lie inside the
    stretch, where the curve gives the flat value: rows that err less than asked)."""
    levels, firsts, lasts = [], [], []   # each distinct rate of the curve, its first and last condition
    for c, w in zip(condition, wer):
        if not levels or w > levels[-1]:
            levels.append(float(w))
            firsts.append(float(c))
            lasts.append(float(c))
        else:
            lasts[-1] = float(c)
    if len(levels) == 1:
        return torch.full_like(rates, firsts[0])
    x = torch.tensor(levels, dtype=torch.float64)
    first, last = torch.tensor(firsts, dtype=torch.float64), torch.tensor(lasts, dtype=torch.float64)
    r = rates.double().clamp(x[0], x[-1])
    i = torch.searchsorted(x, r, right=True).clamp(1, len(levels) - 1)
    f = (r - x[i - 1]) / (x[i] - x[i - 1])
    rising = last[i - 1] + f * (first[i] - last[i - 1])
    return torch.where(r == x[i - 1], first[i - 1], rising).to(rates.dtype)


def check_vocabulary(c: LearnedSimulatorConfig, tokenizer: Vocabulary, path) -> None:
    """Refuse a simulator trained for another encoder vocabulary (size, blank, or pieces)."""
    if (c.vocab_size, c.blank_id) != (tokenizer.vocab_size, tokenizer.blank_id):
        raise SimulatorError(f"{path}: trained for an encoder vocabulary of {c.vocab_size} ids with blank "
                             f"{c.blank_id}, but this encoder has {tokenizer.vocab_size} ids with blank "
                             f"{tokenizer.blank_id}: train a simulator for this encoder")
    if c.vocab_digest and c.vocab_digest != vocab_digest(tokenizer):
        raise SimulatorError(f"{path}: trained for another encoder vocabulary (same size, other pieces): "
                             "train a simulator for this encoder")
