"""Tiny corpora in the exact layouts of their releases, and recipe copies to run them in.

Each writer makes a few utterances of generated audio (``fixtures.waveform``) stored the way the
release stores them (flac for LibriSpeech and SLURP, mp3 for Common Voice) beside the release's
transcript files, so a recipe's ``local/data.sh`` parses them exactly as it parses the real corpus.
"""
from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import soundfile as sf

from fixtures import SENTENCES, waveform

ROOT = Path(__file__).resolve().parents[1]


def copy_recipe(name: str, dest: Path) -> Path:
    """``egs/<name>`` and ``egs/TEMPLATE`` copied under ``dest`` (without data/dump/exp), with
    ``tools`` and ``utils`` linked, so a run writes nothing into the repository."""
    skip = shutil.ignore_patterns("data", "dump", "exp", "seeds", "downloads", "RESULTS.md")
    for recipe in ("TEMPLATE", name):
        if not (dest / "egs" / recipe).exists():
            shutil.copytree(ROOT / "egs" / recipe, dest / "egs" / recipe, symlinks=True, ignore=skip)
    for link in ("tools", "utils"):
        if not (dest / link).exists():
            (dest / link).symlink_to(ROOT / link)
    return dest / "egs" / name


def stand_in_for_stage_2(recipe: Path, train: str = "train", valid: str = "dev_clean") -> None:
    """Empty files where stage 2 puts the JSONL of the ASR task, for tests of stage 3's command line
    (its job runner only prints the command): stage 3 stops at once when stage 2 has not run."""
    for path in (f"dump/{train}/ASR.text_only.jsonl", f"dump/{valid}/ASR.jsonl"):
        (recipe / path).parent.mkdir(parents=True, exist_ok=True)
        (recipe / path).touch()


def _audio(path: Path, seed: int, rate: int = 16000, fmt: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, waveform(0.6 + 0.1 * (seed % 3), seed=seed).numpy(), rate, format=fmt)


def write_librispeech(root: Path, subsets: dict[str, int] | None = None) -> Path:
    """``root/LibriSpeech/<subset>/<spk>/<chapter>/<spk>-<chapter>-<utt>.flac`` and the chapter's
    ``<spk>-<chapter>.trans.txt`` (upper-case transcripts); ``subsets``: utterances per subset."""
    subsets = subsets or {"train-clean-100": 6, "dev-clean": 2, "test-clean": 2}
    corpus = root / "LibriSpeech"
    seed = 0
    for s, (subset, count) in enumerate(subsets.items()):
        for i in range(count):
            spk, chapter = 100 + 10 * s + i % 2, 2000 + s
            chapter_dir = corpus / subset / str(spk) / str(chapter)
            utt = f"{spk}-{chapter}-{i:04d}"
            _audio(chapter_dir / f"{utt}.flac", seed)
            with open(chapter_dir / f"{spk}-{chapter}.trans.txt", "a", encoding="utf-8") as f:
                f.write(f"{utt} {SENTENCES[seed % len(SENTENCES)].upper()}\n")
            seed += 1
    (root / "librispeech-lm-norm.txt").write_text(
        "".join(s.upper() + "\n" for s in reversed(SENTENCES)), encoding="utf-8")
    return corpus


CV_COLUMNS = ["client_id", "path", "sentence_id", "sentence", "sentence_domain", "up_votes", "down_votes",
              "age", "gender", "accents", "variant", "locale", "segment"]


def write_commonvoice(root: Path, counts: dict[str, int] | None = None) -> Path:
    """A Common Voice English release: ``root/cv-corpus/en/clips/common_voice_en_<n>.mp3`` (48 kHz,
    as released) and ``train.tsv``/``dev.tsv``/``test.tsv`` with the release's columns."""
    counts = counts or {"train": 6, "dev": 2, "test": 2}
    corpus = root / "cv-corpus" / "en"
    corpus.mkdir(parents=True, exist_ok=True)
    n = 0
    for split, count in counts.items():
        with open(corpus / f"{split}.tsv", "w", encoding="utf-8", newline="") as f:
            w = csv.writer(f, delimiter="\t", lineterminator="\n", quoting=csv.QUOTE_MINIMAL)
            w.writerow(CV_COLUMNS)
            for i in range(count):
                clip = f"common_voice_en_{1000 + n}.mp3"
                _audio(corpus / "clips" / clip, n, rate=48000, fmt="MP3")
                sentence = SENTENCES[n % len(SENTENCES)].capitalize() + ("?" if n % 3 == 0 else ".")
                w.writerow([f"{n % 3:064x}", clip, f"{n:064x}", sentence, "", "2", "0", "", "", "", "", "en", ""])
                n += 1
    return corpus


SLURP = [  # sentence, scenario, action
    ("wake me up at seven in the morning", "alarm", "set"),
    ("what is the weather like today", "weather", "query"),
    ("turn off the bedroom lights", "iot", "hue_lightoff"),
    ("play some music in the living room", "play", "music"),
    ("remind me to call alice tomorrow", "calendar", "set"),
    ("what time is it in dublin", "datetime", "query"),
]


