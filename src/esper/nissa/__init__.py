"""Nissa: telemetry.

Nissa owns the hub that fans typed events (declared in ``esper.leyline.events``) out to sinks, and
the sinks themselves: the JSONL event log every run directory keeps. It imports only Leyline.
"""

from esper.nissa.hub import JsonlSink, Sink, TelemetryHub, json_safe

__all__ = ["JsonlSink", "Sink", "TelemetryHub", "json_safe"]
