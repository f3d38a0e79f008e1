"""Prompt sets: the shipped English and Chinese sets, templating, reproducible random choice."""
import random

import pytest

from tasu.data.prompts import PROMPTS_DIR, PromptError, load_prompts
from tasu.data.records import DataError, Record

TASKS = {"ASR", "EN2ZH", "EN2DE", "ZH2EN", "QA", "SLU_scenario", "SLU_action", "sentiment",
         "prevtext", "hotword"}
SLURP_SCENARIOS = ("alarm audio calendar cooking datetime email general iot lists music news play qa "
                   "recommendation social takeaway transport weather").split()


def test_shipped_sets_cover_every_task_with_several_prompts():
    english, chinese = load_prompts(), load_prompts(PROMPTS_DIR / "zh.jsonl")
    assert english.source.endswith("en.jsonl")
    for prompts in (english, chinese):
        assert prompts.tasks == TASKS
        assert all(len(prompts.prompts(task)) >= 3 for task in TASKS)
        assert prompts.fields("prevtext") == {"prevtext"} and prompts.fields("hotword") == {"hotword"}
        assert all(not prompts.fields(task) for task in TASKS - {"prevtext", "hotword"})
        for prompt in prompts.prompts("SLU_scenario"):
            assert all(scenario in prompt for scenario in SLURP_SCENARIOS), prompt
    assert "请转写这段语音。" in chinese.prompts("ASR")


def test_random_choice_is_reproducible_and_uses_every_prompt():
    prompts = load_prompts()
    record = Record("u1", "ASR", "hello")
    first = [prompts.render(record, random.Random(7)) for _ in range(3)]
    assert len(set(first)) == 1
    rng_a, rng_b = random.Random(123), random.Random(123)
    draws = [prompts.render(record, rng_a) for _ in range(200)]
    assert draws == [prompts.render(record, rng_b) for _ in range(200)]
    assert set(draws) == set(prompts.prompts("ASR"))


def test_templates_are_filled_from_the_record():
    prompts = load_prompts()
    record = Record("u1", "prevtext", "how are you", extra={"prevtext": "hello there"})
    rendered = {prompts.render(record, random.Random(seed)) for seed in range(50)}
    assert rendered == {template.replace("{prevtext}", "hello there")
                        for template in prompts.prompts("prevtext")}
    with pytest.raises(PromptError) as e:
        prompts.render(Record("u2", "hotword", "call bob"), random.Random(0))
    assert str(e.value) == ("u2: the hotword prompt needs field 'hotword', which this record does not "
                            "have as a non-empty string")
    with pytest.raises(PromptError, match=r"no prompt for task 'ASRR' in .*en\.jsonl \(it has ASR, EN2DE"):
        prompts.render(Record("u3", "ASRR", "x"), random.Random(0))


def test_a_field_prompts_are_not_chosen_by_is_said(tmp_path, caplog):
    """A language field was ignored without a word: its prompt served every record, whatever its language.
    It is said, not refused: a checkpoint keeps the prompt file its run read, which must stay loadable."""
    path = tmp_path / "p.jsonl"
    path.write_text('{"task": "ASR", "prompt": "x", "language": "de"}\n{"task": "ASR", "prompt": "y", '
                    '"language": "en"}\n', encoding="utf-8")
    assert load_prompts(path).tasks == {"ASR"}
    assert caplog.text.count("language: not a field of a prompt line (task, prompt), ignored") == 1


def test_custom_prompt_file_and_its_errors(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('\ufeff{"task": "ASR", "prompt": "Write {{braces}} and {speaker}\'s words."}\r\n\r\n',
                    encoding="utf-8")
    prompts = load_prompts(path)
    record = Record("u", "ASR", "x", extra={"speaker": "Ann"})
    assert prompts.render(record, random.Random(0)) == "Write {braces} and Ann's words."

    for line, message in [
        ('{"task": "ASR", "prompt": "{x:>10}"}', "1: prompt: placeholder {x:>10} must be a plain {field_name}"),
        ('{"task": "ASR", "prompt": "a } b"}', "1: prompt: Single '}' encountered in format string"),
        ('{"task": "ASR"}', "1: prompt: must be a non-empty string"),
        ('{"task": "ASR", "prompt": "x"', "1: json: Expecting ',' delimiter"),
        # each was loaded: the last of two prompts, a task no record names, a prompt that fails when tokenised
        ('{"task": "ASR", "prompt": "x", "prompt": "y"}', "1: prompt: named twice"),
        ('{"task": "ASR ", "prompt": "x"}', "1: task: 'ASR ' begins or ends in whitespace"),
        ('{"task": "ASR", "prompt": "x \\ud800"}', "1: prompt: holds half of a UTF-16 surrogate pair"),
        # accepted by tasu validate; training then stopped at the first batch that drew it, naming no file
        ('{"task": "ASR", "prompt": "Transcribe <speech> please"}', "1: prompt: holds <speech>, which marks"),
        ('{"task": "AS\\u0000R", "prompt": "x"}', "1: task: 'AS\\x00R' holds a control character"),
        ("[]", "1: json: expected an object {...}"),
    ]:
        path.write_text(line + "\n", encoding="utf-8")
        with pytest.raises(DataError) as e:
            load_prompts(path)
        assert str(e.value).startswith(f"{path}:{message}")
    path.write_text('{"task": "\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645", "prompt": "x"}\n', encoding="utf-8")
    assert load_prompts(path).tasks == {"\u0645\u06cc\u200c\u062e\u0648\u0627\u0647\u0645"}   # a ZWNJ is no control
    path.write_text("\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"p\.jsonl: no prompts in this file$"):
        load_prompts(path)
