"""Scoring of decoded hypotheses: WER/CER with alignments, BLEU/chrF, accuracy.

    tasu score --ref data/test/text --hyp exp/asr_x/decode_beam4/test/ASR/hyp.trn --metric wer

Both files hold ``key<TAB>text`` lines; a line without a tab is split at its first space (a Kaldi
``text`` file); a key with no text is an empty hypothesis. A file every line of which ends in
``(id)``, after a space or after its only tab, is sclite's ``trn`` (``text (id)``; ESPnet's scoring
writes ``text<TAB>(id)``): the id is the key (so a ``key<TAB>text`` file whose every text is one
bracketed word, ``(noise)``, reads as trn too; keys that then match nothing say how each file was
read). Blank lines, keys with whitespace, duplicate keys and a carriage return inside a line (old Mac
line ends would make one utterance of the file) stop with ``FILE:LINE: message``; a byte order mark
is dropped wherever a line starts with one (files joined with ``cat``). The rules are fixed here and
every summary names the normaliser (and sacrebleu signature) it used, so a number can
always be reproduced (a headline number scored with unshipped normalisation cannot):

- ``--norm basic`` (default for wer/cer/acc): Unicode NFKC (one spelling of "é" whether composed or
  not, of Hangul syllables, of fullwidth and ligature forms); lower-case (the dotted capital "İ" to "i":
  Python's lower() makes it "i" and a combining dot, which matches no "i"); every Unicode punctuation
  character (category P*, ASCII and CJK alike) becomes a space, except an apostrophe (' or ’, written ')
  between two letters or digits ("don't" stays); whitespace runs collapse to one space. Symbols (S*: $ + = ^) are kept.
  ``whisper``: whisper-normalizer's EnglishTextNormalizer (English only: spells out contractions,
  writes numbers as digits, British→American spelling; a warning when most references are in another
  script). ``none`` (default for bleu): text as written,
  whitespace runs collapsed. Note that Unicode counts % # & @ * _ as punctuation: basic removes them.
- WER counts words (whitespace-separated); CER counts characters with all whitespace removed (the
  Chinese convention: spaces between characters are not errors). The alignment is a minimum edit
  distance with unit costs; among equal-cost alignments a match/substitution is preferred, then a
  deletion. Err = Sub + Del + Ins over the reference words; S.Err = utterances with any error.
- BLEU and chrF come from sacrebleu on the (by default unnormalised) text; ``--bleu-tokenize auto``
  picks ``char`` when most references hold kana (Japanese) or Thai, Lao, Khmer or Myanmar letters
  (scripts written without spaces between words: 13a would make each sentence one word and score a
  good translation 0), else ``zh`` when most contain Han characters, else ``13a``. WER over such
  references counts whole runs of characters as words: it is scored, with a warning to use CER.
- acc: exact match of the whole normalised hypothesis with the normalised reference label (a missing
  hypothesis is wrong, whatever the label).
- A reference key missing from the hypotheses stops ``score_files`` (``tasu score``): a decode that
  stopped partway keeps what it made, to resume from it. With ``missing="empty"`` (``--missing
  empty``; ``score`` always) it is scored as an empty hypothesis (all deletions, wrong, empty string)
  and listed. A hypothesis key absent from the references is not scored and is listed;
  if no hypothesis key is in the references at all, the files do not belong together: an error. A
  hypothesis file with no line at all is an error too (a decode that failed is not a WER of 100),
  and so is a WER/CER whose references hold no word (character) after normalisation.
- empty: a hypothesis that is present but empty after normalisation. looping: some n-gram of units
  (words; characters for cer and for zh BLEU) repeated 4 times in a row when the reference has no such
  repeat, or a hypothesis >= 3x the reference length and >= 10 units long. Speech LLMs fail this way.

Files written into ``out_dir`` (atomically): ``score.json`` (read by ``tasu results``; it holds the
full missing/extra key lists too); ``result.txt`` (the summary); ``alignment.txt`` for wer/cer, as
sclite's ``pra``: per utterance ``id:``, ``Flags:`` when missing/empty/looping, ``Scores: (#C #S #D
#I)``, then REF/HYP/Eval columns with ``***`` for a gap and S/D/I under each error; ``per_utt.tsv``
for bleu/acc: key, flags, normalised ref, normalised hyp; ``missing_keys.txt`` and
``extra_keys.txt``: one key a line, empty when there are none. None of them may be the ref or hyp
file itself, and a directory holding another metric's score.json is refused (its table row would go).
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import math
import os
import re
import unicodedata
from array import array
from collections import Counter
from pathlib import Path
from typing import Any, Iterable

from tasu.fileio import write_atomic

METRICS = ("wer", "cer", "bleu", "acc")
NOT_TOGETHER = "the two files do not belong together"   # no hypothesis key among the references
MISSING = ("error", "empty")   # what score_files makes of a reference without a hypothesis
NORMS = ("basic", "whisper", "none")
DEFAULT_NORM = {"wer": "basic", "cer": "basic", "acc": "basic", "bleu": "none"}
HEADERS = {
    "wer": "|dataset|Snt|Wrd|Corr|Sub|Del|Ins|Err|S.Err|",
    "cer": "|dataset|Snt|Wrd|Corr|Sub|Del|Ins|Err|S.Err|",
    "bleu": "|dataset|Snt|BLEU|chrF|tokenize|",
    "acc": "|dataset|Snt|Accuracy (%)|",
}
_HAN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
# kana, and Thai, Lao, Myanmar and Khmer letters: scripts written without spaces between words
# (not the middle dot and the long-vowel mark, which Chinese text uses too)
_UNSPACED = re.compile(r"[\u3041-\u3096\u30a1-\u30fa\u31f0-\u31ff\uff66-\uff9d\u0e00-\u0eff\u1000-\u109f"
                       r"\u1780-\u17ff]")
_EXAMPLES = 5  # keys shown in summaries; the full lists are in score.json and *_keys.txt


log = logging.getLogger(__name__)


class ScoreError(ValueError):
    """Unusable input; the message starts with ``FILE:LINE:`` where one line is to blame."""


_TRN_ID = re.compile(r"\(([^\s()]+)\)\Z")   # sclite trn: the utterance id in brackets ends the line


def read_text_file(path: str | os.PathLike) -> dict[str, str]:
    """Read ``key<TAB>text`` lines (or Kaldi ``key text``, or sclite ``text (key)``) into an ordered dict."""
    return _read_table(path)[0]


def _read_table(path: str | os.PathLike) -> tuple[dict[str, str], str, str]:
    """:func:`read_text_file`'s dict, the layout it was read as (``key text`` or ``sclite trn``) and
    the SHA-256 of the bytes read (taken while reading: the path may be a pipe, read once)."""
    lines, digest = [], hashlib.sha256()
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            digest.update(raw)
            try:
                line = raw.decode("utf-8-sig").rstrip("\r\n")
            except UnicodeDecodeError as e:
                raise ScoreError(f"{path}:{n}: not UTF-8 ({e.reason})") from None
            if "\r" in line:
                raise ScoreError(f"{path}:{n}: a carriage return inside the line (lines must end in '\\n')")
            lines.append(line)
    ids = [_trn_id(line) for line in lines]
    sclite = bool(lines) and all(ids)
    out: dict[str, str] = {}
    for n, (line, found) in enumerate(zip(lines, ids), 1):
        if sclite:
            key, text = found.group(1), line.rstrip()[:found.start()].rstrip("\t")
        else:
            key, _, text = line.partition("\t") if "\t" in line else line.partition(" ")
        if not key or any(c.isspace() for c in key):
            raise ScoreError(f"{path}:{n}: expected 'key<TAB>text', got {line!r}")
        if key in out:   # (read as trn, an id that ends every line: which key is it?)
            raise ScoreError(f"{path}:{n}: duplicate key {key!r}" + (
                " (the file was read as sclite trn lines, 'text (id)', as every line ends in '(...)')"
                if sclite else ""))
        out[key] = text.strip()
    return out, "sclite trn" if sclite else "key text", digest.hexdigest()


def _trn_id(line: str) -> re.Match | None:
    """The ``(id)`` that ends a sclite trn line: ``text (id)``, or ``text<TAB>(id)`` as ESPnet's scoring
    writes it (``paste``); None for a line of another layout (a tab anywhere else: ``key<TAB>text``)."""
    found = _TRN_ID.search(line.rstrip())
    if found is None or ("\t" in line and (line.count("\t") > 1 or line[found.start() - 1:found.start()] != "\t")):
        return None
    return found


def without_spaces(texts: Iterable[str]) -> str | None:
    """The BLEU tokenizer for texts of a script written without spaces between words: ``char`` when
    most hold kana or Thai, Lao, Myanmar or Khmer letters, ``zh`` when most hold Han characters (and
    not kana: Japanese), None for the rest."""
    texts = list(texts)
    if sum(bool(_UNSPACED.search(t)) for t in texts) > len(texts) / 2:
        return "char"
    if sum(bool(_HAN.search(t)) for t in texts) > len(texts) / 2:
        return "zh"
    return None


def _mostly_latin(text: str) -> bool:
    """Whether most letters of ``text`` are Latin (True for a text without letters)."""
    letters = [c for c in text if c.isalpha()]
    return sum(unicodedata.name(c, "").startswith("LATIN") for c in letters) * 2 >= len(letters)


def _in_another_form(keys: list[str], others: dict) -> str:
    """Why ``keys`` are not among ``others`` when one is there in another Unicode form (é composed in one
    file, decomposed in the other: printed alike, other keys), or "" when none is."""
    forms = {unicodedata.normalize("NFC", k): k for k in others}
    for key in keys:
        other = forms.get(unicodedata.normalize("NFC", key))
        if other is not None:
            return (f"{ascii(key)} is {ascii(other)} of the other file in another Unicode form (NFC, NFD: "
                    "printed alike): write the keys of both files in one form")
    return ""


def _from(out: Path, given: str | Path) -> str:
    """File ``given`` as ``score.json`` records it: relative to the real ``out``, through its own real
    directory (through links to directories, the path led nowhere from another depth) but by its own
    name. A link to the references (data/text -> text.v1) re-pointed at corrected ones is then
    checked against what it points at now: by its target's path, the stale score read as current."""
    given = Path(given)
    return os.path.relpath(given.absolute().parent.resolve() / given.name, out.resolve())


