"""Simic: learning the Tamiyo controller with PPO.

Simic owns the rewards, the growth environment a policy learns in (Tolaria's episode plus a
reward), acting for a round where the environments are (``acting``: lockstep across devices,
or on Ray worker actors, ``workers``), the round's rollout batch with GAE, the PPO update with
its diagnostics and anomaly detection, and ``TrainingConfig``, the single source of truth
for a training run. It may import the subsystems below it (Leyline, Kasmina, Tolaria, Tamiyo,
data and tasks); its telemetry goes out through ``emit`` callables, so it imports no Nissa.
"""
