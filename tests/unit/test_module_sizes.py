"""No module of the yurt package over 600 lines: a file a reader can hold (issue 11).

It measures the yurt package the tests import: in CI (``make test``) that is the installed wheel,
run without the source tree, so what users get is what is measured; in a development install it
is the source tree.  An offender is split along the seams it already has (docs/architecture.md).
"""

from __future__ import annotations

import os

import yurt

LIMIT = 600


def module_sizes() -> dict[str, int]:
    """``yurt/.../name.py`` -> number of lines, for every module of the imported package."""
    root = os.path.dirname(os.path.abspath(yurt.__file__))
    sizes: dict[str, int] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d != "__pycache__"]
        for name in filenames:
            if name.endswith(".py"):
                path = os.path.join(dirpath, name)
                with open(path, encoding="utf-8") as f:
                    sizes[os.path.relpath(path, os.path.dirname(root))] = sum(1 for _ in f)
    return sizes


def test_no_module_over_600_lines():
    sizes = module_sizes()
    assert "yurt/cli/actions.py" in sizes and len(sizes) > 50, sorted(sizes)  # the whole package was read
    over = sorted(f"{path}: {n} lines" for path, n in sizes.items() if n > LIMIT)
    assert not over, f"{len(over)} module(s) over {LIMIT} lines (split each along its seams):\n" + "\n".join(over)