def normalise(text: str, norm: str) -> str:
    """Apply normaliser ``norm`` (see the module docstring for exactly what each one does)."""
    if norm == "none":
        return " ".join(text.split())
    if norm == "whisper":
        return " ".join(_whisper()(text).split())
    if norm != "basic":
        raise ScoreError(f"unknown normaliser {norm!r} (choose from {', '.join(NORMS)})")
    # (NUL, no text, is a space: in-word apostrophes stand as NULs while punctuation goes)
    text = unicodedata.normalize("NFKC", text).replace("İ", "I").replace("\0", " ").lower()
    text = _INWORD_APOSTROPHE.sub("\0", text).translate(_PUNCT_TO_SPACE)
    return " ".join(text.replace("\0", "'").split())


class _PunctToSpace(dict):
    """``str.translate`` table mapping Unicode punctuation (category P*) to a space, filled lazily."""

    def __missing__(self, code: int) -> int:
        self[code] = 32 if unicodedata.category(chr(code)).startswith("P") else code
        return self[code]


_PUNCT_TO_SPACE = _PunctToSpace()
_INWORD_APOSTROPHE = re.compile(r"(?<=[^\W_])['’](?=[^\W_])")  # between two letters or digits
_WHISPER = []


def _whisper():
    if not _WHISPER:  # built once: it loads a spelling table
        from whisper_normalizer.english import EnglishTextNormalizer
        _WHISPER.append(EnglishTextNormalizer())
    return _WHISPER[0]


