"""Nissa: telemetry.

Nissa owns the hub that fans typed events (declared in ``esper.leyline.events``) out to sinks —
the JSONL event log every run directory keeps, console progress, and optional TensorBoard and
MLflow tracking — and the readers of what was recorded: run directories, event logs (followed
live or read whole, every line turned back into its Leyline event), the one fold of a run's
events into the state every view shows (``esper.nissa.fold.RunState``), curves and bands across
runs, the DuckDB views of ``esper runs query``, and the knowledge store of seed outcomes across
runs (``esper.nissa.knowledge``: SQLite or PostgreSQL). ``esper.nissa.record`` owns
the run directory itself: its layout, ``meta.json``, the typed ``RunSummary`` and CSV logs;
``esper.nissa.checkpoints`` its crash-safe checkpoints. Both import only Leyline (and each
other's errors).
"""

from esper.nissa.hub import JsonlSink, Sink, TelemetryHub
from esper.nissa.record import RunRecordError, RunSummary, read_summary, strict_json

# Sinks with third-party imports (esper.nissa.console: tqdm; esper.nissa.sinks: TensorBoard;
# esper.nissa.tracking: MLflow) and the DuckDB views (esper.nissa.views) are imported from their
# modules, keeping `esper --help` fast.
__all__ = [
    "JsonlSink",
    "RunRecordError",
    "RunSummary",
    "Sink",
    "TelemetryHub",
    "read_summary",
    "strict_json",
]
