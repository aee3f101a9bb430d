"""User code for the security tests (importable by replica workers)."""

from __future__ import annotations


class Model:
    def __call__(self, x):
        return {"ok": x}