def align(ref: list[str], hyp: list[str]) -> list[tuple[str, str | None, str | None]]:
    """Minimum edit distance alignment as ``(op, ref_token, hyp_token)``, op in C/S/D/I.

    Equal leading and trailing tokens are matched first (always part of some optimal alignment), so a
    mostly-right hypothesis costs a small DP; the rest is a plain DP in lists, fast enough for 10k
    utterances of a few hundred characters. Each finished row is kept as 4-byte integers: the matrix of
    a long-form pair (10k words against 10k) is 400 MB, not the 4 GB of Python ints.
    """
    p = 0
    while p < min(len(ref), len(hyp)) and ref[p] == hyp[p]:
        p += 1
    s = 0
    while s < min(len(ref), len(hyp)) - p and ref[-1 - s] == hyp[-1 - s]:
        s += 1
    r, h = ref[p:len(ref) - s], hyp[p:len(hyp) - s]
    d = [array("I", range(len(h) + 1))]
    for i, rt in enumerate(r, 1):  # d[i][j]: edit distance of r[:i] and h[:j]; unrolled min() for speed
        prev, row, left = d[-1], [i], i
        append = row.append
        for ht, diag, up in zip(h, prev, prev[1:]):
            v = diag if rt == ht else diag + 1
            if up < v:
                v = up + 1
            if left < v:
                v = left + 1
            append(v)
            left = v
        d.append(array("I", row))
    ops, i, j = [], len(r), len(h)
    while i or j:
        if i and j and d[i][j] == d[i - 1][j - 1] + (r[i - 1] != h[j - 1]):
            ops.append(("C" if r[i - 1] == h[j - 1] else "S", r[i - 1], h[j - 1]))
            i, j = i - 1, j - 1
        elif i and d[i][j] == d[i - 1][j] + 1:
            ops.append(("D", r[i - 1], None))
            i -= 1
        else:
            ops.append(("I", None, h[j - 1]))
            j -= 1
    return ([("C", t, t) for t in ref[:p]] + ops[::-1]
            + [("C", t, t) for t in ref[len(ref) - s:]])


