"""Pruning: per-layer sparsity read back from the saved weights, 2:4 groups, Wanda, recovery, bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from llmkit.config import PruneConfig
from llmkit.errors import UserError
from llmkit.models.io import load_causal_lm
from llmkit.optimize.prune import calibration_windows, layer_sparsity, prunable_layers, prune, prune_mask
from llmkit.registry import Registry
from llmkit.workspace import Workspace
from tests.conftest import run_cli

LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@pytest.fixture(scope="module")
def ws(lm_workspace: Path, tiny_model) -> Workspace:
    return Workspace.open(lm_workspace)


def _run(ws, **cfg):
    return prune("tiny-lm", PruneConfig(table=False, **cfg), ws, Registry.for_workspace(ws.root))[0]


def test_magnitude_pruning_zeroes_the_smallest_half_of_every_linear_layer_and_nothing_else(ws, tiny_model):
    pruned = _run(ws, method="magnitude", sparsity=0.5, name="mag50")
    sparsity = layer_sparsity(pruned.path)
    linear = {k: v for k, v in sparsity.items() if k.split(".")[-2] in LINEAR}
    assert len(linear) == 7 * 2  # 7 per layer, 2 layers
    assert all(v == pytest.approx(0.5, abs=1e-3) for v in linear.values()), linear
    assert sparsity["model.embed_tokens.weight"] < 0.01
    assert pruned.lineage["pruning"]["sparsity"] == pytest.approx(0.5, abs=1e-3)
    lm, _ = load_causal_lm(pruned)  # an ordinary model folder
    original, _ = load_causal_lm(tiny_model)
    for name, layer in prunable_layers(original).items():
        # per layer, not per row: every zeroed |W| is at most every kept |W| of the same layer
        w, zero = layer.weight.detach().abs(), lm.get_submodule(name).weight == 0
        assert int(zero.sum()) == w.numel() // 2 and float(w[zero].max()) <= float(w[~zero].min()), name
    reg = Registry.for_workspace(ws.root)
    assert dict(reg.parents(pruned.id))["pruned_from"].id == tiny_model.id


def test_two_of_four_keeps_exactly_two_in_every_group(ws):
    pruned = _run(ws, method="wanda", pattern="2:4", calib_data="tiny", calib_samples=8, name="w24")
    lm, _ = load_causal_lm(pruned)
    for name, module in lm.named_modules():
        if name.split(".")[-1] in LINEAR:
            groups = (module.weight != 0).reshape(module.weight.shape[0], -1, 4).sum(-1)
            assert bool((groups <= 2).all()) and float((module.weight == 0).float().mean()) >= 0.5


def _input_norms(lm, names, windows) -> dict[str, torch.Tensor]:
    """‖X_j‖ of each input feature of each layer over the calibration tokens, with hooks of our own."""
    sums = {n: torch.zeros(lm.get_submodule(n).in_features, dtype=torch.float64) for n in names}

    def hook(n):
        def accumulate(_module, args) -> None:  # a pre-hook that returned a value would replace the input
            x = args[0].detach().double()
            sums[n].add_(x.reshape(-1, x.shape[-1]).pow(2).sum(0))
        return accumulate

    handles = [lm.get_submodule(n).register_forward_pre_hook(hook(n)) for n in names]
    with torch.no_grad():
        for row in windows:  # one window per forward, as prune feeds them
            lm(input_ids=row[None, :-1])
    for h in handles:
        h.remove()
    return {n: s.sqrt().float() for n, s in sums.items()}


def _kept_per_row(score: torch.Tensor, sparsity: float) -> torch.Tensor:
    """True where a weight is not among the int(in * sparsity) lowest scores of its row."""
    keep = torch.ones_like(score, dtype=torch.bool)
    return keep.scatter_(1, score.argsort(dim=1)[:, : int(score.shape[1] * sparsity)], False)


def test_wanda_zeros_the_smallest_weight_times_input_norm_of_each_row_and_recovery_keeps_the_zeros(ws, tiny_model):
    wanda = _run(ws, method="wanda", sparsity=0.5, calib_data="tiny", calib_samples=8, name="w50")
    again = _run(ws, method="wanda", sparsity=0.5, calib_data="tiny", calib_samples=8, name="w50")
    assert (again.id, again.version) == (wanda.id, 1)  # the same recipe (and calibration data version): made before
    a, _ = load_causal_lm(wanda)
    original, tokenizer = load_causal_lm(tiny_model)
    layers = prunable_layers(original)
    # the calibration windows prune draws (calib_context 0: the model's context, seed 0)
    windows = calibration_windows(tokenizer, Registry.for_workspace(ws.root), "tiny",
                                  original.config.max_position_embeddings, 8)
    norms = _input_norms(original, layers, windows)
    differs = 0
    for name, layer in layers.items():
        w = layer.weight.detach().abs().float()
        expected = _kept_per_row(w * norms[name][None, :], 0.5)
        assert torch.equal(a.get_submodule(name).weight != 0, expected), name
        differs += not torch.equal(expected, _kept_per_row(w, 0.5))
    assert differs == len(layers)  # the activations change every layer's choice, so ignoring them is caught
    recovered = _run(ws, method="wanda", sparsity=0.5, calib_data="tiny", calib_samples=8, recover_steps=3, name="w50r")
    r, _ = load_causal_lm(recovered)
    wa, wr = a.model.layers[0].self_attn.q_proj.weight, r.model.layers[0].self_attn.q_proj.weight
    assert torch.equal(wr == 0, wa == 0) and not torch.equal(wr, wa)  # same zeros, other values


def test_prune_mask_exact_counts_with_ties():
    score = torch.ones(4, 8)
    assert int((~prune_mask(score, 0.5, "unstructured", per_row=False)).sum()) == 16
    assert int((~prune_mask(score, 0.25, "unstructured", per_row=True)).sum()) == 8


def test_bad_inputs(ws):
    with pytest.raises(UserError, match="calib_data is not set: Wanda.*--calib-data tiny"):
        _run(ws, method="wanda")
    with pytest.raises(UserError, match="2:4 pattern is always 0.5"):
        _run(ws, pattern="2:4", sparsity=0.7)
    out = run_cli("prune", "tiny-lm", "--sparsity", "1.5", workspace=ws.root)
    assert out.returncode == 2 and "prune.sparsity = 1.5" in out.stderr


def test_a_calibration_window_past_the_models_context_is_refused_with_the_key(ws, tiny_model):
    """tiny-lm's context is 32: --calib-context 1000 was fed to it whenever the dataset had the tokens, and named no key
    when it had not ("calibration dataset ... has fewer than 1001 tokens")."""
    registry = Registry.for_workspace(ws.root)
    models = len(registry.list("model"))
    with pytest.raises(UserError, match=r"^prune.calib_context = 1000 exceeds tiny-lm:v\d+'s context of 32; give "
                                        r"--calib-context 32 or less \(0 = the model's context\)$"):
        _run(ws, method="wanda", calib_data="tiny", calib_context=1000)
    assert len(registry.list("model")) == models
    lm, tokenizer = load_causal_lm(tiny_model)
    with pytest.raises(UserError, match=r"^prune.calib_context = 10000000: calibration dataset tiny:v\d+ has \d+ tokens"):
        calibration_windows(tokenizer, registry, "tiny", 10_000_000, 4)


def test_calib_data_that_is_no_lm_or_chat_dataset_is_refused_before_anything_is_written(ws, sms_data, cli_here):
    """`--calib-data smsspam` (a classify dataset, another tokenizer) pruned a Shakespeare model on SMS texts and
    registered it, although calibration needs a prepared lm or chat dataset (the tool's own help says so)."""
    registry = Registry.for_workspace(ws.root)
    models, folders = len(registry.list("model")), sorted(p.name for p in (ws.root / "models").iterdir())
    for given, says in ((sms_data, f"dataset {sms_data}:v1 is a 'classify' dataset; calibration needs a prepared lm or "
                                   "chat dataset (llmkit data prepare --task lm|chat), such as the data the model was "
                                   "trained on: --calib-data tiny"),
                        ("tinny", "no dataset named 'tinny' in the registry; did you mean 'tiny'?")):
        for extra in (["--method", "wanda"], ["--recover-steps", "2"]):
            out = cli_here("prune", "tiny-lm", "--calib-data", given, *extra, workspace=ws.root)
            err = " ".join(out.stderr.split())
            assert out.returncode == 2, out.stdout + out.stderr
            assert err == f"error: prune.calib_data = '{given}' (--calib-data): {says}"
    assert len(registry.list("model")) == models  # nothing registered, no folder half-written
    assert sorted(p.name for p in (ws.root / "models").iterdir()) == folders
