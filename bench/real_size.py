"""TASU at the released sizes on this machine: SenseVoiceSmall + Qwen2.5-1.5B shapes, random weights.

    python bench/real_size.py                 # full size: ~10 GB of memory, several minutes on 2 cores
    python bench/real_size.py --layers 2      # the same code with 2 of the LLM's 28 layers (quick check)
    python bench/real_size.py --batch 8       # 8 utterances a step instead of 2

The models are made from nothing by ``test/real_layout.py`` (the released configuration values,
file layout and key names) and loaded through tasu's own loaders; the projector is the original's
linear-silu (LayerNorm(25,055) -> Linear 2,048 -> SiLU -> Linear 1,536). One batch of 2 utterances (``--batch``),
prompt 15 tokens, a 40-token transcript (~38 simulated rows after the default 5 % drops; 34 LLM
tokens in the baseline), target 24 tokens + EOS. Prints ``name: value`` lines:

- text_frozen_step_s, text_lora_step_s: one TASU text-only training step (simulation -> projector
  -> frozen LLM forward/backward -> AdamW), with the LLM frozen, and with LoRA rank 8 on q/k/v/o;
- lora_step_s: plain LoRA fine-tuning of the same LLM on the same text (the transcript's LLM tokens
  where TASU has the speech rows), same LoRA, loss code and optimizer;
- text_lora_vs_lora_step: TASU (LoRA) step over plain LoRA step, the median of interleaved rounds'
  ratios (goal <= 1.03), and text_lora_vs_lora_peak_mem: their peak memory ratio (goal <= 1.15), the
  peaks from torch.profiler's tensor accounting during one steady-state step;
- audio_step_s: one audio training step (2 x 5 s: SenseVoiceSmall frozen, compression, projector,
  LLM with LoRA), with compress_share and projector_share: the time of compression and of the
  projector's forward/backward as shares of it;
- decode_rtf_beam4: beam-4 decoding of a 10 s utterance (encoder, compression, projector, LLM
  generate, at most 30 new tokens: random weights seldom stop), wall time / 10 s;
- peak_rss_gb: the process's peak resident memory.
"""
from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "test"))

from core_text_step import _peak_mem_mb  # noqa: E402
from environment import enter_recipe_environment, header  # noqa: E402
from tasu.cli import at_least  # noqa: E402

PROMPT_BEFORE, PROMPT_AFTER, TRANSCRIPT_ENC, TRANSCRIPT_LLM, TARGET = 10, 5, 40, 34, 24
ENC_VOCAB, LLM_HIDDEN = 25_055, 1536
ROUNDS = 3


def timed(step) -> float:
    start = time.perf_counter()
    step()
    return time.perf_counter() - start


