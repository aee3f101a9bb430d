"""Every example YAML resolves its import paths from a fresh interpreter in any working
directory (as ``serveplane run`` does), and the status table keeps its columns apart."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from serveplane.cli import format_table, status_table
from tests.conftest import ROOT

EXAMPLES = sorted((ROOT / "examples").rglob("*.yaml"))


def test_every_example_is_found() -> None:
    names = {p.relative_to(ROOT / "examples").as_posix() for p in EXAMPLES}
    assert {"quickstart.yaml", "embedding/embedding.yaml", "embedding/embedding-gpu.yaml"} <= names


@pytest.mark.parametrize("config", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_import_paths_resolve_from_a_fresh_interpreter(config: Path, tmp_path: Path) -> None:
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from serveplane.deploy_config import load_config, import_attr\n"
        f"path = Path({str(config)!r})\n"
        "cfg = load_config(path)\n"
        "for b in cfg.backends:\n"
        "    print(b.name, import_attr(b.import_path, path.resolve().parent).__name__)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip()


def test_unresolvable_import_path_names_where_it_looked(tmp_path: Path) -> None:
    from serveplane.deploy_config import import_attr
    from serveplane.exceptions import InvalidConfigError

    with pytest.raises(InvalidConfigError, match=r"cannot import 'nosuchpkg.model'.*looked in "):
        import_attr("nosuchpkg.model:Model", tmp_path)


class _Status:
    def get_status(self) -> dict:
        return {"backends": {"sentiment:v1": {"replicas": {"RUNNING": 2}, "target_replicas": 2},
                             "sentiment:v2": {"replicas": {"RUNNING": 1}, "target_replicas": 1}},
                "endpoints": {"sentiment": {"route": "/sentiment",
                                            "traffic": {"sentiment:v1": 0.9, "sentiment:v2": 0.1},
                                            "shadows": {"sentiment:v2": 0.2}}}}


def test_status_table_keeps_traffic_and_shadows_apart() -> None:
    table = status_table(_Status())
    assert "sentiment:v2=0.1sentiment" not in table
    row = next(line for line in table.splitlines() if line.startswith("sentiment "))
    assert row.split() == ["sentiment", "/sentiment", "sentiment:v1=0.9", "sentiment:v2=0.1",
                           "sentiment:v2=0.2"]
    assert "sentiment:v2=0.1  sentiment:v2=0.2" in row


def test_format_table_widens_a_column_for_its_longest_cell() -> None:
    lines = format_table(["A", "B"], [["x" * 30, "y"], ["z", "w"]])
    assert lines[2] == "x" * 30 + "  y"
    assert lines[3] == "z" + " " * 31 + "w"
