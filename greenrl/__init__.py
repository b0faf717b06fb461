"""greenrl: learned energy control for LLM inference serving.

A fitted surrogate of a vLLM node (``greenrl.surrogate``), a serving simulator (``greenrl.sim``), a
Gymnasium environment (``greenrl.env``) whose scenarios register as ``greenrl/<scenario>-v0`` on import,
and the command-line tools ``python -m greenrl.fit | predict | characterize | train``.
"""

__version__ = "0.1.0"

__all__ = ["__version__", "register_scenarios"]


def register_scenarios() -> list[str]:
    """Register every scenario in ``envs/`` with Gymnasium (done on import; cheap: lists a folder)."""
    from greenrl.env import register_scenarios as _register

    return _register()


register_scenarios()
