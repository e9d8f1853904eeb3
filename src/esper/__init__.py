"""Esper: morphogenetic neural networks.

A host network grows new modules ("seeds") at injection points while it trains. Subsystems:
Leyline (contracts), Kasmina (hosts, slots, seed lifecycle), Tolaria (training engine), Tamiyo
(controllers), Simic (PPO), Nissa (telemetry), Karn (operator views). See README.md.
"""

__version__ = "0.1.0"
