"""docs/configuration.md is generated from the declarations of dpdiff/config.py (dpdiff/config_docs.py) and
must be current: change a default, a choice or a help text, then regenerate the file."""

from __future__ import annotations

from pathlib import Path

from dpdiff.config import config_keys, key_metadata
from dpdiff.config_docs import REFERENCE_FILE, REGENERATE, config_reference, main

REPO = Path(__file__).resolve().parents[1]


def test_configuration_reference_is_current():
    assert REFERENCE_FILE == REPO / "docs" / "configuration.md"
    committed = REFERENCE_FILE.read_text(encoding="utf-8") if REFERENCE_FILE.is_file() else None
    assert committed == config_reference(), (
        f"docs/configuration.md is not current with dpdiff/config.py: regenerate it with `{REGENERATE}`"
    )


def test_every_key_is_documented_with_its_choices():
    text = config_reference()
    for key in config_keys():
        line = next((row for row in text.splitlines() if row.startswith(f"| `{key}` |")), None)
        assert line is not None, key
        for choice in key_metadata(key).get("choices", ()):
            assert f"`{choice}`" in line, (key, choice)


def test_check_mode_says_how_to_regenerate(tmp_path, capsys):
    out = tmp_path / "configuration.md"
    assert main(["--check", "--output", str(out)]) == 1
    assert REGENERATE in capsys.readouterr().err
    assert main(["--output", str(out)]) == 0 and out.read_text(encoding="utf-8") == config_reference()
    assert main(["--check", "--output", str(out)]) == 0


def test_readme_links_the_reference():
    assert "docs/configuration.md" in (REPO / "README.md").read_text(encoding="utf-8")
