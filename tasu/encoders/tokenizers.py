"""Encoder tokenizers: text -> the label ids a CTC head emits, loadable without the encoder.

Two vocabularies occur:

* SentencePiece (SenseVoiceSmall's BPE, and the small encoder's own): the CTC head's ids *are* the
  SentencePiece ids, blank = 0. SenseVoice's BPE model keeps SentencePiece's default ids (``<unk>``
  0, ``<s>`` 1, ``</s>`` 2), so its blank is the ``<unk>`` slot; :func:`train_sentencepiece` instead
  makes id 0 a real ``<blank>`` piece. Either way id 0 is never a label.
* Hugging Face ``Wav2Vec2CTCTokenizer`` (wav2vec2 / HuBERT CTC models): one id per character, ``|``
  between words, blank = the pad token (that is what ``Wav2Vec2ForCTC`` passes to ``ctc_loss``).

Text the vocabulary cannot spell (SentencePiece ``<unk>``, a character missing from vocab.json) is
dropped rather than mapped to an unknown id: a CTC head never emits ``<unk>`` for speech, and for
SenseVoice the ``<unk>`` id is the blank.
"""
from __future__ import annotations

import unicodedata
from itertools import takewhile
from pathlib import Path
from typing import Iterable, Sequence

import sentencepiece as spm

from tasu.encoders.base import EncoderTokenizer
from tasu.encoders.layout import FunASRDir, release_json, require
from tasu.weights import ModelFilesError

BLANK_PIECE = "<blank>"
WORD_START = "\u2581"   # SentencePiece's "▁", the space that starts a word


def vocabulary_case(pieces: Iterable[str]):
    """``str.upper`` or ``str.lower`` when every letter of ``pieces`` has that case, else None.

    Released CTC vocabularies are often upper-case (wav2vec2-base-960h, ESPnet's LibriSpeech models)
    while transcripts are not: text mapped to the vocabulary's case first gives the same ids for
    "Turn on" and "TURN ON". A mixed-case vocabulary is used as it is.
    """
    letters = "".join(c for piece in pieces for c in piece if c.isalpha())
    if letters and letters.isupper():
        return str.upper
    if letters and letters.islower():
        return str.lower
    return None


class SentencePieceTokenizer(EncoderTokenizer):
    """A SentencePiece model whose piece ids are the CTC head's output ids (blank = 0).

    Case: text is mapped to the case of its text pieces (:func:`vocabulary_case`); SentencePiece's own
    normalisation (the model's rules, NFKC by default) does the rest."""

    blank_id = 0

    def __init__(self, model_file: str | Path):
        self.model_file = Path(model_file)
        self.sp = spm.SentencePieceProcessor(model_file=str(self.model_file))
        self.vocab_size = self.sp.get_piece_size()
        self._not_labels = {self.blank_id, self.sp.unk_id()}
        word_start = self.sp.piece_to_id(WORD_START)   # the unknown id when the model has no bare "▁"
        self._word_start = word_start if self.sp.id_to_piece(word_start) == WORD_START else None
        pieces = (self.sp.id_to_piece(i) for i in range(self.vocab_size)
                  if not (self.sp.is_control(i) or self.sp.is_unknown(i) or self.sp.is_unused(i)))
        # SenseVoice's <|en|>-style tags are not spelling: only the text pieces say the vocabulary's case
        self._case = vocabulary_case(p for p in pieces if not (p.startswith("<") and p.endswith(">")))

    @classmethod
    def from_funasr_dir(cls, path: str | Path) -> "SentencePieceTokenizer":
        """The BPE model of a funasr-layout directory, checked against its tokens.json if any.

        funasr sizes the CTC head by tokens.json when it exists, so a piece count that differs from
        it would give ids that do not match the head; that is refused here rather than later.
        """
        d = FunASRDir(path)
        tokenizer = cls(d.bpe_model)
        tokens = d.token_list
        if tokens is not None and len(tokens) != tokenizer.vocab_size:
            raise ModelFilesError(f"{d.root}/tokens.json lists {len(tokens)} tokens but {d.bpe_model.name} "
                                  f"has {tokenizer.vocab_size} pieces")
        return tokenizer

    def encode(self, text: str) -> list[int]:
        if self._case is not None:   # "Turn On" spelt "urn n" by a lower-case vocabulary
            text = self._case(text)
        ids = self.sp.encode(text)
        return [i for n, i in enumerate(ids) if i not in self._not_labels and not self._stray_word_start(ids, n)]

    def _stray_word_start(self, ids: list[int], n: int) -> bool:
        """Whether ``ids[n]`` is the bare "▁" of a word the vocabulary cannot spell at all.

        SentencePiece spells such a word ("7") as "▁" + ``<unk>``: with the ``<unk>`` dropped, the "▁" was
        left as a label of its own ("turn 7 on" gave ▁turn ▁ ▁o n), and text of unknown characters alone
        gave that one label rather than none. A "▁" followed by pieces of its word that are spelt stays.
        """
        if ids[n] != self._word_start:
            return False
        word = list(takewhile(lambda i: not self.sp.id_to_piece(i).startswith(WORD_START), ids[n + 1:]))
        return bool(word) and all(i in self._not_labels for i in word)

    def id_to_piece(self, i: int) -> str:
        return BLANK_PIECE if i == self.blank_id else self.sp.id_to_piece(i)

    def decode(self, ids: Sequence[int]) -> str:
        return self.sp.decode([int(i) for i in ids if i != self.blank_id])

    def __getstate__(self):  # picklable for data-loader workers: reload the model from its file
        return {"model_file": self.model_file}

    def __setstate__(self, state):
        self.__init__(state["model_file"])


