"""Per-epoch progress on stderr: a tqdm bar on a terminal, one line per epoch otherwise."""

from __future__ import annotations

import sys
from collections.abc import Mapping

from tqdm import tqdm

from esper.leyline import SeedStateReport
from esper.tolaria import StepResult


def _seeds(reports: Mapping[str, SeedStateReport]) -> str:
    live = [f"{r.slot}:{r.blueprint}/{r.stage.value[:4]}" for r in reports.values() if r.blueprint]
    return " ".join(live) or "-"


class Progress:
    """Shows each finished epoch of one run."""

    def __init__(self, label: str, total: int, start: int) -> None:
        self.label = label
        self.total = total
        self.bar = (
            tqdm(total=total, initial=start, desc=label, unit="epoch", file=sys.stderr)
            if sys.stderr.isatty()
            else None
        )

    def update(
        self, result: StepResult, params: int, reports: Mapping[str, SeedStateReport]
    ) -> None:
        text = f"val {result.val_accuracy:6.2f}%  loss {result.val_loss:.4f}  params {params}"
        if self.bar is not None:
            self.bar.set_postfix_str(f"{text}  {_seeds(reports)}", refresh=False)
            self.bar.update(1)
        else:
            where = f"[{self.label}] epoch {result.epoch}/{self.total}"
            print(
                f"{where}  {text}  seeds {_seeds(reports)}",
                file=sys.stderr,
                flush=True,
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
