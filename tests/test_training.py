"""training.py: the Recipe (its precedence, its files, its checks), a training step and epoch, the run's state,
and --compile (the compiled batch loss computes what the eager one does, and fails in one line)."""

from __future__ import annotations

import json
import math
import re
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import pytest
import torch
from torch._dynamo.utils import counters

import lipschitz
import orthonormal
import train_mnist
from errors import ConfigError, Failure
from mnist_data import PIXEL_RANGE, Split
from models import LipschitzMLP, MLPConfig
from objectives import LOSSES, Objective, Schedule, batch_loss
from training import (PRECISIONS, RECIPES, Recipe, Run, Setting, compiled, read_recipe, recipe_path, train_epoch,
                      train_step)

SMALL = MLPConfig(in_features=12, hidden=(8, 8), out_features=4, group_size=2)


def small_split(seed: int = 1, n: int = 64) -> Split:
    g = torch.Generator().manual_seed(seed)
    return Split(torch.rand(n, 12, generator=g), torch.randint(0, 4, (n,), generator=g))


def write_recipe(folder: Path, entries: dict) -> Path:
    path = folder / "mine.json"
    path.write_text(json.dumps(entries))
    return path


# The recipe.

def test_recipe_defaults_are_the_original_demos():
    recipe = Recipe()
    assert (recipe.hidden, recipe.activation, recipe.group_size) == ((500,), "groupsort", 10)
    assert (recipe.epochs, recipe.batch_size, recipe.lr, recipe.gamma) == (100, 128, 1e-3, 0.985)
    assert (recipe.loss, recipe.lc_penalty, recipe.norm, recipe.cert_magnitude, recipe.method) == \
           ("ce", 0.01, "linf", 0.1, "global")
    assert recipe.model_config() == MLPConfig()
    assert Recipe.build() == recipe


def test_recipe_build_takes_defaults_then_the_file_then_the_flags(tmp_path):
    path = write_recipe(tmp_path, {"lr": 0.01, "epochs": 5, "hidden": [40, 20]})
    from_file = Recipe.build(path)
    assert (from_file.lr, from_file.epochs, from_file.hidden) == (0.01, 5, (40, 20))
    assert from_file.batch_size == Recipe().batch_size  # not in the file: the default
    overridden = Recipe.build(path, lr=0.1, batch_size=64)
    assert (overridden.lr, overridden.epochs, overridden.batch_size) == (0.1, 5, 64)
    # the same through the command line: a flag not given leaves the file's value, not the default
    recipe, args = train_mnist.parse_args(["--recipe", str(path)])
    assert recipe == from_file and args.save_fn == f"mnist_{path.stem}.p"  # a recipe names its checkpoint
    recipe, _ = train_mnist.parse_args(["--recipe", str(path), "--lr", "0.1", "--batch-size", "64"])
    assert recipe == overridden
    recipe, args = train_mnist.parse_args(["--lr", "0.1", "--activation", "relu"])
    assert recipe == Recipe(lr=0.1, activation="relu") and args.save_fn == "mnist_relu.p"
    _, args = train_mnist.parse_args(["--recipe", "l2"])
    assert args.save_fn == "mnist_l2.p"  # so that it never replaces the demo's mnist_groupsort.p
    _, args = train_mnist.parse_args(["--recipe", "l2", "--save-fn", "mine.p"])
    assert args.save_fn == "mine.p"


def test_the_train_radius_is_train_eps_and_defaults_to_the_certificates_radius():
    assert Recipe(cert_magnitude=0.3).train_radius == 0.3
    assert Recipe(cert_magnitude=0.3, train_eps=0.0).train_radius == 0.0
    assert Recipe(cert_magnitude=0.3, train_eps=0.2).train_radius == 0.2


@pytest.mark.parametrize("path", sorted(RECIPES.glob("*.json")), ids=lambda path: path.stem)
def test_every_recipe_file_builds_a_valid_recipe_and_model(path):
    entries = json.loads(path.read_text())
    assert recipe_path(path.stem) == path
    recipe = Recipe.build(recipe_path(path.stem))
    assert {name: recipe.to_dict()[name] for name in entries} == entries
    assert Recipe(**recipe.to_dict()) == recipe  # what a checkpoint records rebuilds the recipe
    assert json.loads(json.dumps(recipe.to_dict())) == recipe.to_dict()
    LipschitzMLP(recipe.model_config())  # the architecture can be built
    named, _ = train_mnist.parse_args(["--recipe", path.stem])
    assert named == recipe


