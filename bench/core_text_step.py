"""What a TASU text-only training step costs next to plain text fine-tuning of the same LLM, on CPU.

    python bench/core_text_step.py [--profile]

Prints ``name: value`` lines (``--profile`` adds torch.profiler tables of both steps):

- text_step_ms: one TASU text-only step: simulate posteriors from encoder token ids -> projector
  (linear-silu, 25,055 -> 2,048 -> 512) -> splice into the prompt -> LLM forward/backward -> AdamW.
- baseline_step_ms: one step of the text-only adaptation a user would otherwise run: the same LLM
  fine-tuned on prompt + transcript + target, the transcript's LLM tokens standing where the speech
  span stands in TASU. Same LoRA (rank 8 on q, k, v, o), same loss code (``causal_lm_loss`` via
  ``splice`` with an empty speech span), same optimizer (fused AdamW); TASU adds only the projector.
- text_step_overhead: TASU step time / baseline step time, the median over interleaved rounds of
  one step each (goal <= 1.10).
- text_step_peak_mem_mb, baseline_step_peak_mem_mb: the peak of torch tensor memory allocated
  during one steady-state step (optimizer state already there) above what was live before it, from
  torch.profiler's memory accounting: activations, gradients and temporaries (for both steps the
  peak is the loss over 151,936 logits: logits, log-softmax and their gradient, ~121 MB each).

Sizes: LLM = Qwen2 with Qwen2.5's vocabulary (151,936, tied embeddings like Qwen2.5-1.5B), 4 layers,
hidden 512, intermediate 1,408, 8 heads / 2 key-value heads, random init, float32. Batch: 8
utterances, prompt 15 tokens (10 before the speech, 5 after, as in a chat template), transcript 30
encoder tokens (-> ~28.5 simulated rows after the default 5 % drops) or 25 LLM tokens (Qwen's
vocabulary is 6x larger than SenseVoice's, so ~1.2 encoder tokens per LLM token), target 24 tokens +
EOS. Timings are medians of 15 steps after 2 warm-up steps, the two kinds of step interleaved.

Where TASU's extra time goes (``--profile``; ~50-60 ms on 2 cores): the projector's first Linear has
25,055 x 2,048 = 51 M weights. Its exact sparse forward/backward reads them twice and writes a dense
205 MB weight gradient (~12 ms with the CPU kernels: three passes over memory, the floor of an exact
method), and fused AdamW reads and writes them with their gradient and moments, 1.4 GB (~13 ms, or
~21 ms while the machine's memory bandwidth is shared with busy neighbours). The projector's second
Linear adds three 240 x 2,048 x 512 matmuls (~8 ms), and the spliced sequences are longer (28.5
simulated rows, padded to 30, against 25 transcript tokens: 70 positions against 65), which costs
the LLM's layers ~13 ms, its first layer's input gradient included (the baseline's embeddings need
none). The memory-bound part moves with the machine while the baseline is compute-bound, so the
ratio does too. On CPU a fresh 205 MB gradient buffer every step costs more in page faults than in
arithmetic unless memory is reused: the benchmark runs in the recipes' environment
(``bench/environment.py``), as training does.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from environment import enter_recipe_environment, header  # noqa: E402
from timing import median_ms  # noqa: E402

BATCH, PROMPT_BEFORE, PROMPT_AFTER, TRANSCRIPT_ENC, TRANSCRIPT_LLM, TARGET = 8, 10, 5, 30, 25, 24
ENC_VOCAB, LLM_VOCAB = 25055, 151936


def _tokenizer():
    """A stand-in tokenizer: the benchmark feeds token ids, so only EOS and ``<speech>`` matter."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    from tasu.llm import SPEECH_TOKEN

    vocab = {"<unk>": 0, "<eos>": 1}
    tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel(vocab, unk_token="<unk>")),
                                  unk_token="<unk>", eos_token="<eos>", pad_token="<eos>")
    tok.add_tokens([SPEECH_TOKEN], special_tokens=True)
    return tok


