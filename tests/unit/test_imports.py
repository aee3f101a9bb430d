"""Importing serveplane (and its CLI) must not import Ray: the CLI sets Ray's environment
(its auth mode) before Ray is imported, and Ray reads it at import."""

from __future__ import annotations

import subprocess
import sys


def test_importing_serveplane_and_its_cli_leaves_ray_unimported():
    code = "import sys, serveplane, serveplane.cli; print('ray' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False", "importing serveplane imported Ray"