_REPEAT = re.compile(r"(.{1,256}?)\1{3}", re.DOTALL)


def _has_repeat(units: list[str] | str) -> bool:
    """Whether some n-gram (of up to 256 units) occurs 4 times in a row; words are mapped to one
    character each so that one regular expression (run in C) serves words and characters alike. The
    bound keeps it near linear: unbounded, 8k characters took 5 s and each doubling four times that."""
    if not isinstance(units, str):
        ids: dict[str, str] = {}
        units = "".join(ids.setdefault(u, chr(len(ids))) for u in units)
    return bool(_REPEAT.search(units))


def is_looping(hyp: list[str] | str, ref: list[str] | str) -> bool:
    """A 4-fold repeat the reference does not have, or >= 3x the reference length (and >= 10 units)."""
    if len(hyp) >= max(3 * len(ref), 10):
        return True
    return _has_repeat(hyp) and not _has_repeat(ref)


def _is_count(v: Any) -> bool:
    return type(v) is int and v >= 0   # bool is an int subclass but not a count


def _is_number(v: Any) -> bool:
    return type(v) in (int, float) and math.isfinite(v)


def _is_files(v: Any) -> bool:
    return isinstance(v, dict) and all(role in ("ref", "hyp") and isinstance(f, dict) and set(f) == {"path", "sha256"}
                                       and all(isinstance(x, str) for x in f.values()) for role, f in v.items())


def _is_keys(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(k, str) for k in v)


_COUNT, _NUMBER, _STRING, _OBJECT = ((_is_count, "a count"), (_is_number, "a number"),
                                     (lambda v: isinstance(v, str), "a string"),
                                     (lambda v: isinstance(v, dict), "an object"))
# What score.json's fields must be, then per metric what its table rows read of counts and details
# (``ScoreResult.to_markdown_row``, the BLEU signature note of ``tasu results``).
_FIELDS = {"norm": _STRING, "snt": _COUNT, "value": _NUMBER, "counts": _OBJECT, "details": _OBJECT,
           "missing_keys": (_is_keys, "a list of keys"), "extra_keys": (_is_keys, "a list of keys"),
           "empty": _COUNT, "looping": _COUNT, "ref": _STRING, "hyp": _STRING,
           "files": (_is_files, 'an object of {"path": ..., "sha256": ...} for ref and hyp')}
_ERROR_COUNTS = {key: _COUNT for key in ("wrd", "corr", "sub", "del", "ins", "s_err")}
_COUNTS = {"wer": _ERROR_COUNTS, "cer": _ERROR_COUNTS, "acc": {"correct": _COUNT}, "bleu": {}}
_DETAILS = {"wer": {}, "cer": {}, "acc": {}, "bleu": {"chrf": _NUMBER, "tokenize": _STRING, "signature": _STRING}}


def _check_fields(obj: dict, checks: dict, prefix: str = "", optional: tuple[str, ...] = ()) -> None:
    """A ValueError naming the first key of ``obj`` that is missing (and not ``optional``) or not
    what ``checks`` asks."""
    for key, (ok, what) in checks.items():
        if key not in obj:
            if key in optional:
                continue
            raise ValueError(f"{prefix}{key}: missing")
        if not ok(obj[key]):
            raise ValueError(f"{prefix}{key}: must be {what}, not {_shown(obj[key])}")


_ROUNDING = 0.005   # how far a score.json value may sit from what its counts give (two decimals, float sums)


