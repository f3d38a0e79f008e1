"""tasu: text-only alignment of speech LLMs, as a recipe toolkit.

``pip install -e .`` gives the ``tasu`` package and the ``tasu`` command. The exact, tested
versions live in tools/requirements.txt; ``tools/setup.sh`` installs them into tools/venv.
"""
from setuptools import find_packages, setup

setup(
    name="tasu",
    version="0.1.0",
    description="Text-only alignment of speech LLMs: recipes, simulation, training, decoding",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.11",
    packages=find_packages(include=["tasu", "tasu.*"]),
    package_data={"tasu": ["data/prompt_sets/*.jsonl", "*.c", "projectors/*.c"]},
    install_requires=[
        "torch>=2.4",
        "numpy",
        "pyyaml",
        "tqdm",
        "soundfile",
        "soxr",
        "kaldiio",
        "sentencepiece",
        "safetensors",
        "transformers>=4.56",   # from_pretrained(dtype=...)
        "peft",
        "sacrebleu",
        "rapidfuzz",            # edit distances of token sequences (simulated error rates)
        "whisper-normalizer",
        "tensorboard",
    ],
    extras_require={
        "train": ["deepspeed", "ninja"],   # (DeepSpeed needs it too: the trainer runs the environment's own)
        "sensevoice": ["funasr", "kaldi-native-fbank"],
        "plot": ["matplotlib"],
        "test": ["pytest", "pytest-xdist"],   # pyproject.toml runs the suite on two workers
    },
    entry_points={"console_scripts": ["tasu=tasu.cli:main"]},
)