def _setup(seed: int = 0):
    """Build the model and one batch; return the two step closures: TASU, baseline."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from tasu.experiment import LoRAConfig
    from tasu.llm import TextBatch, add_lora
    from tasu.model import SpeechLLM, causal_lm_loss, splice
    from tasu.projectors import build_projector
    from tasu.simulate import RuleSimulator, SimulationConfig

    torch.manual_seed(seed)
    llm = Qwen2ForCausalLM(Qwen2Config(
        vocab_size=LLM_VOCAB, hidden_size=512, intermediate_size=1408, num_hidden_layers=4,
        num_attention_heads=8, num_key_value_heads=2, tie_word_embeddings=True)).requires_grad_(False)
    add_lora(llm, LoRAConfig(r=8, alpha=16, target_modules=("q_proj", "k_proj", "v_proj", "o_proj")))
    projector = build_projector("linear-silu", ENC_VOCAB, 512, hidden=2048)
    model = SpeechLLM(llm, _tokenizer(), projector).train()
    eos = model.tokenizer.eos_token_id

    def ids(n: int, vocab: int = LLM_VOCAB) -> list[int]:
        return torch.randint(2, vocab, (n,)).tolist()

    before = [ids(PROMPT_BEFORE) for _ in range(BATCH)]
    after = [ids(PROMPT_AFTER) for _ in range(BATCH)]
    targets = [ids(TARGET) + [eos] for _ in range(BATCH)]
    transcripts_enc = [ids(TRANSCRIPT_ENC, ENC_VOCAB) for _ in range(BATCH)]
    transcripts_llm = [ids(TRANSCRIPT_LLM) for _ in range(BATCH)]
    tasu_text = TextBatch.from_lists([b + a for b, a in zip(before, after)], [PROMPT_BEFORE] * BATCH, targets, eos)
    base_text = TextBatch.from_lists([b + t + a for b, t, a in zip(before, transcripts_llm, after)],
                                     [PROMPT_BEFORE] * BATCH, targets, eos)
    simulator = RuleSimulator(SimulationConfig(), ENC_VOCAB)
    generator = torch.Generator().manual_seed(seed)
    no_speech = torch.zeros(BATCH, 0, 512)
    no_speech_lengths = torch.zeros(BATCH, dtype=torch.long)

    def optimizer(module: torch.nn.Module) -> torch.optim.Optimizer:
        params = [p for p in module.parameters() if p.requires_grad]
        return torch.optim.AdamW(params, lr=5e-5, betas=(0.9, 0.999), eps=1e-6, fused=True)

    tasu_opt, base_opt = optimizer(model), optimizer(model.llm)

    def tasu_step() -> None:
        post = simulator(transcripts_enc, generator)
        model(post, tasu_text).loss.backward()
        tasu_opt.step()
        tasu_opt.zero_grad(set_to_none=True)

    def base_step() -> None:
        embedding = model.llm.get_input_embeddings()
        causal_lm_loss(model.llm, *splice(base_text, no_speech, no_speech_lengths, embedding)).loss.backward()
        base_opt.step()
        base_opt.zero_grad(set_to_none=True)

    return tasu_step, base_step


def _peak_mem_mb(step) -> float:
    """Peak torch CPU tensor memory allocated during ``step()`` above what was live before it.

    From torch.profiler's memory accounting: each op's own allocations minus frees (its
    ``self_cpu_memory_usage``, so nested ops are not counted twice) summed in the order the ops
    started; a transient buffer allocated and freed inside one op is not seen.
    """
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    live = peak = 0
    for e in sorted(prof.events(), key=lambda e: e.time_range.start):
        live += e.self_cpu_memory_usage
        peak = max(peak, live)
    return peak / 2**20


def bench_text_step(repeats: int = 15) -> dict[str, float]:
    tasu_step, base_step = _setup()
    for _ in range(2):  # warm-up: optimizer state, allocator caches
        tasu_step()
        base_step()
    # Interleaved, and the overhead is the median of each round's ratio: a machine that is busy
    # with something else for a while slows both steps of a round alike.
    tasu, base = [], []
    for _ in range(repeats):
        tasu.append(median_ms(tasu_step, repeats=1, warmup=0))
        base.append(median_ms(base_step, repeats=1, warmup=0))
    return {
        "text_step_overhead": statistics.median(t / b for t, b in zip(tasu, base)),
        "text_step_ms": statistics.median(tasu),
        "baseline_step_ms": statistics.median(base),
        "text_step_peak_mem_mb": _peak_mem_mb(tasu_step),
        "baseline_step_peak_mem_mb": _peak_mem_mb(base_step),
    }


def profile_text_step(rows: int = 25) -> str:
    """torch.profiler table (self CPU time) of one TASU step and one baseline step, after warm-up."""
    from torch.profiler import ProfilerActivity, profile

    tables = []
    for name, step in zip(("TASU text-only step", "baseline text fine-tuning step"), _setup()):
        for _ in range(2):
            step()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            step()
        tables.append(f"# {name}\n" + prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows))
    return "\n".join(tables)


def main() -> None:
    enter_recipe_environment()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", action="store_true", help="also print a torch.profiler table")
    args = parser.parse_args()
    print(header())
    for name, value in bench_text_step().items():
        print(f"{name}: {value:.6g}", flush=True)
    if args.profile:
        print(profile_text_step())


if __name__ == "__main__":
    main()