def _check_sums(d: dict) -> None:
    """A ValueError when the counts of a score.json disagree with each other or with its value: a
    hand-edited file would otherwise print a table such as "Corr 300 %" as if it had been scored."""
    snt, value, counts = d["snt"], d["value"], d["counts"]
    if snt < 1:
        raise ValueError(f"snt: {snt}: a score is over one utterance or more")
    for key, n in (("empty", d["empty"]), ("looping", d["looping"]), ("missing_keys", len(d["missing_keys"])),
                   ("counts.s_err", counts.get("s_err", 0)), ("counts.correct", counts.get("correct", 0))):
        if n > snt:
            raise ValueError(f"{key}: {n} utterances of snt {snt}")
    if d["metric"] == "bleu":   # no counts to check it by (sacrebleu's sums may give 100.00000000000004)
        if not -_ROUNDING <= value <= 100 + _ROUNDING:
            raise ValueError(f"value: BLEU is between 0 and 100, not {value}")
        return
    if d["metric"] == "acc":
        expected = 100 * counts["correct"] / snt
    else:
        wrd, scored = counts["wrd"], counts["corr"] + counts["sub"] + counts["del"]
        if wrd < 1 or scored != wrd:
            raise ValueError(f"counts: corr + sub + del is {scored} and wrd {wrd}: every reference unit is "
                             "correct, substituted or deleted, and a score is over one unit or more")
        expected = 100 * (counts["sub"] + counts["del"] + counts["ins"]) / wrd
    if abs(value - expected) > _ROUNDING:
        raise ValueError(f"value: {value}, where the counts give {expected:.2f}")


def markdown_cell(text: str) -> str:
    """``text`` as one markdown table cell: a ``|`` would start another column (and a ``\\`` before
    one would escape it instead), a line break end the row."""
    return " ".join(text.replace("\\", "\\\\").replace("|", "\\|").splitlines())


def _shown(value: Any) -> str:
    """A JSON value for an error message, cut short: a tampered field may hold a long list."""
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 40 else text[:37] + "..."


