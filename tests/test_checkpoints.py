"""checkpoints.py in process: writes are atomic, a checkpoint comes back as it was saved, what it records must
agree with what is asked, the original demo's state_dict is read, and a training state resumes only its recipe."""

from __future__ import annotations

import csv
import json
import os
import re
from pathlib import Path

import pytest
import torch

import checkpoints
import cli
from checkpoints import (
    ORIGINAL_KEYS,
    CheckpointError,
    Expected,
    TrainingState,
    atomic_write,
    load_checkpoint,
    load_training_state,
    save_checkpoint,
    save_training_state,
    write_csv,
    write_json,
)
from errors import OutputError
from models import LipschitzMLP, MLPConfig
from training import Recipe

SMALL = MLPConfig(in_features=12, hidden=(10,), out_features=4, group_size=5)


def small_model(seed: int = 0, config: MLPConfig = SMALL) -> LipschitzMLP:
    torch.manual_seed(seed)
    return LipschitzMLP(config)


def test_atomic_write_leaves_the_old_file_and_no_temporary_when_writing_fails(tmp_path):
    path = tmp_path / "out.bin"
    path.write_bytes(b"old")

    def half_then_fail(stream):
        stream.write(b"new but incomplete")
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError, match="interrupted"):
        atomic_write(path, half_then_fail)
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["out.bin"]
    atomic_write(tmp_path / "new" / "folder" / "file.bin", lambda stream: stream.write(b"whole"))
    assert (tmp_path / "new" / "folder" / "file.bin").read_bytes() == b"whole"


def test_a_file_that_cannot_be_written_is_an_output_error(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(OutputError, match=f"cannot write {blocker / 'x.json'}"):
        write_json(blocker / "x.json", {"a": 1})
    assert os.listdir(tmp_path) == ["a_file"]


def test_json_and_csv_are_written_whole(tmp_path):
    write_json(tmp_path / "m.json", {"b": [1, 2], "a": 0.5})
    assert json.loads((tmp_path / "m.json").read_text()) == {"a": 0.5, "b": [1, 2]}
    write_csv(tmp_path / "t.csv", [["x", "y"], [1, "a,b"]])
    with (tmp_path / "t.csv").open(newline="") as stream:
        assert list(csv.reader(stream)) == [["x", "y"], ["1", "a,b"]]


def test_a_saved_checkpoint_loads_back_with_its_config_weights_and_metrics(tmp_path):
    model = small_model()
    path = tmp_path / "m.p"
    metrics = {"clean_accuracy": 97.5, **cli.provenance("train_mnist.py", [])}  # plain types only: read back
    save_checkpoint(path, model, metrics)                                          # with weights_only
    loaded = load_checkpoint(path)
    assert loaded.model.config == SMALL and not loaded.original and not loaded.model.training
    assert loaded.metrics == metrics
    assert json.loads(checkpoints.metrics_path(path).read_text()) == loaded.metrics
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[key], value)
    # what the flags may state, when it agrees
    assert load_checkpoint(path, Expected("groupsort", 5, (10,), (0.1307, 1.0))).model.config == SMALL


@pytest.mark.parametrize("expected, message", [
    (Expected(activation="relu"), "trained with activation groupsort, not relu"),
    (Expected(group_size=2), "trained with group_size 5, not 2"),
    (Expected(hidden=(20,)), "trained with hidden (10,), not (20,)"),
    (Expected(normalisation=(0.0, 1.0)), "trained with normalisation (0.1307, 1.0), not (0.0, 1.0)"),
])
def test_a_checkpoint_that_contradicts_what_is_asked_is_refused(tmp_path, expected, message):
    save_checkpoint(tmp_path / "m.p", small_model(), {})
    with pytest.raises(CheckpointError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_checkpoint(tmp_path / "m.p", expected)


def test_the_original_demos_state_dict_needs_its_activation_and_group_size(tmp_path):
    config = MLPConfig(in_features=784, hidden=(30,), out_features=10, group_size=10)
    model = small_model(config=config)
    state = model.state_dict()
    torch.save({"inlayer.weight": state["layers.0.weight"], "inlayer.bias": state["layers.0.bias"],
                "outlayer.weight": state["layers.2.weight"], "outlayer.bias": state["layers.2.bias"]},
               tmp_path / "original.p")
    assert set(ORIGINAL_KEYS) == {"inlayer.weight", "inlayer.bias", "outlayer.weight", "outlayer.bias"}
    for expected in (Expected(), Expected(group_size=10), Expected(activation="groupsort")):
        with pytest.raises(CheckpointError, match="records no activation: give --activation relu, or"):
            load_checkpoint(tmp_path / "original.p", expected)
    loaded = load_checkpoint(tmp_path / "original.p", Expected(activation="groupsort", group_size=10))
    assert loaded.original and loaded.metrics == {} and loaded.model.config == config
    x = torch.rand(5, 784)
    assert torch.equal(loaded.model(x), model(x))
    relu = load_checkpoint(tmp_path / "original.p", Expected(activation="relu"))
    assert relu.model.config.activation == "relu" and not torch.equal(relu.model(x), model(x))
    with pytest.raises(CheckpointError, match=r"has hidden width 30, not \(500,\)"):
        load_checkpoint(tmp_path / "original.p", Expected(activation="relu", hidden=(500,)))
    with pytest.raises(CheckpointError, match="group size 7 does not divide the layer width 30"):
        load_checkpoint(tmp_path / "original.p", Expected(activation="groupsort", group_size=7))


def test_non_finite_weights_and_incomplete_configs_are_refused(tmp_path):
    model = small_model()
    with torch.no_grad():
        model.affine_layers()[1].bias[0] = float("nan")
    save_checkpoint(tmp_path / "nan.p", model, {})
    with pytest.raises(CheckpointError, match="non-finite values .* in layers.2.bias"):
        load_checkpoint(tmp_path / "nan.p")
    payload = torch.load(tmp_path / "nan.p", weights_only=True)
    del payload["config"]["std"]
    torch.save(payload, tmp_path / "incomplete.p")
    with pytest.raises(CheckpointError, match="incomplete checkpoint: it lacks std"):
        load_checkpoint(tmp_path / "incomplete.p")


def training_state(recipe: Recipe, epoch: int = 1) -> TrainingState:
    model = small_model()
    optimizer = torch.optim.Adam(model.parameters())
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=0.9)
    return TrainingState(recipe.to_dict(), epoch, [1.0] * epoch, model.state_dict(), optimizer.state_dict(),
                         scheduler.state_dict(), torch.Generator().manual_seed(3).get_state())


