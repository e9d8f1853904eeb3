"""PPO rounds of Esper as it was before issue #11, in a process of their own.

``benchmarks/envs.py`` starts this script with ``PYTHONPATH`` set to an older revision's ``src``
folder (``--before-rev``, exported with ``git archive``), so that ``esper`` here is its code:
the baseline "today's PPO env-steps/s" of issue #11, measured on the same machine in the same
run instead of estimated. Not meant to be run by hand.

Arguments: a preset name, a JSON object of ``TrainingConfig`` overrides and the torch thread
count. Every line on stdin runs one ``run_round`` and is answered by one JSON line on stdout,
``{"steps": N}`` (the round's environment steps); end of input ends the process. The first
line written is ``{"esper": PATH}``, where ``esper`` was imported from, so
the caller can check that it is the old revision.
"""

from __future__ import annotations

import json
import sys

import torch


def main() -> int:
    """Serve rounds until stdin ends; returns 0."""
    torch.set_num_threads(int(sys.argv[3]))
    # Imported after the thread count is set, from the old revision on PYTHONPATH.
    import esper
    from esper.data import load_dataset
    from esper.leyline.config import override
    from esper.nissa import TelemetryHub
    from esper.simic.build import build_trainer
    from esper.simic.config import load_preset

    print(json.dumps({"esper": esper.__file__}), flush=True)
    config = override(load_preset(sys.argv[1]), json.loads(sys.argv[2]))
    data = load_dataset("fashion_mnist", None, download=False, progress=False)
    trainer, _ = build_trainer(config, TelemetryHub("", []), data)
    for _ in sys.stdin:
        before = trainer.learner.env_steps
        trainer.run_round()
        print(json.dumps({"steps": trainer.learner.env_steps - before}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