def test_the_named_recipes_include_the_demo_and_the_demo_is_the_defaults():
    assert {"demo", "relu", "l2", "lmt", "ibp-gs50"} <= {path.stem for path in RECIPES.glob("*.json")}
    assert Recipe.build(recipe_path("demo")) == Recipe()


@pytest.mark.parametrize("entries, message", [
    ({"lr": 0}, "lr must be a finite number > 0, got 0"),
    ({"loss": "xent"}, "unknown loss 'xent'"),
    ({"norm": "l3"}, "unknown norm 'l3'"),
    ({"method": "crown"}, "unknown method 'crown'"),
    ({"activation": "tanh"}, "unknown activation 'tanh'"),
    ({"constraint": "clip"}, "unknown constraint 'clip'"),
    ({"epochs": 0}, "epochs must be a finite number > 0"),
    ({"gamma": -0.5}, "gamma must be a finite number > 0"),
    ({"lr": 1e400}, "lr must be a finite number > 0, got inf"),
    ({"lc_penalty": -0.01}, "lc_penalty must be a finite number >= 0"),
    ({"train_eps": float("nan")}, "train_eps must be a finite number >= 0"),
    ({"cert_magnitude": float("inf")}, "cert_magnitude must be a finite number >= 0"),
    ({"lr": "fast"}, "lr must be a number, got 'fast'"),
    ({"train_eps": [0.1]}, "train_eps must be a number, got [0.1]"),
    ({"epochs": 2.5}, "epochs must be an integer, got 2.5"),
    ({"batch_size": True}, "batch_size must be an integer, got True"),
    ({"hidden": 500}, "hidden must be a list of widths, got 500"),
    ({"hidden": "500"}, "hidden must be a list of widths, got '500'"),
    ({"eps": 0.1}, "unknown entries ['eps']"),
    ({"lr_drops": 50}, "lr_drops must be a list of epochs, got 50"),
    ({"lr_drops": [0, 5]}, "lr_drops must be epochs >= 1"),
    ({"hidden": [100, 0]}, "hidden must be widths >= 1, got [100, 0]"),
    ({"seed": 0.5}, "seed must be an integer, got 0.5"),
    ({"train_eps": None, "warmup_epochs": None}, "warmup_epochs must be a number, got None"),
    ({"ramp_shape": "cosine"}, "unknown ramp_shape 'cosine'"),
    ({"final_clean_weight": 1.5}, "final_clean_weight must be a finite number in [0, 1], got 1.5"),
    ({"grad_clip": -1.0}, "grad_clip must be a finite number >= 0"),
    ({"warmup_epochs": "two"}, "warmup_epochs must be a number"),
    ({"batch_norm": 1}, "batch_norm must be true or false, got 1"),
    ({"precision": "float16"}, "unknown precision 'float16'"),
    ({"batch_norm": True, "constraint": "bjorck"}, "batch_norm rescales every hidden layer"),
    ({"bjorck_order": 5}, "Bjorck order must be between 1 and 4, got 5"),
    ({"bjorck_beta": 0.75}, "bjorck_beta must be a finite number in (0, 0.5], got 0.75"),
])
def test_a_recipe_with_an_invalid_value_is_refused(tmp_path, entries, message):
    path = write_recipe(tmp_path, entries)
    with pytest.raises(ConfigError, match=re.escape(message)):
        Recipe.build(path)


def a_value_other_than_the_default(setting: Setting, default: Any) -> Any:
    """A valid value of `setting` that is not `default`."""
    if setting.kind is bool:
        return not default
    if setting.choices:
        return next(choice for choice in reversed(setting.choices) if choice != default)
    if setting.kind is tuple:
        return ("10:3:1:1", "down") if setting.item == "layers" else (3, 4)
    if setting.kind is int:
        return default + 1
    return 0.25 if setting.check in ("unit", "half") else (default or 0.0) + 0.5


