"""Console progress of a run: a tqdm bar on a terminal, one line per step otherwise.

The sink reads the same records the JSONL log gets (``event_record`` output plus ``t``, ``run_id``
and, in PPO runs, ``env``/``episode``), so it shows exactly what the log holds. A value that was
not measured (None, NaN) is printed as "—": never 0.
"""

from __future__ import annotations

import math
from typing import Any, TextIO

from tqdm import tqdm

from esper.leyline.events import EpisodeFinished, EpochCompleted, PPOUpdate
from esper.nissa.log import display, percent

_EPOCH = EpochCompleted.__name__
_EPISODE = EpisodeFinished.__name__
_UPDATE = PPOUpdate.__name__


def _measured(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


class ConsoleSink:
    """Progress of one run on ``stream``: a tqdm bar on a terminal, one line per step otherwise.

    Single-model runs (heuristic, static, eval) advance per ``EpochCompleted``; PPO runs, whose
    epochs belong to many environments, advance per ``PPOUpdate`` (one round), with the mean final
    accuracy of the round's episodes.

    Args:
        stream: where to write (the CLI passes ``sys.stderr``).
        label: the run's name in each line.
        total: epochs (or rounds) planned.
        start: epochs (or rounds) already done (a resumed run).
        bar: a live tqdm bar instead of lines (the CLI turns it on for terminals).
    """

    events = frozenset({_EPOCH, _EPISODE, _UPDATE})
    """What progress is made of; the hub hands these over whatever the telemetry level."""

    def __init__(
        self, stream: TextIO, label: str, total: int, start: int = 0, bar: bool = False
    ) -> None:
        self.stream, self.label, self.total = stream, label, total
        self._bar = tqdm(total=total, initial=start, desc=label, file=stream) if bar else None
        self._accuracies: list[float | None] = []  # final accuracies of this round's episodes

    def write(self, record: dict[str, Any]) -> None:
        """Advance on a single-model epoch or a PPO update; remember episode accuracies."""
        event = record["event"]
        if event == _EPOCH and "env" not in record:
            self._show(record["epoch"], _epoch_text(record))
        elif event == _EPISODE:
            self._accuracies.append(record["final_val_accuracy"])
        elif event == _UPDATE:
            finite = [a for a in self._accuracies if a is not None and math.isfinite(a)]
            accuracy = sum(finite) / len(finite) if finite else None
            self._accuracies = []
            self._show(record["round"], _round_text(record, accuracy))

    def _show(self, step: int, text: str) -> None:
        if self._bar is not None:
            self._bar.set_postfix_str(text, refresh=False)
            self._bar.update(step - self._bar.n)
        else:
            self.stream.write(f"[{self.label}] {step}/{self.total}  {text}\n")
            self.stream.flush()

    def close(self) -> None:
        """Close the progress bar, if any."""
        if self._bar is not None:
            self._bar.close()


def _epoch_text(record: dict[str, Any]) -> str:
    live = [
        f"{s['slot']}:{s['blueprint']}/{s['stage'][:4].lower()}"
        for s in record["slots"]
        if s["blueprint"] is not None
    ]
    loss = record["val_loss"] if _measured(record["val_loss"]) else None
    return (
        f"val {percent(record['val_accuracy'])}  loss {display(loss, '.4f')}  "
        f"params {record['param_count']}  seeds {' '.join(live) or '—'}"
    )


def _round_text(record: dict[str, Any], accuracy: float | None) -> str:
    def number(key: str) -> str:
        value = record[key]
        return display(value if _measured(value) else None, ".3f")

    return (
        f"return {number('mean_return')}  acc {percent(accuracy)}  "
        f"entropy {number('entropy')}  kl {number('approx_kl')}  "
        f"({record['seconds_rollout']:.1f}s + {record['seconds_update']:.2f}s)"
    )