def write_slurp(root: Path, counts: dict[str, int] | None = None) -> Path:
    """SLURP: ``root/slurp/dataset/slurp/{train,train_synthetic,devel,test}.jsonl`` (one line per
    prompt with its recordings) and the audio in ``root/slurp/audio/slurp_real`` / ``slurp_synth``."""
    counts = counts or {"train": 3, "train_synthetic": 1, "devel": 1, "test": 2}
    corpus = root / "slurp"
    slurp_id = 0
    for split, count in counts.items():
        audio_dir = corpus / "audio" / ("slurp_synth" if split == "train_synthetic" else "slurp_real")
        lines = []
        for _ in range(count):
            sentence, scenario, action = SLURP[slurp_id % len(SLURP)]
            recordings = []
            for mic in (("synth",) if split == "train_synthetic" else ("headset", "far")):
                name = f"audio-{1490000000 + slurp_id}-{mic}.flac"
                _audio(audio_dir / name, slurp_id)
                recordings.append({"file": name, "wer": 0.0, "ent_wer": 0.0, "status": "correct"})
            lines.append({"slurp_id": 4000 + slurp_id, "sentence": sentence, "sentence_annotation": sentence,
                          "intent": f"{scenario}_{action}", "action": action, "tokens": [],
                          "scenario": scenario, "recordings": recordings, "entities": []})
            slurp_id += 1
        path = corpus / "dataset" / "slurp" / f"{split}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    return corpus


TRANSLATIONS = {  # English (as in SENTENCES) -> (Chinese, German)
    "turn on the kitchen lights": ("打开厨房的灯", "Mach das Licht in der Küche an"),
    "turn off the bedroom lights": ("关掉卧室的灯", "Mach das Licht im Schlafzimmer aus"),
    "what is the weather like today": ("今天天气怎么样", "Wie ist das Wetter heute"),
    "set an alarm for seven in the morning": ("定一个早上七点的闹钟", "Stell einen Wecker für sieben Uhr morgens"),
    "play some music in the living room": ("在客厅放点音乐", "Spiel etwas Musik im Wohnzimmer"),
    "what time is it in dublin": ("都柏林现在几点", "Wie spät ist es in Dublin"),
    "remind me to call alice tomorrow": ("提醒我明天给爱丽丝打电话", "Erinnere mich daran, morgen Alice anzurufen"),
    "how cold is it outside": ("外面有多冷", "Wie kalt ist es draußen"),
}


def write_covost(root: Path, counts: dict[str, int] | None = None, layout: str = "release") -> tuple[Path, Path]:
    """CoVoST 2 en->zh and en->de over the clips of a Common Voice release written by
    ``write_commonvoice`` (with its ``validated.tsv``: every clip, the speakers).

    ``layout="release"``: as CoVoST 2 is released, ``root/covost2/covost_v2.en_zh-CN.tsv`` and
    ``covost_v2.en_de.tsv`` (path, sentence, translation, split; the second training clip's split is
    train_covost, CoVoST 2's additional training data); ``layout="splits"``: as its
    ``get_covost_splits.py`` writes them, ``covost_v2.<pair>.{train,dev,test}.tsv`` (path, sentence,
    translation, client_id). Returns (the tsv directory, the Common Voice directory)."""
    counts = counts or {"train": 6, "dev": 2, "test": 2}
    cv = write_commonvoice(root, counts)
    rows = []
    for split in counts:
        with open(cv / f"{split}.tsv", encoding="utf-8", newline="") as f:
            rows += [(r, split) for r in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)]
    with open(cv / "validated.tsv", "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, delimiter="\t", lineterminator="\n", quoting=csv.QUOTE_NONE)
        w.writerow(CV_COLUMNS)
        w.writerows([r[c] for c in CV_COLUMNS] for r, _ in rows)
    tsv_dir = root / "covost2"
    tsv_dir.mkdir(parents=True, exist_ok=True)
    for pair, lang in (("en_zh-CN", 0), ("en_de", 1)):
        table = [(r, split, TRANSLATIONS[r["sentence"].rstrip(".?").lower()][lang]) for r, split in rows]
        if layout == "release":
            files = {f"covost_v2.{pair}.tsv": (["path", "sentence", "translation", "split"],
                                               [[r["path"], r["sentence"], t, "train_covost" if i == 1 else split]
                                                for i, (r, split, t) in enumerate(table)])}
        else:
            files = {f"covost_v2.{pair}.{s}.tsv": (["path", "sentence", "translation", "client_id"],
                                                   [[r["path"], r["sentence"], t, r["client_id"]]
                                                    for r, split, t in table if split == s]) for s in counts}
        for name, (header, lines) in files.items():
            with open(tsv_dir / name, "w", encoding="utf-8", newline="") as f:
                w = csv.writer(f, delimiter="\t", lineterminator="\n", quoting=csv.QUOTE_NONE, escapechar="\\")
                w.writerow(header)
                w.writerows(lines)
    return tsv_dir, cv


def write_template_corpus(root: Path, counts: dict[str, int] | None = None) -> Path:
    """The layout egs/TEMPLATE/local/data.sh reads: ``root/corpus/<set>.tsv`` (path, text, speaker;
    the columns in another order than the template names them) and the audio in
    ``<set>/<speaker>/take<n>.wav``: every speaker has a take01, so only the path tells them apart."""
    counts = counts or {"train": 6, "dev": 2, "test": 2}
    corpus = root / "corpus"
    n = 0
    for split, count in counts.items():
        rows = []
        for i in range(count):
            path = f"{split}/spk{i % 2}/take{i // 2 + 1:02d}.wav"
            _audio(corpus / path, n)
            rows.append([f"spk{i % 2}", SENTENCES[n % len(SENTENCES)], path])
            n += 1
        with open(corpus / f"{split}.tsv", "w", encoding="utf-8", newline="") as f:
            w = csv.writer(f, delimiter="\t", lineterminator="\n", quoting=csv.QUOTE_NONE)
            w.writerow(["speaker", "text", "path"])
            w.writerows(rows)
    return corpus
