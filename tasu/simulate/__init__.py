"""CTC posterior simulation: transcripts -> the posteriors a speech encoder might have emitted.

Simulators are plug-ins behind one interface (``base.PosteriorSimulator``: the transcript's encoder
token ids + a condition, the target WER -> ``tasu.posteriors.Posteriors``), chosen by name from a
registry (``SIMULATORS``) with the config's ``simulation.name`` and built by one factory,
``build_simulator``:

- ``rules`` (``rules.py``): the original TASU's i.i.d. smoothed one-hot rows ("CPS") and the
  WER-controlled exact-count edits;
- ``learned`` (``learned.py``): a small Transformer trained on an encoder's own compressed
  posteriors (``tasu train-simulator``), registered lazily: its module is imported when a config
  names it, so importing this package imports torch and ``tasu.posteriors`` only.

``config.py`` holds the ``simulation`` section (``SimulationConfig``, ``WERSchedule``), ``show.py`` what
``tasu simulate`` prints. To add a simulator: a ``PosteriorSimulator`` subclass with
``@register("its-name")`` in a module imported here (or named in ``base.LAZY_SIMULATORS``).
"""
from tasu.simulate.base import (LAZY_SIMULATORS, SIMULATORS, PosteriorSimulator, Vocabulary, build_simulator,
                                edit_distance, lookup, register, row_tokens, simulator_names, target_rates,
                                token_error_rate)
from tasu.simulate.config import SimulationConfig, WERSchedule
from tasu.simulate.rules import Confusion, RuleSimulator, simulate  # registers "rules"
from tasu.simulate.show import format_simulation, show_simulation

__all__ = ["Confusion", "LAZY_SIMULATORS", "PosteriorSimulator", "RuleSimulator", "SIMULATORS", "SimulationConfig",
           "Vocabulary", "WERSchedule", "build_simulator", "edit_distance", "format_simulation", "lookup", "register",
           "row_tokens", "show_simulation", "simulate", "simulator_names", "target_rates", "token_error_rate"]