@pytest.mark.parametrize("name", list(Recipe.settings()))
def test_every_setting_has_a_flag_in_every_spelling_that_sets_its_field_and_no_other(name):
    setting, default = Recipe.settings()[name], getattr(Recipe(), name)
    value = a_value_other_than_the_default(setting, default)
    expected = replace(Recipe(), **{name: value})
    for flag in setting.names(name):
        given = [flag] if setting.kind is bool else [flag, setting.shown(value)]
        assert train_mnist.parse_args(given)[0] == expected
    if setting.kind is bool:
        assert train_mnist.parse_args([f"--no-{setting.names(name)[0][2:]}"])[0] == Recipe()
    assert name not in vars(train_mnist.parse_args([])[1])  # a flag not given leaves the recipe file's entry


def test_list_flags_take_comma_separated_integers_and_lr_drops_takes_none():
    recipe, _ = train_mnist.parse_args(["--hidden", "1024,1024", "--lr-drops", "50,55"])
    assert recipe.hidden == (1024, 1024) and recipe.lr_drops == (50, 55)
    recipe, _ = train_mnist.parse_args(["--recipe", "ibp-wide", "--lr-drops", "none"])
    assert recipe.lr_drops == () and Recipe.build(recipe_path("ibp-wide")).lr_drops == (110, 125)


def test_an_unreadable_or_missing_recipe_is_refused(tmp_path):
    (tmp_path / "broken.json").write_text("{lr: 0.1")
    with pytest.raises(ConfigError, match="cannot read recipe"):
        read_recipe(tmp_path / "broken.json")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(ConfigError, match="holds unknown entries"):
        read_recipe(tmp_path / "list.json")
    with pytest.raises(ConfigError, match="no recipe .*nowhere.json: the named recipes are .*demo"):
        Recipe.build(recipe_path("nowhere"))


# A run: steps, epochs, state.

def test_constrained_training_keeps_every_layer_within_the_radius():
    recipe, _ = train_mnist.parse_args(["--constraint", "linf-proj", "--constraint-radius", "0.5",
                                        "--lc_penalty", "0", "--lr", "0.05", "--batch-size", "16"])
    run = Run.start(recipe, torch.device("cpu"), config=SMALL)
    train_epoch(run, small_split())
    for layer in run.model.affine_layers():
        assert lipschitz.operator_norm(layer.weight, "linf") <= 0.5
    # with radius r per layer, every logit bound is at most r ** depth
    assert (run.model.logit_bounds("linf").per_logit <= 0.5 ** 3 * (1 + 1e-5)).all()


def test_bjorck_training_starts_orthonormal_and_keeps_every_l2_layer_bound_near_one():
    recipe, _ = train_mnist.parse_args(["--constraint", "bjorck", "--norm", "l2", "--lc_penalty", "0",
                                        "--loss", "lmt", "--lr", "0.01", "--batch-size", "16"])
    run = Run.start(recipe, torch.device("cpu"), config=SMALL)
    for layer in run.model.affine_layers():  # 8x12, 8x8, 4x8: orthonormal rows
        w = layer.weight.double()
        assert torch.allclose(w @ w.T, torch.eye(len(w), dtype=torch.float64), atol=1e-6)
    before = [layer.weight.detach().clone() for layer in run.model.affine_layers()]
    train_epoch(run, small_split())
    for old, layer in zip(before, run.model.affine_layers()):
        assert not torch.equal(old, layer.weight)
        singular = torch.linalg.svdvals(layer.weight.double())
        assert singular.max() <= 1 + 1e-5 and singular.min() >= 0.9
    # so the certified L2 bound of every logit difference is at most sqrt 2: the margin / sqrt 2 rule
    bounds = run.model.certified_logit_bounds("l2")
    assert bounds.output <= 1 + 1e-5 and (bounds.per_gap <= math.sqrt(2) * (1 + 1e-5)).all()


def test_orthonormal_training_keeps_every_layer_orthonormal_through_the_forward_pass_and_saves_it_frozen(tmp_path):
    recipe, _ = train_mnist.parse_args(["--constraint", "orthonormal", "--norm", "l2", "--lc_penalty", "0",
                                        "--loss", "lmt", "--lr", "0.01", "--batch-size", "16",
                                        "--bjorck-iterations", "25"])
    run = Run.start(recipe, torch.device("cpu"), config=SMALL)
    assert orthonormal.is_orthonormalised(run.model)
    before = [p.detach().clone() for p in run.model.parameters()]
    train_epoch(run, small_split())
    assert all(not torch.equal(old, p) for old, p in zip(before, run.model.parameters()))
    network = run.network()
    assert not orthonormal.is_orthonormalised(network) and orthonormal.is_orthonormalised(run.model)
    for layer in network.affine_layers():  # every weight as it is stored, not merely near the set
        w = layer.weight.double()
        assert torch.allclose(w @ w.T, torch.eye(len(w), dtype=torch.float64), atol=1e-5)
    bounds = network.certified_logit_bounds("l2")
    assert bounds.output <= 1 + 1e-4 and (bounds.per_gap <= math.sqrt(2) * (1 + 1e-4)).all()
    x = small_split().images
    assert torch.equal(network(x), run.model(x))