def train_sentencepiece(texts: Iterable[str], vocab_size: int, out_prefix: str | Path,
                        model_type: str = "bpe") -> SentencePieceTokenizer:
    """Train a SentencePiece model on ``texts`` for a CTC head; writes ``<out_prefix>.model``.

    Id 0 is the ``<blank>`` piece (never produced by encoding), id 1 ``<unk>``, no BOS/EOS: every
    other id is a unit the CTC head can emit. ``vocab_size`` is an upper bound (a small corpus may
    not support that many pieces); the real size is the returned tokenizer's ``vocab_size``.
    Characters are fully covered, so every character of the training texts is spellable.
    """
    out_prefix = Path(out_prefix)
    out_prefix.parent.mkdir(parents=True, exist_ok=True)
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(list(texts)), model_prefix=str(out_prefix), vocab_size=vocab_size,
        model_type=model_type, character_coverage=1.0, hard_vocab_limit=False,
        pad_id=0, pad_piece=BLANK_PIECE, unk_id=1, bos_id=-1, eos_id=-1,
        num_threads=1, minloglevel=2)
    return SentencePieceTokenizer(f"{out_prefix}.model")


class HFCTCTokenizer(EncoderTokenizer):
    """A ``Wav2Vec2CTCTokenizer`` (character vocabulary), with blank = its pad token.

    Case: text is NFKC-normalised (composed and decomposed accents spell alike; not for a vocabulary
    of combining marks or jamo, made from decomposed text), then mapped to the vocabulary's case
    (:func:`vocabulary_case`, from its one-character tokens). Runs of whitespace become one word
    delimiter ``|``.
    """

    def __init__(self, tokenizer, vocab_size: int, blank_id: int):
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        self.blank_id = blank_id
        self._case = vocabulary_case(t for t in tokenizer.get_vocab() if len(t) == 1)
        self._not_labels = {blank_id, tokenizer.unk_token_id}
        # NFKC composes: a vocabulary of combining marks or jamo (decomposed text) is fed text as it is
        self._nfkc = not any(unicodedata.combining(c) or "\u1100" <= c <= "\u11ff" or "\u3130" <= c <= "\u318f"
                             for t in tokenizer.get_vocab() for c in t)

    @classmethod
    def from_pretrained(cls, path: str | Path) -> "HFCTCTokenizer":
        """The tokenizer of a ``save_pretrained`` directory; config.json gives the head's size.

        Reads vocab.json, tokenizer_config.json and config.json only: no weights, and only the
        tokenizer module of transformers is imported.
        """
        from transformers import Wav2Vec2CTCTokenizer

        root = Path(path)
        config = release_json(require(root / "config.json", "model config"), dict)
        require(root / "vocab.json", "CTC vocabulary")
        tokenizer = Wav2Vec2CTCTokenizer.from_pretrained(str(root))
        blank = config.get("pad_token_id", tokenizer.pad_token_id)
        if blank != tokenizer.pad_token_id:
            raise ModelFilesError(f"{root}: config.json pad_token_id {blank} (the CTC blank) differs from the "
                                  f"tokenizer's pad token id {tokenizer.pad_token_id}")
        vocab_size = config.get("vocab_size", len(tokenizer))
        spelt = max(tokenizer.encoder.values(), default=-1)   # vocab.json's own ids, not added special tokens
        if spelt >= vocab_size:   # the first transcript with such a character failed deep in simulation
            raise ModelFilesError(f"{root}/vocab.json: spells ids up to {spelt}, but config.json vocab_size is "
                                  f"{vocab_size}: the CTC head has no output for them; a vocabulary of another "
                                  "model?")
        return cls(tokenizer, vocab_size=vocab_size, blank_id=blank)

    def encode(self, text: str) -> list[int]:
        if self._nfkc:   # "cafe\u0301" spelt as "café", fullwidth letters as ASCII
            text = unicodedata.normalize("NFKC", text)
        text = " ".join(text.split())
        if self._case is not None:
            text = self._case(text)
        ids = self.tokenizer.convert_tokens_to_ids(self.tokenizer.tokenize(text))
        return [i for i in ids if i not in self._not_labels]

    def id_to_piece(self, i: int) -> str:
        return BLANK_PIECE if i == self.blank_id else self.tokenizer.convert_ids_to_tokens(int(i))

    def decode(self, ids: Sequence[int]) -> str:
        # group_tokens=False: the caller has already collapsed CTC repeats; grouping again would
        # merge real double letters ("hello" -> "helo").
        return self.tokenizer.decode([int(i) for i in ids if i != self.blank_id], group_tokens=False)
