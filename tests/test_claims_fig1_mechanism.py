"""Claim fig1_mechanism: registration, and the quick profile end to end (slow, ≈ 1 min on 2
cores): the real pre-training and fine-tuning of the class-blind table through the `train`
runner must PASS all four parts of Fig. 1's check (the check's own PASS/FAIL behaviour is
tested on synthetic sweeps in test_finetune_curves.py)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from covsim.claims import CLAIMS, fig1_mechanism
from covsim.config import load_config
from covsim.sweep import run_sweep

ROOT = Path(__file__).resolve().parents[1]
TOML = ROOT / "experiments" / "fig1_mechanism.toml"


def test_registered():
    c = CLAIMS["fig1_mechanism"]
    assert c.experiments == ("fig1_mechanism",) and TOML.is_file()
    assert c.check is fig1_mechanism.check and c.kind == "reproduction"


def test_config_is_class_blind():
    cfg = load_config(TOML, "quick")
    assert cfg.model.kind == "tabular" and cfg.model.params["prompt_positions"] == [0]
    assert cfg.task.kind == "hidden_rules_finetune"
    assert cfg.pretrain.task.kind == "hidden_rules_pretrain"


@pytest.mark.slow
def test_quick_profile_passes(tmp_path):
    from covsim.runners import run_cell

    out = tmp_path / "fig1_mechanism"
    run_sweep(load_config(TOML, "quick"), run_cell, out, progress=False)
    dirs = {"fig1_mechanism": out}
    v = CLAIMS["fig1_mechanism"].check(dirs)
    assert v.passed, v.line()
    n = v.numbers
    assert n["start_kl"] == pytest.approx(math.log(12 / 5), rel=0.2)
    assert all(f.is_file() for f in CLAIMS["fig1_mechanism"].figure(dirs, tmp_path / "fig"))