def test_a_train_step_moves_the_weights_and_reports_its_loss_errors_and_certified_count():
    recipe = Recipe(lr=0.01)
    run = Run.start(recipe, torch.device("cpu"), config=SMALL)
    split = small_split()
    before = [p.detach().clone() for p in run.model.parameters()]
    expected = batch_loss(run.model, split.images, split.labels, recipe.objective(), Schedule(recipe.train_radius, 0.5))
    loss, class_loss, errors, certified = train_step(run, split.images, split.labels).tolist()
    assert loss == pytest.approx(expected.loss.item()) and class_loss == pytest.approx(expected.class_loss.item())
    assert errors == (expected.logits.argmax(dim=1) != split.labels).sum().item()
    assert 0 <= certified <= len(split) - errors
    assert all(not torch.equal(b, p) for b, p in zip(before, run.model.parameters()))


def test_a_batch_norm_step_trains_the_network_folded_with_the_batch_statistics():
    """The step's loss is the objective of the MLP whose hidden layers carry the batch's own batch norm;
    both the Linear layers and the norms' scales and shifts move; the trained network is a plain MLP."""
    recipe = Recipe(lr=0.01, loss="ibp", lc_penalty=0.0, batch_norm=True)
    run = Run.start(recipe, torch.device("cpu"), config=SMALL)
    split = small_split()
    before = {name: p.detach().clone() for name, p in run.model.named_parameters()}
    reference = run.model.mlp.layers
    normed = torch.nn.Sequential(reference[0], torch.nn.BatchNorm1d(8), reference[1], reference[2],
                                 torch.nn.BatchNorm1d(8), reference[3], reference[4])
    expected = torch.nn.functional.cross_entropy(normed(run.model.mlp.normalise(split.images)), split.labels)
    loss, class_loss, errors, certified = train_step(run, split.images, split.labels, Schedule(0.0, 1.0)).tolist()
    assert class_loss == pytest.approx(expected.item(), rel=1e-5) and loss == pytest.approx(class_loss, rel=1e-5)
    moved = {name for name, p in run.model.named_parameters() if not torch.equal(before[name], p)}
    assert moved == set(before) and any(name.startswith("norms.") for name in moved)
    for norm, reference_norm in zip(run.model.norms, (normed[1], normed[4])):  # BatchNorm1d's running statistics
        assert torch.allclose(norm.running_mean, reference_norm.running_mean, atol=1e-6)
        assert torch.allclose(norm.running_var, reference_norm.running_var, atol=1e-6)
    network = run.network()
    assert type(network) is LipschitzMLP and network.config == SMALL
    with torch.no_grad():
        normed.eval()
        normed[1].load_state_dict(run.model.norms[0].state_dict())
        normed[4].load_state_dict(run.model.norms[1].state_dict())
        assert torch.allclose(network(split.images), normed(run.model.mlp.normalise(split.images)), atol=1e-5)


def test_a_bfloat16_step_trains_the_float32_weights_on_the_same_objective_in_bfloat16():
    split = small_split()
    runs = {precision: Run.start(Recipe(lr=0.01, loss="ibp", precision=precision), torch.device("cpu"), config=SMALL)
            for precision in PRECISIONS}
    steps = {name: train_step(run, split.images, split.labels, Schedule(0.1, 0.5)) for name, run in runs.items()}
    losses = [step[0].item() for step in steps.values()]
    assert losses[0] != losses[1] and losses[0] == pytest.approx(losses[1], rel=2e-2)  # computed in bfloat16
    assert all(parameter.dtype == torch.float32 for parameter in runs["bfloat16"].model.parameters())


