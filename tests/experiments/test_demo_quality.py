"""The demo's planted defects are found (issue #2 acceptance 2). Several CPU minutes: marked slow."""

from __future__ import annotations

import pytest

from dpdiff.experiments.demo import demo_config, run_demo


@pytest.mark.integration
@pytest.mark.slow
def test_demo_finds_planted_defects(tmp_path):
    result = run_demo(tmp_path / "demo", demo_config())
    assert result["mean"]["I-AUROC"] > 0.9, result["mean"]
    assert result["mean"]["P-AUROC"] > 0.9, result["mean"]
