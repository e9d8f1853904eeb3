"""Console progress of a run: a tqdm bar on a terminal, one line per step otherwise.

The sink reads the same records the JSONL log gets (``event_record`` output plus ``t``, ``run_id``
and, in PPO runs, ``env``/``episode``), so it shows exactly what the log holds, and the progress
events (``BatchProgress``) that no log holds. Every number is labelled; a value that was not
measured (None, NaN) is printed as "—": never 0.
"""

from __future__ import annotations

import os
import stat
from contextlib import suppress
from typing import Any, TextIO

from tqdm import tqdm

from esper.leyline.config import measured
from esper.leyline.events import BatchProgress, EpochCompleted, PPOUpdate
from esper.nissa.log import display, percent

_EPOCH = EpochCompleted.__name__
_UPDATE = PPOUpdate.__name__
_PROGRESS = BatchProgress.__name__

PROGRESS_AFTER_S = 5.0
"""Off a terminal, an epoch shorter than this stays one line: progress lines within an epoch start
only once it has trained this long (a Fashion-MNIST epoch on a CPU takes minutes)."""

PROGRESS_LINE_EVERY_S = 10.0
"""Off a terminal, at most one progress line per this many seconds of an epoch (CI logs stay
short); a terminal's bar shows every progress event."""


def detach_from_hung_up_terminal() -> bool:
    """Point stdout and stderr at ``/dev/null`` where they are a terminal that hung up (its
    SSH session ended: a character device that no longer answers as a terminal, every write
    to it failing with EIO), so that what a stopping run still says cannot fail it. A terminal
    still there, ``/dev/null``, pipes and files stay as they are. Returns whether one was."""
    detached = False
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        for fd in (1, 2):
            with suppress(OSError):  # a closed descriptor: nothing to write to anyway
                status = os.fstat(fd)
                hung_up = stat.S_ISCHR(status.st_mode) and not os.isatty(fd)
                if hung_up and status.st_rdev != os.fstat(null).st_rdev:
                    os.dup2(null, fd)
                    detached = True
    finally:
        os.close(null)
    return detached


def _number(value: Any, spec: str) -> str:
    return display(measured(value), spec)


class ConsoleSink:
    """Progress of one run on ``stream``: a tqdm bar on a terminal, one line per step otherwise.

    Single-model runs (heuristic, static, eval) advance per ``EpochCompleted`` and show the
    batches of the epoch in training (``BatchProgress``): on the bar as they come, in lines only
    for an epoch that has trained ``PROGRESS_AFTER_S`` and then every ``PROGRESS_LINE_EVERY_S``.
    PPO runs, whose epochs belong to many environments, advance per ``PPOUpdate`` (one round),
    with the mean final accuracy of the round's episodes.

    Args:
        stream: where to write (the CLI passes ``sys.stderr``).
        label: the run's name in each line.
        total: epochs (or rounds) planned.
        start: epochs (or rounds) already done (a resumed run).
        bar: a live tqdm bar instead of lines (the CLI turns it on for terminals).
    """

    events = frozenset({_EPOCH, _UPDATE, _PROGRESS})
    """What progress is made of; the hub hands these over whatever the telemetry level."""

    def __init__(
        self, stream: TextIO, label: str, total: int, start: int = 0, bar: bool = False
    ) -> None:
        self.stream, self.label, self.total = stream, label, total
        self._bar = tqdm(total=total, initial=start, desc=label, file=stream) if bar else None
        self._progress_shown: tuple[int, float] | None = None  # (epoch, seconds) of the last line

    def write(self, record: dict[str, Any]) -> None:
        """Advance on a single-model epoch or a PPO update; show progress within an epoch."""
        event = record["event"]
        if event == _EPOCH and "env" not in record:
            self._show("epoch", record["epoch"], _epoch_text(record))
        elif event == _PROGRESS:
            self._show_progress(record)
        elif event == _UPDATE:
            self._show("round", record["round"], _round_text(record))

    def _show(self, unit: str, step: int, text: str) -> None:
        if self._bar is not None:
            self._bar.set_postfix_str(text, refresh=False)
            self._bar.update(step - self._bar.n)
        else:
            self.stream.write(f"[{self.label}] {unit} {step}/{self.total}  {text}\n")
            self.stream.flush()

    def _show_progress(self, record: dict[str, Any]) -> None:
        epoch, seconds = record["epoch"], record["seconds"]
        if self._bar is not None:
            self._bar.set_postfix_str(f"epoch {epoch}  {_progress_text(record)}")
            return
        if seconds < PROGRESS_AFTER_S:
            return
        shown = self._progress_shown
        if shown is not None and shown[0] == epoch and seconds - shown[1] < PROGRESS_LINE_EVERY_S:
            return
        self._progress_shown = (epoch, seconds)
        self.stream.write(f"[{self.label}] epoch {epoch}/{self.total}  {_progress_text(record)}\n")
        self.stream.flush()

    def close(self) -> None:
        """Close the progress bar, if any."""
        if self._bar is not None:
            self._bar.close()


def _epoch_text(record: dict[str, Any]) -> str:
    live = [
        f"{s['slot']}:{s['blueprint']} {s['stage']}"
        for s in record["slots"]
        if s["blueprint"] is not None
    ]
    return (
        f"val acc {percent(record['val_accuracy'])}  "
        f"val loss {_number(record['val_loss'], '.4f')}  "
        f"params {record['param_count']:,}  seeds {', '.join(live) or '—'}"
    )


def _progress_text(record: dict[str, Any]) -> str:
    return (
        f"batch {record['batches']}/{record['total_batches']}  "
        f"train loss {_number(record['train_loss'], '.4f')}  {record['seconds']:.0f} s"
    )


def _round_text(record: dict[str, Any]) -> str:
    accuracy = percent(record["mean_final_accuracy"])
    return (
        f"mean return {_number(record['mean_return'], '.3f')}  final acc {accuracy}  "
        f"entropy {_number(record['entropy'], '.3f')}  kl {_number(record['approx_kl'], '.3g')}  "
        f"rollout {record['seconds_rollout']:.1f} s  update {record['seconds_update']:.2f} s"
    )