@dataclasses.dataclass
class ScoreResult:
    """One scored hypothesis file. ``value`` is WER/CER %, BLEU, or accuracy %; counts are per metric:
    wer/cer ``wrd corr sub del ins s_err``, acc ``correct``; ``details`` holds the rest (the sacrebleu
    signature and chrF, per-class accuracy)."""
    metric: str
    norm: str
    snt: int
    value: float
    counts: dict[str, int]
    details: dict[str, Any]
    missing_keys: list[str]
    extra_keys: list[str]
    empty: int
    looping: int
    ref: str = ""
    hyp: str = ""
    # The files scored, each's path relative to the score's directory and its SHA-256: tasu results
    # refuses a score of a file changed since (the relative path holds when an experiment is copied)
    files: dict[str, dict[str, str]] = dataclasses.field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """The content of score.json."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Any) -> "ScoreResult":
        """Rebuild from score.json, checking every field that ``tasu results`` reads.

        A hand-edited or half-written file is a ValueError naming the field (the caller adds the
        path), not a KeyError or TypeError from deep inside a table.
        """
        if not isinstance(d, dict):
            raise ValueError(f"expected a JSON object, not {_shown(d)}")
        unknown = [k for k in d if k not in {f.name for f in dataclasses.fields(cls)}]
        if unknown:
            raise ValueError(f"unknown field {unknown[0]!r} (written by another tasu version? score it again)")
        if d.get("metric") not in METRICS:
            raise ValueError(f"metric: must be one of {', '.join(METRICS)}, not {_shown(d.get('metric'))}")
        _check_fields(d, _FIELDS, optional=("ref", "hyp", "files"))   # they have defaults: a score.json may lack them
        _check_fields(d["counts"], _COUNTS[d["metric"]], "counts.")
        _check_fields(d["details"], _DETAILS[d["metric"]], "details.")
        _check_sums(d)
        return cls(**d)

    def to_markdown_row(self, dataset: str) -> str:
        """One row under ``HEADERS[metric]`` (one decimal as in ESPnet's RESULTS.md; BLEU two); a ``|``
        in ``dataset`` is escaped, as it would end the cell."""
        if self.metric in ("wer", "cer"):
            c, n = self.counts, max(self.counts["wrd"], 1)
            pct = [100 * c[k] / n for k in ("corr", "sub", "del", "ins")]
            err = 100 * (c["sub"] + c["del"] + c["ins"]) / n
            cells = [self.snt, c["wrd"], *(f"{x:.1f}" for x in pct), f"{err:.1f}",
                     f"{100 * c['s_err'] / max(self.snt, 1):.1f}"]
        elif self.metric == "bleu":
            cells = [self.snt, f"{self.value:.2f}", f"{self.details['chrf']:.2f}", self.details["tokenize"]]
        else:
            cells = [self.snt, f"{self.value:.1f}"]
        return "|" + "|".join(str(x) for x in [markdown_cell(dataset), *cells]) + "|"

    def diagnostics(self) -> str:
        """Missing/extra/empty/looping counts in one line (the failures a speech LLM has)."""
        def keys(ks: list[str]) -> str:
            return f" ({', '.join(ks[:_EXAMPLES])}{', ...' if len(ks) > _EXAMPLES else ''})" if ks else ""
        return (f"missing {len(self.missing_keys)}{keys(self.missing_keys)}, extra {len(self.extra_keys)}"
                f"{keys(self.extra_keys)}, empty {self.empty}, looping {self.looping}")


def score(refs: dict[str, str], hyps: dict[str, str], metric: str, norm: str | None = None,
          bleu_tokenize: str = "auto") -> tuple[ScoreResult, list[str]]:
    """Score ``hyps`` against ``refs``; returns the result and the per-utterance report lines."""
    if metric not in METRICS:
        raise ScoreError(f"unknown metric {metric!r} (choose from {', '.join(METRICS)})")
    if not refs:
        raise ScoreError("no references to score against")
    norm = norm or DEFAULT_NORM[metric]
    if metric != "bleu" and bleu_tokenize != "auto":
        raise ScoreError(f"a BLEU tokenizer ({bleu_tokenize}) is for --metric bleu, not {metric}")
    missing = [k for k in refs if k not in hyps]
    extra = [k for k in hyps if k not in refs]
    if hyps and len(extra) == len(hyps):
        raise ScoreError(f"no hypothesis key is in the references (first: {extra[0]!r}): "
                         + (_in_another_form(extra, refs) or NOT_TOGETHER))
    unspaced = without_spaces(refs.values())
    if bleu_tokenize == "auto":
        bleu_tokenize = unspaced or "13a"
    if metric == "wer" and unspaced:
        log.warning("most references are written without spaces between words: WER takes each run of "
                    "characters for one word (one wrong character, one wrong sentence); CER is the usual measure")
    if norm == "whisper" and sum(not _mostly_latin(t) for t in refs.values()) > len(refs) / 2:
        log.warning("the whisper normaliser is English-only: it drops the marks of other scripts (Devanagari's "
                    "vowel signs, Arabic's vowels); basic is the normaliser for these references")
    if metric == "bleu":
        from sacrebleu.metrics import BLEU
        if bleu_tokenize not in BLEU.TOKENIZERS:
            raise ScoreError(f"unknown BLEU tokenizer {bleu_tokenize!r} (choose from auto, "
                             f"{', '.join(BLEU.TOKENIZERS)})")
    by_char = metric == "cer" or (metric == "bleu" and bleu_tokenize in ("zh", "char"))
    ops_total: Counter = Counter()  # C S D I, plus wrd and s_err, summed over utterances (wer/cer)
    per_class: dict[str, list[int]] = {}  # label -> [correct, total] (acc)
    lines, pairs, empty, looping = [], [], 0, 0
    for key, ref_text in refs.items():
        ref, hyp = normalise(ref_text, norm), normalise(hyps.get(key, ""), norm)
        ref_u, hyp_u = (ref.replace(" ", ""), hyp.replace(" ", "")) if by_char else (ref.split(), hyp.split())
        flags = ["missing"] if key not in hyps else ["empty"] if not hyp else []
        empty += flags == ["empty"]
        if is_looping(hyp_u, ref_u):
            flags.append("looping")
            looping += 1
        if metric in ("wer", "cer"):
            ops = align(list(ref_u), list(hyp_u))
            c = Counter(op for op, _, _ in ops)
            ops_total.update(c, wrd=len(ref_u), s_err=len(ops) != c["C"])
            lines.append(_pra(key, ops, c, flags))
            continue
        if metric == "acc":
            correct = ref == hyp and key in hyps   # a missing hypothesis is wrong, even for an empty label
            per_class.setdefault(ref, [0, 0])[0] += correct
            per_class[ref][1] += 1
            flags.insert(0, "correct" if correct else "wrong")
        pairs.append((ref, hyp))
        lines.append("\t".join([key, ",".join(flags) or "-", ref, hyp]) + "\n")
    details: dict[str, Any] = {}
    if metric in ("wer", "cer"):
        t = ops_total
        if not t["wrd"]:  # every error would count against nothing: 3 inserted words gave "300 %"
            raise ScoreError(f"every reference is empty after the {norm!r} normaliser: a {metric.upper()} "
                             f"over no {'characters' if by_char else 'words'} means nothing")
        counts = {"wrd": t["wrd"], "corr": t["C"], "sub": t["S"], "del": t["D"], "ins": t["I"],
                  "s_err": t["s_err"]}
        value = 100 * (t["S"] + t["D"] + t["I"]) / t["wrd"]
    elif metric == "acc":
        counts = {"correct": sum(ok for ok, _ in per_class.values())}
        value = 100 * counts["correct"] / len(refs)
        details["per_class"] = dict(sorted(per_class.items()))
    else:
        if not any(ref.strip() for ref, _ in pairs):   # sacrebleu gives 0.00 over no reference words
            raise ScoreError(f"every reference is empty: a {metric.upper()} over no reference words means nothing")
        from sacrebleu.metrics import BLEU, CHRF
        bleu, chrf = BLEU(tokenize=bleu_tokenize), CHRF()
        hyp_list, ref_list = [h for _, h in pairs], [[r for r, _ in pairs]]
        value, counts = bleu.corpus_score(hyp_list, ref_list).score, {}
        details = {"chrf": chrf.corpus_score(hyp_list, ref_list).score, "tokenize": bleu_tokenize,
                   "signature": f"BLEU {bleu.get_signature()} / chrF {chrf.get_signature()}"}
    if norm == "whisper":
        from importlib.metadata import version
        details["normaliser"] = f"whisper-normalizer {version('whisper-normalizer')}"
    result = ScoreResult(metric, norm, len(refs), value, counts, details, missing, extra, empty, looping)
    return result, lines


def separator(metric: str) -> str:
    """The markdown line under ``HEADERS[metric]``."""
    return "|" + "---|" * (HEADERS[metric].count("|") - 1)


@functools.lru_cache(maxsize=100_000)
def _width(token: str) -> int:
    """Terminal columns of ``token``: CJK characters take two, so the REF/HYP columns line up."""
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in token)


def _pra(key: str, ops, c: Counter, flags: list[str]) -> str:
    """One utterance in sclite ``pra`` style: id, flags, scores, REF/HYP/Eval aligned columns."""
    cols = {"REF": [], "HYP": [], "Eval": []}
    for op, r, h in ops:
        r, h = r or "***", h or "***"
        w = max(_width(r), _width(h))
        for name, tok in (("REF", r), ("HYP", h), ("Eval", "" if op == "C" else op)):
            cols[name].append(tok + " " * (w - _width(tok)))
    out = f"id: {key}\n" + (f"Flags: {' '.join(flags)}\n" if flags else "")
    out += f"Scores: (#C #S #D #I) {c['C']} {c['S']} {c['D']} {c['I']}\n"
    out += "".join(f"{name + ':':<6}{' '.join(toks)}".rstrip() + "\n" for name, toks in cols.items())
    return out + "\n"


def render_summary(result: ScoreResult, dataset: str) -> str:
    """The text of result.txt: what was scored and how, the table, the headline line, diagnostics."""
    how = f"metric={result.metric} norm={result.norm}"
    if "normaliser" in result.details:
        how += f" ({result.details['normaliser']})"
    out = [f"ref: {result.ref}", f"hyp: {result.hyp}", how, "", HEADERS[result.metric],
           separator(result.metric), result.to_markdown_row(dataset), ""]
    if result.metric in ("wer", "cer"):
        c = result.counts
        out.append(f"%{result.metric.upper()} {result.value:.2f} [ {c['sub'] + c['del'] + c['ins']} / "
                   f"{c['wrd']}, {c['ins']} ins, {c['del']} del, {c['sub']} sub ]")
    elif result.metric == "bleu":
        out += [f"BLEU {result.value:.2f} chrF {result.details['chrf']:.2f}", result.details["signature"]]
    else:
        out += [f"Accuracy {result.value:.2f} % [ {result.counts['correct']} / {result.snt} ]",
                "per reference label (correct / total):"]
        out += [f"  {label or '<empty>'}: {ok} / {n}"
                for label, (ok, n) in result.details["per_class"].items()]
    out.append(f"hypotheses: {result.diagnostics()}")
    if result.missing_keys:
        out.append("missing hypotheses are scored as empty (see missing_keys.txt)")
    if result.extra_keys:
        out.append("extra hypotheses (keys not in the references) are not scored (see extra_keys.txt)")
    return "\n".join(out) + "\n"


def score_files(ref_path: str | os.PathLike, hyp_path: str | os.PathLike, metric: str,
                norm: str | None = None, out_dir: str | os.PathLike | None = None,
                bleu_tokenize: str = "auto", missing: str = "error") -> ScoreResult:
    """Score a hypothesis file and write score.json, result.txt, the per-utterance file and the
    missing/extra key lists into ``out_dir`` (default: the hypothesis file's directory).

    ``missing``: what a reference without a hypothesis is. ``"error"`` (the default, Kaldi
    compute-wer's strict mode): a decode that stopped partway keeps the hypotheses it made (it
    resumes from them), and its score would be a number of a decode that did not happen. ``"empty"``:
    scored as an empty hypothesis (all deletions, wrong) and listed, as sclite does."""
    if missing not in MISSING:
        raise ScoreError(f"missing: {missing!r} is not one of {', '.join(MISSING)}")
    (refs, ref_layout, ref_sha256), (hyps, hyp_layout, hyp_sha256) = _read_table(ref_path), _read_table(hyp_path)
    if not refs:  # score() cannot name the file it came from
        raise ScoreError(f"{ref_path}: no references (the file is empty): nothing to score against")
    if not hyps:  # a decode that failed or never ran; scoring it would report WER 100 as a result
        raise ScoreError(f"{hyp_path}: no hypotheses (the file is empty): did its decode fail or not run?")
    absent = [k for k in refs if k not in hyps]
    if absent and missing == "error" and len(absent) < len(refs):   # none in common: score() says so
        raise ScoreError(f"{hyp_path}: no hypothesis for {len(absent)} of the {len(refs)} references in {ref_path} "
                         f"({', '.join(absent[:3])}{', ...' if len(absent) > 3 else ''}): "
                         + (_in_another_form(absent, hyps) or "did its decode stop partway? Run it again to finish "
                            "it, or score them as empty hypotheses (--missing empty)"))
    try:
        result, lines = score(refs, hyps, metric, norm, bleu_tokenize)
    except ScoreError as e:  # name the files the problem is in, and how each was read where keys disagree
        read_as = (f" (read as {hyp_layout} and {ref_layout} lines)" if NOT_TOGETHER in str(e)
                   and hyp_layout != ref_layout else "")
        raise ScoreError(f"{hyp_path} against {ref_path}: {e}{read_as}") from None
    out = Path(out_dir) if out_dir is not None else Path(hyp_path).parent
    result.ref, result.hyp = str(ref_path), str(hyp_path)
    result.files = {role: {"path": _from(out, given), "sha256": digest}
                    for role, given, digest in (("ref", ref_path, ref_sha256), ("hyp", hyp_path, hyp_sha256))}
    if metric in ("wer", "cer"):
        per_utterance = {"alignment.txt": "".join(lines)}
    else:
        per_utterance = {"per_utt.tsv": "key\tflags\tref\thyp\n" + "".join(lines)}
    files = {**per_utterance,
             "missing_keys.txt": "".join(k + "\n" for k in result.missing_keys),
             "extra_keys.txt": "".join(k + "\n" for k in result.extra_keys),
             "result.txt": render_summary(result, out.resolve().name),
             "score.json": json.dumps(result.as_dict(), indent=1, ensure_ascii=False) + "\n"}
    # Checked before any is written: a directory in the way would otherwise stop the writes half-way,
    # leaving this run's first files beside an earlier run's score.json.
    if out.exists() and not out.is_dir():
        raise ScoreError(f"{out}: not a directory (score writes {', '.join(files)} into it)")
    for name in files:
        if (out / name).is_dir():
            raise ScoreError(f"{out / name} is a directory: score writes a file of that name; remove it")
        for given in (ref_path, hyp_path):
            if (out / name).exists() and os.path.samefile(out / name, given):
                raise ScoreError(f"{given}: score would write its {name} over it: give --out another directory")
    if (out / "score.json").is_file():
        try:
            before = json.loads((out / "score.json").read_text(encoding="utf-8")).get("metric", metric)
        except (OSError, ValueError, AttributeError):   # not a score of ours: replaced, as any other file here
            before = metric
        if before != metric:
            raise ScoreError(f"{out / 'score.json'} is a score of metric {before}: scoring {metric} there would "
                             "replace it; give --out another directory (or remove it)")
    out.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        write_atomic(out / name, text)
    return result


def run_score(ref: str, hyp: str, metric: str, norm: str | None = None, out_dir: str | None = None,
              bleu_tokenize: str = "auto", missing: str = "error") -> int:
    """``tasu score``: score, print result.txt, return the exit status.

    Problems are raised (``ScoreError``, ``OSError``), not printed: ``tasu.cli.main`` turns every error
    into its one line, or shows the traceback with ``--debug``."""
    result = score_files(ref, hyp, metric, norm, out_dir, bleu_tokenize, missing)
    print(render_summary(result, Path(out_dir or Path(hyp).parent).resolve().name), end="")
    return 0