def build(root: Path, layers: int):
    """(SenseVoiceSmall encoder, Qwen2 with Qwen2.5-1.5B's sizes, its tokenizer), loaded by tasu."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from real_layout import QWEN25_1P5B, write_qwen_tokenizer, write_sensevoice_small
    from tasu.encoders import load_encoder
    from tasu.llm import load_llm_tokenizer

    encoder = load_encoder(write_sensevoice_small(root / "SenseVoiceSmall"))
    write_qwen_tokenizer(root / "qwen")
    values = {k: v for k, v in QWEN25_1P5B.items() if k not in ("architectures", "model_type")}
    torch.manual_seed(0)
    llm = Qwen2ForCausalLM(Qwen2Config(**{**values, "num_hidden_layers": layers})).requires_grad_(False)
    return encoder, llm, load_llm_tokenizer(root / "qwen")


def bench(layers: int, batch: int) -> dict[str, float]:
    from tasu.compress import compress_posteriors
    from tasu.experiment import LoRAConfig
    from tasu.llm import TextBatch, add_lora
    from tasu.model import SpeechLLM, causal_lm_loss, splice
    from tasu.projectors import build_projector
    from tasu.simulate import RuleSimulator, SimulationConfig

    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        encoder, llm, tokenizer = build(Path(tmp), layers)
    eos = tokenizer.eos_token_id

    def ids(n: int, high: int = 150_000) -> list[int]:
        return torch.randint(300, high, (n,)).tolist()

    before, after = [ids(PROMPT_BEFORE) for _ in range(batch)], [ids(PROMPT_AFTER) for _ in range(batch)]
    targets = [ids(TARGET) + [eos] for _ in range(batch)]
    tasu_text = TextBatch.from_lists([b + a for b, a in zip(before, after)], [PROMPT_BEFORE] * batch, targets, eos)
    base_text = TextBatch.from_lists([b + ids(TRANSCRIPT_LLM) + a for b, a in zip(before, after)],
                                     [PROMPT_BEFORE] * batch, targets, eos)
    transcripts = [ids(TRANSCRIPT_ENC, ENC_VOCAB) for _ in range(batch)]
    simulator = RuleSimulator(SimulationConfig(), ENC_VOCAB)
    generator = torch.Generator().manual_seed(0)
    no_speech, no_lengths = torch.zeros(batch, 0, LLM_HIDDEN), torch.zeros(batch, dtype=torch.long)

    def model_with(lora: bool) -> SpeechLLM:
        if lora:
            add_lora(llm, LoRAConfig(r=8, alpha=16))
        projector = build_projector("linear-silu", ENC_VOCAB, LLM_HIDDEN, hidden=2048)
        return SpeechLLM(llm, tokenizer, projector, encoder=encoder).train()

    def optimizer(module: torch.nn.Module) -> torch.optim.Optimizer:
        return torch.optim.AdamW([p for p in module.parameters() if p.requires_grad], lr=5e-5, fused=True)

    def text_step(model, opt):
        def step() -> None:
            model(simulator(transcripts, generator), tasu_text).loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        return step

    frozen = model_with(lora=False)
    step = text_step(frozen, optimizer(frozen))
    step()
    out["text_frozen_step_s"] = statistics.median(timed(step) for _ in range(ROUNDS))
    del frozen, step   # its projector and optimizer state: ~0.8 GB

    model = model_with(lora=True)   # LoRA added to the same LLM; a fresh projector
    tasu_step = text_step(model, optimizer(model))
    base_opt = optimizer(model.llm)

    def lora_step() -> None:
        embedding = model.llm.get_input_embeddings()
        causal_lm_loss(model.llm, *splice(base_text, no_speech, no_lengths, embedding)).loss.backward()
        base_opt.step()
        base_opt.zero_grad(set_to_none=True)

    tasu_step(), lora_step()
    rounds = [(timed(tasu_step), timed(lora_step)) for _ in range(ROUNDS)]
    out["text_lora_step_s"] = statistics.median(t for t, _ in rounds)
    out["lora_step_s"] = statistics.median(b for _, b in rounds)
    out["text_lora_vs_lora_step"] = statistics.median(t / b for t, b in rounds)
    tasu_mem, base_mem = _peak_mem_mb(tasu_step), _peak_mem_mb(lora_step)
    out["text_lora_peak_mem_mb"], out["lora_peak_mem_mb"] = tasu_mem, base_mem
    out["text_lora_vs_lora_peak_mem"] = tasu_mem / base_mem

    from fixtures import waveform

    waves = [waveform(5.0, seed=i) for i in range(batch)]
    opt = optimizer(model)
    parts = {"compress": 0.0, "projector": 0.0}

    def audio_step() -> None:
        with torch.no_grad():
            feats, feat_lengths = encoder.extract_features(waves)
            log_probs, lengths = encoder(feats, feat_lengths)
        start = time.perf_counter()
        post = compress_posteriors(log_probs.exp(), lengths, 16, threshold=0.9, blank_id=encoder.blank_id)
        parts["compress"] = time.perf_counter() - start
        start = time.perf_counter()
        speech, speech_lengths = model.projector(post)
        speech_grad = speech.detach().requires_grad_()
        parts["projector"] = time.perf_counter() - start
        loss = causal_lm_loss(model.llm, *splice(tasu_text, speech_grad, speech_lengths,
                                                 model.llm.get_input_embeddings())).loss
        loss.backward()
        start = time.perf_counter()
        speech.backward(speech_grad.grad)
        parts["projector"] += time.perf_counter() - start
        opt.step()
        opt.zero_grad(set_to_none=True)

    audio_step()
    times, shares = [], []
    for _ in range(ROUNDS):
        times.append(timed(audio_step))
        shares.append((parts["compress"] / times[-1], parts["projector"] / times[-1]))
    out["audio_step_s"] = statistics.median(times)
    out["compress_share"] = statistics.median(c for c, _ in shares)
    out["projector_share"] = statistics.median(p for _, p in shares)

    model.eval()
    utterance = [waveform(10.0, seed=9)]

    def decode() -> None:
        post = model.encode_audio(utterance)   # the default compress section: top-16 rows
        model.generate(post, ["Transcribe the audio."], num_beams=4, max_new_tokens=30)

    out["decode_rtf_beam4"] = timed(decode) / 10.0
    out["llm_layers"] = layers
    out["batch"] = batch
    out["llm_parameters_m"] = sum(p.numel() for p in llm.parameters()) / 1e6
    out["encoder_parameters_m"] = sum(p.numel() for p in encoder.parameters()) / 1e6
    out["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return out


def main() -> None:
    enter_recipe_environment()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=at_least(1), default=28, help="LLM layers (Qwen2.5-1.5B has 28)")
    parser.add_argument("--batch", type=at_least(1), default=2, help="utterances a step (default: 2)")
    args = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    print(header())
    for name, value in bench(args.layers, args.batch).items():
        print(f"{name}: {value:.6g}", flush=True)


if __name__ == "__main__":
    main()
