"""``nnreg_evaluate -d`` takes a dataset id or name (looked up in $nnReg_raw / --raw) like every command; a path
works too."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from click.testing import CliRunner

from nnreg.cli.evaluate import main


def test_id_name_and_path_give_the_same_metrics(tiny_root: Path, zero_fields: Path, tmp_path: Path,
                                                monkeypatch) -> None:
    raw = tmp_path / "raw"
    shutil.copytree(tiny_root, raw / "Dataset777_Tiny")
    config = tiny_root / "config.json"
    outputs = {}
    for label, spec, extra in (("path", str(tiny_root), []), ("id", "777", ["--raw", str(raw)]),
                               ("name", "Dataset777_Tiny", ["--raw", str(raw)])):
        out = tmp_path / f"{label}.json"
        result = CliRunner().invoke(main, ["-i", str(zero_fields), "-d", spec, "-c", str(config), "-o", str(out),
                                           *extra])
        assert result.exit_code == 0, result.output
        outputs[label] = json.loads(out.read_text())["aggregates"]
    assert outputs["id"] == outputs["path"] == outputs["name"]
    monkeypatch.setenv("nnReg_raw", str(raw))
    result = CliRunner().invoke(main, ["-i", str(zero_fields), "--dataset", "777", "-c", str(config)])
    assert result.exit_code == 0, result.output
    missing = CliRunner().invoke(main, ["-i", str(zero_fields), "-d", "778"])
    assert missing.exit_code == 2 and "no dataset with id 778" in missing.output
