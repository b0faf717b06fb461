"""greenrl: learned energy control for LLM inference serving.

A fitted surrogate of a vLLM node (``greenrl.surrogate``), the catalogs it draws on
(``greenrl.catalog``) and the command-line tools ``python -m greenrl.fit`` and
``python -m greenrl.predict``. Importing greenrl reads no files and needs no GPU.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
