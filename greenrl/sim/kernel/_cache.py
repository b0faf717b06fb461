"""numba cache invalidation for the kernel package: a change to any of its modules invalidates them all.

numba keys the on-disk cache of an ``@njit(cache=True)`` function on its own source file only, yet
compiles the njit functions it calls from other files into it; a cached ``run_until`` (``loop``) would
keep running an edited ``_boost_at`` (``governor``) or an old constant (``layout``) until ``loop.py``
itself changes (numba issue #1833). Before the kernel's modules are imported, ``install`` puts locators
in front of numba's own that serve only files of this package and add a hash of every module of the
package to numba's per-file source stamp, which restores what the single-file kernel had: any edit
recompiles every function of the kernel, and nothing else changes (same cache folder, same names).

It uses numba's cache-locator classes, which are not public API: if they are missing, ``install``
does nothing and numba's per-file invalidation applies.
"""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

_PACKAGE_DIR = Path(__file__).resolve().parent


def _package_stamp() -> str:
    """SHA-256 over the name and bytes of every module of this package, in name order."""
    digest = hashlib.sha256()
    for path in sorted(_PACKAGE_DIR.glob("*.py")):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


class _PackageStampMixin:
    """Serve only this package's files; stamp each with numba's own stamp plus the package's."""

    @classmethod
    def from_function(cls, py_func: Any, py_file: str) -> Any:
        if Path(py_file).resolve().parent != _PACKAGE_DIR:
            return None
        return super().from_function(py_func, py_file)  # type: ignore[misc]

    def get_source_stamp(self) -> Any:
        return (super().get_source_stamp(), _package_stamp())  # type: ignore[misc]


def install() -> bool:
    """Put package-stamped locators in front of numba's source-file locators (run on import); idempotent.

    Returns:
        Whether the locators are in place (False when this numba lacks the classes it needs).
    """
    try:
        from numba.core import caching
    except ImportError:  # pragma: no cover - numba is a dependency
        return False
    impl = getattr(caching, "CacheImpl", None) or getattr(caching, "_CacheImpl", None)
    backed = getattr(caching, "_SourceFileBackedLocatorMixin", None)
    locators = getattr(impl, "_locator_classes", None)
    if backed is None or not isinstance(locators, list):
        logger.debug("numba %s: no cache locator hook; per-file cache invalidation applies", caching)
        return False
    if any(issubclass(c, _PackageStampMixin) for c in locators):
        return True
    ours = [
        type(f"KernelPackage{base.__name__.lstrip('_')}", (_PackageStampMixin, base), {})
        for base in locators
        if issubclass(base, backed)
    ]
    locators[:0] = ours
    return bool(ours)


install()  # on import: the package's __init__ imports this module before any module that compiles
