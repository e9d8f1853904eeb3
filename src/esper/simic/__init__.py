"""Simic: learning the Tamiyo controller with PPO.

Simic owns the rewards, the environments a policy learns in (the real growth environment and a
cheap stand-in with a known optimum), vectorized lockstep stepping across devices, the rollout
buffer with GAE, the PPO update with its diagnostics and anomaly detection, and ``TrainingConfig``,
the single source of truth for a training run. It may import every subsystem below it (Leyline,
Kasmina, Tolaria, Tamiyo, Nissa, data and tasks).
"""