def test_a_training_state_resumes_its_own_recipe_with_more_epochs_or_another_method(tmp_path):
    recipe = Recipe(epochs=2, hidden=(10,))
    path = checkpoints.training_state_path(tmp_path / "m.p")
    assert path == tmp_path / "m.last.p"
    save_training_state(path, training_state(recipe))
    loaded = load_training_state(path, recipe.to_dict(), "cpu")
    assert loaded.epoch == 1 and loaded.epoch_seconds == [1.0] and loaded.recipe == recipe.to_dict()
    assert torch.equal(loaded.generator, torch.Generator().manual_seed(3).get_state())
    for changed in (Recipe(epochs=5, hidden=(10,)), Recipe(epochs=2, hidden=(10,), method="margin")):
        assert load_training_state(path, changed.to_dict(), "cpu").epoch == 1


@pytest.mark.parametrize("change, message", [
    ({"lr": 0.01}, "it was trained with lr 0.001 (now 0.01)"),
    ({"hidden": (20,)}, "it was trained with hidden [10] (now [20])"),
    ({"norm": "l2", "seed": 4}, "it was trained with seed 0 (now 4), norm linf (now l2)"),
])
def test_a_training_state_refuses_another_recipe(tmp_path, change, message):
    path = tmp_path / "m.last.p"
    save_training_state(path, training_state(Recipe(hidden=(10,))))
    other = Recipe(**{**Recipe(hidden=(10,)).to_dict(), **change})
    with pytest.raises(CheckpointError) as error:
        load_training_state(path, other.to_dict(), "cpu")
    assert message in str(error.value)


def test_a_training_state_saved_before_an_entry_existed_resumes_at_its_default(tmp_path):
    """A state lacking batch_norm and precision (saved before they existed) ran with their defaults."""
    recipe = Recipe(hidden=(10,))
    state = training_state(recipe)
    for name in ("batch_norm", "precision"):
        del state.recipe[name]
    path = tmp_path / "m.last.p"
    save_training_state(path, state)
    assert load_training_state(path, recipe.to_dict(), "cpu", Recipe().to_dict()).epoch == 1
    with pytest.raises(CheckpointError, match=re.escape("it was trained with batch_norm False (now True)")):
        load_training_state(path, Recipe(hidden=(10,), batch_norm=True).to_dict(), "cpu", Recipe().to_dict())
    with pytest.raises(CheckpointError, match=re.escape("batch_norm None (now False)")):  # no defaults given
        load_training_state(path, recipe.to_dict(), "cpu")


def test_only_a_training_state_of_this_version_resumes(tmp_path):
    with pytest.raises(CheckpointError, match="nothing to resume: .* does not exist"):
        load_training_state(tmp_path / "absent.last.p", Recipe().to_dict(), "cpu")
    old = {"format": "lipschitz-mlp-training/1", "epoch": 1}
    torch.save(old, tmp_path / "old.last.p")
    with pytest.raises(CheckpointError, match="not a training state of this version"):
        load_training_state(tmp_path / "old.last.p", Recipe().to_dict(), "cpu")
    save_checkpoint(tmp_path / "m.p", small_model(), {})
    with pytest.raises(CheckpointError, match="not a training state of this version"):
        load_training_state(tmp_path / "m.p", Recipe().to_dict(), "cpu")
    assert checkpoints.TRAINING_STATE_FORMAT == "lipschitz-mlp-training/2"


def test_paths_beside_a_checkpoint():
    assert checkpoints.metrics_path(Path("out/m.p")) == Path("out/m.json")
    assert checkpoints.training_state_path(Path("out/m.p")) == Path("out/m.last.p")