def test_train_epoch_sees_max_batches_and_reports_means():
    run = Run.start(Recipe(batch_size=16), torch.device("cpu"), config=SMALL)
    stats = train_epoch(run, small_split(n=100), max_batches=3)
    assert run.optimizer.state_dict()["state"][0]["step"].item() == 3
    assert 0 <= stats.error <= 1 and 0 <= stats.cert_error <= 1 and stats.loss > 0
    assert stats.max_logit_bound == pytest.approx(run.model.logit_bounds("linf").per_logit.max().item())


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_an_epoch_that_diverges_reports_an_infinite_bound_for_train_mnist_to_stop_on(norm):
    """Non-finite weights after an epoch (a learning rate too large) give an infinite logit bound, which
    train_mnist.train_epochs stops on in one line, and no failure of the bound's own computation (an L2 bound's
    SVD refuses non-finite matrices)."""
    run = Run.start(Recipe(batch_size=16, norm=norm), torch.device("cpu"), config=SMALL)
    with torch.no_grad():
        run.model.affine_layers()[0].weight[0, 0] = math.nan
    stats = train_epoch(run, small_split(n=100), max_batches=2)
    assert stats.max_logit_bound == math.inf and not math.isfinite(stats.loss)


def test_the_same_seed_starts_the_same_run_and_another_seed_does_not():
    first, again, other = (Run.start(Recipe(seed=seed), torch.device("cpu"), config=SMALL) for seed in (0, 0, 1))
    for a, b in zip(first.model.parameters(), again.model.parameters()):
        assert torch.equal(a, b)
    assert not torch.equal(first.model.affine_layers()[0].weight, other.model.affine_layers()[0].weight)


@pytest.mark.parametrize("drops, batch_norm, constraint",
                         [((), False, "none"), ((1,), False, "none"), ((), True, "none"), ((), False, "orthonormal")])
def test_a_restored_run_continues_bit_for_bit(drops, batch_norm, constraint):
    """Two epochs straight equal one epoch, its state saved and restored into a fresh run, then another."""
    recipe = Recipe(batch_size=16, lr=0.01, lr_drops=drops, batch_norm=batch_norm, constraint=constraint,
                    bjorck_iterations=10)
    split = small_split(n=80)
    straight = Run.start(recipe, torch.device("cpu"), config=SMALL)
    for _ in range(2):
        train_epoch(straight, split)
        straight.scheduler.step()
        straight.epoch += 1
    first = Run.start(recipe, torch.device("cpu"), config=SMALL)
    train_epoch(first, split)
    first.scheduler.step()
    first.epoch += 1
    first.epoch_seconds.append(1.5)
    state = first.state()
    assert state.recipe == recipe.to_dict() and state.epoch == 1 and state.epoch_seconds == [1.5]
    assert any("parametrizations" in name for name in state.model) == (constraint == "orthonormal")
    resumed = Run.start(recipe, torch.device("cpu"), config=SMALL)
    resumed.restore(state)
    assert resumed.epoch == 1 and resumed.epoch_seconds == [1.5]
    train_epoch(resumed, split)
    straight_state, resumed_state = straight.model.state_dict(), resumed.model.state_dict()
    assert straight_state.keys() == resumed_state.keys()
    assert all(torch.equal(straight_state[name], resumed_state[name]) for name in straight_state)  # buffers too


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before")  # no step taken: rates only
def test_the_learning_rate_decays_every_epoch_and_drops_after_the_listed_epochs():
    run = Run.start(Recipe(lr=0.1, gamma=0.9, lr_drops=(2, 3), lr_drop_factor=0.5), torch.device("cpu"), config=SMALL)
    rates = []
    for _ in range(5):
        rates.append(run.optimizer.param_groups[0]["lr"])
        run.scheduler.step()
    expected = [0.1 * 0.9 ** k * 0.5 ** sum(k >= d for d in (2, 3)) for k in range(5)]
    assert rates == pytest.approx(expected, rel=1e-12)
    plain = Run.start(Recipe(), torch.device("cpu"), config=SMALL)
    assert type(plain.scheduler) is torch.optim.lr_scheduler.ExponentialLR  # the demo's, bit for bit


@pytest.mark.parametrize("clip", [0.0, 1e-3])
def test_gradient_clipping_bounds_the_norm_of_the_step_gradient(clip):
    run = Run.start(Recipe(loss="ibp", grad_clip=clip), torch.device("cpu"), config=SMALL)
    split = small_split()
    train_step(run, split.images, split.labels)
    norm = torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in run.model.parameters()]))
    assert (norm <= clip * (1 + 1e-6)) == (clip > 0)


# --compile.

def small_batch(seed: int = 0) -> tuple[LipschitzMLP, torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    model = LipschitzMLP(MLPConfig(in_features=20, hidden=(12,), out_features=5, group_size=3))
    with torch.no_grad():  # rows of unequal L1 norm: a tie in a group's max bound has no unique gradient
        for layer in model.affine_layers():
            layer.weight.mul_(torch.rand(len(layer.weight), 1) + 0.5)
    x = torch.rand(16, 20).clamp(*PIXEL_RANGE)
    return model, x, torch.randint(0, 5, (16,))


@pytest.mark.parametrize("loss", LOSSES)
def test_the_compiled_loss_and_its_gradients_match_eager(loss):
    model, x, y = small_batch()
    schedule = Schedule.at(0.5, 0.1, 1.0)
    results = []
    for loss_fn in (batch_loss, compiled(batch_loss)):
        model.zero_grad()
        value, class_loss, logits, threshold = loss_fn(model, x, y, Objective(loss, "linf", 0.01, 1.0), schedule)
        value.backward()
        results.append((value, class_loss, logits, threshold, *(p.grad for p in model.parameters())))
    for eager, fast in zip(*results):
        torch.testing.assert_close(fast, eager, rtol=1e-5, atol=1e-6)


def test_a_compiled_batch_norm_step_matches_eager():
    """The compiled loss takes the logits that batch norm's pass hands it, as the eager one does."""
    split = small_split()
    runs = [Run.start(Recipe(lr=0.01, loss="ibp", batch_norm=True), torch.device("cpu"), compile, SMALL)
            for compile in (False, True)]
    eager, fast = (train_step(run, split.images, split.labels, Schedule(0.1, 0.5)) for run in runs)
    torch.testing.assert_close(fast, eager, rtol=1e-5, atol=1e-6)
    # the gradients, not the weights: batch norm cancels a hidden bias, whose gradient of rounding noise
    # Adam's first step, of size lr whatever the gradient's scale, would turn into different weights
    for a, b in zip(runs[0].model.parameters(), runs[1].model.parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-5, atol=1e-6)


def test_a_ramping_radius_does_not_recompile_every_step():
    """IBP at ever new radii, as during --ramp-epochs: once the first radii have made the graphs general, a
    new radius compiles nothing (the count of graphs includes the pieces between graph breaks, and what
    earlier tests compiled is reset first)."""
    torch._dynamo.reset()
    model, x, y = small_batch(1)
    loss_fn = compiled(batch_loss)
    counters.clear()
    for step in range(3):
        loss_fn(model, x, y, Objective("ibp", "linf", 0.01, 1.0), Schedule.at(step / 6, 0.1, 1.0))
    warm = counters["stats"]["unique_graphs"]
    for step in range(3, 6):
        loss_fn(model, x, y, Objective("ibp", "linf", 0.01, 1.0), Schedule.at(step / 6, 0.1, 1.0))
    assert warm > 0 and counters["stats"]["unique_graphs"] == warm


def test_a_compile_failure_is_one_line_naming_the_flag(monkeypatch):
    def broken(function):
        def call(*args):
            raise torch._dynamo.exc.TorchDynamoException("no C++ compiler found\nlong details")
        return call

    monkeypatch.setattr(torch, "compile", broken)
    model, x, y = small_batch()
    with pytest.raises(Failure, match=r"^torch.compile failed \(no C\+\+ compiler found\): run without --compile$"):
        compiled(batch_loss)(model, x, y, Objective("ce", "linf", 0.01, 1.0), Schedule.at(1, 0.1, 0))


def test_a_run_started_with_compile_uses_the_compiled_loss(monkeypatch):
    calls = []
    monkeypatch.setattr(torch, "compile", lambda function: calls.append(function) or function)
    run = Run.start(Recipe(), torch.device("cpu"), compile=True, config=SMALL)
    assert calls == [batch_loss] and run.loss_fn is not batch_loss
    assert Run.start(Recipe(), torch.device("cpu"), config=SMALL).loss_fn is batch_loss


def test_recipe_fields_are_what_resume_compares():
    """Every field is recorded (to_dict), so a resumed run can be checked against all of them."""
    assert set(Recipe().to_dict()) == {f.name for f in fields(Recipe)}
