"""scripts/probe_relaxation.py's ideal cuts are valid inequalities: each holds wherever the network is, so the
relaxation's minimum it reports after them is still a lower bound of the gap; its probing fixes binaries only to
values they take; scripts/probe_lp_solvers.py's two solvers prove the same bound; scripts/probe_group_hulls.py's
bound lies between the program's relaxation and the gap's true minimum."""

from __future__ import annotations

import importlib.util
import json
import sys

import highspy
import numpy as np
import pytest
import torch

import allowance
import milp
from conftest import REPO
from lipschitz import Ball
from mnist_data import PIXEL_RANGE
from models import LipschitzMLP, MLPConfig

sys.path.insert(0, str(REPO / "scripts"))
spec = importlib.util.spec_from_file_location("probe_relaxation", REPO / "scripts" / "probe_relaxation.py")
probe = importlib.util.module_from_spec(spec)
spec.loader.exec_module(probe)
spec = importlib.util.spec_from_file_location("probe_group_hulls", REPO / "scripts" / "probe_group_hulls.py")
hulls = importlib.util.module_from_spec(spec)
spec.loader.exec_module(hulls)


class Recorder:
    """A HiGHS instance that keeps the rows added to it."""

    def __init__(self, solver) -> None:
        self.solver, self.rows = solver, []

    def addRow(self, lower, upper, count, index, value):  # noqa: N802  (HiGHS's name)
        self.rows.append((upper, np.array(index), np.array(value)))
        return self.solver.addRow(lower, upper, count, index, value)

    def __getattr__(self, name):
        return getattr(self.solver, name)


@torch.no_grad()
def test_each_ideal_cut_holds_at_every_point_of_the_network():
    """On small GroupSort nets over a wide L-inf ball, every cut that the probe adds holds at the network's own
    values (t the maximum, d whether p is the larger) of the ball's corners and of points inside it, and the
    cuts raise the relaxation's minimum no higher than the true minimum that the points reach."""
    added = 0
    for seed in range(12):
        torch.manual_seed(seed)
        config = MLPConfig(in_features=6, hidden=(8,), out_features=3, activation="groupsort", group_size=4,
                           mean=0.2, std=0.5)
        model = LipschitzMLP(config).double().eval()
        x = torch.rand(1, 6, dtype=torch.float64)
        ball = Ball("linf", 0.4, PIXEL_RANGE)
        gaps = allowance.certified_gap_bounds(model, x, ball, apart=True)
        network, groups, exchanges = probe.encode_with_groups(model, x, ball, gaps.boxes)
        gap = milp.Gap.of(network, model, 0, 1)
        solver, _, solution = probe.relaxation(network, gap, 60.0)
        recorder = Recorder(solver)
        first_layer = {w.column for ins, _ in groups for w in ins}
        cuts = probe.ideal_cuts(recorder, network, exchanges, first_layer, solution, 60.0)
        added += cuts["cuts"]
        lower, upper = (end[0].numpy() for end in ball.box(x))
        pixels = np.array([w.column for w in network.inputs])
        generator = np.random.default_rng(seed)
        points = np.concatenate([np.where(generator.random((200, 6)) < 0.5, lower, upper),
                                 lower + generator.random((200, 6)) * (upper - lower)])
        true_gaps = model(torch.from_numpy(points)).numpy()
        assert cuts["relaxation"] <= (true_gaps[:, 0] - true_gaps[:, 1]).min() + 1e-9
        by_max = {exchange.t: exchange for exchange in exchanges}
        for bound, index, value in recorder.rows:
            exchange = by_max[int(index[0])]
            p, q = (probe.affine(network.program, wire.column, pixels) for wire in (exchange.p, exchange.q))
            for point in points:
                first, second = p[0] @ point + p[1], q[0] @ point + q[1]
                values = dict(zip(pixels.tolist(), point.tolist()))
                values |= {exchange.t: max(first, second), exchange.q.column: second,
                           exchange.d: float(first >= second)}
                assert sum(v * values[int(c)] for c, v in zip(index, value)) <= bound + 1e-9 * (1 + abs(bound))
    assert added > 0  # the cuts were there to check


@torch.no_grad()
def test_each_binary_that_probing_fixes_takes_that_value_wherever_the_gap_is_within_the_threshold():
    """On small GroupSort nets of two hidden layers over a wide L-inf ball, with a threshold that one in twenty of
    the sampled points' gaps pass: the program, with the binaries that probing fixed at their values and its inputs fixed at any sampled
    point whose gap is within the threshold, stays feasible (the network's own values at that point satisfy it)."""
    fixed_in_all = checked = 0
    for seed in range(8):
        torch.manual_seed(seed)
        config = MLPConfig(in_features=6, hidden=(12, 8), out_features=3, activation="groupsort", group_size=4,
                           mean=0.2, std=0.5)
        model = LipschitzMLP(config).double().eval()
        x = torch.rand(1, 6, dtype=torch.float64)
        ball = Ball("linf", 0.3, PIXEL_RANGE)
        gaps = allowance.certified_gap_bounds(model, x, ball, apart=True)
        network = milp.encode(model, x, ball, gaps.boxes)
        gap = milp.Gap.of(network, model, 0, 1)
        lower, upper = (end[0].numpy() for end in ball.box(x))
        generator = np.random.default_rng(seed)
        points = np.concatenate([np.where(generator.random((200, 6)) < 0.5, lower, upper),
                                 lower + generator.random((200, 6)) * (upper - lower)])
        logits = model(torch.from_numpy(points)).numpy()
        true_gaps = logits[:, 0] - logits[:, 1]
        threshold = float(np.quantile(true_gaps, 0.05))
        fixed, summary = probe.probing(network.program, gap, threshold, None, 60.0)
        assert not summary["settled"] and summary["fixed"] == len(fixed)
        fixed_in_all += len(fixed)
        solver = network.program.highs(relax=False)
        for column, value in fixed.items():
            solver.changeColBounds(column, value, value)
        for point in points[true_gaps <= threshold]:
            for wire, value in zip(network.inputs, point):
                solver.changeColBounds(wire.column, value, value)
            solver.run()
            assert solver.getModelStatus() == highspy.HighsModelStatus.kOptimal
            checked += 1
    assert fixed_in_all > 0 and checked > 0  # fixings were there to check, at points within the threshold


@torch.no_grad()
def test_the_group_hulls_bound_lies_between_the_relaxation_and_the_true_minimum():
    """On small nets of one hidden GroupSort layer (two or three groups) over a wide L-inf ball, the column
    generation converges, and its lower bound is at most the gap's true minimum (the program's, solved exactly) and
    at least the minimum of the program's relaxation, whose group rows hold on each group's convex hull; on some
    nets it is strictly above it. A net of another shape is refused in one line."""
    tighter = 0
    for seed in range(10):
        torch.manual_seed(seed)
        config = MLPConfig(in_features=6, hidden=(8 + 4 * (seed % 2),), out_features=3, activation="groupsort",
                           group_size=4, mean=0.2, std=0.5)
        model = LipschitzMLP(config).double().eval()
        x = torch.rand(1, 6, dtype=torch.float64)
        ball = Ball("linf", 0.4, PIXEL_RANGE)
        gaps = allowance.certified_gap_bounds(model, x, ball, apart=True)
        hull = hulls.group_hull(model, x, 0, 1, ball, gaps, 60.0)
        network = milp.encode(model, x, ball, gaps.boxes)
        gap = milp.Gap.of(network, model, 0, 1)
        _, relaxed, _ = probe.relaxation(network, gap, 60.0)
        exact = network.program.highs(relax=False)
        gap.minimise(exact)
        exact.run()
        assert exact.getModelStatus() == highspy.HighsModelStatus.kOptimal
        truth = exact.getObjectiveValue()
        assert hull["master"] - hull["lower"] <= hulls.TOLERANCE and hull["artificial"] <= 1e-9
        assert relaxed - 1e-7 <= hull["lower"] + hulls.TOLERANCE
        assert hull["lower"] <= truth + 1e-7
        tighter += hull["lower"] > relaxed + 1e-4
    assert tighter > 0  # the hulls were tighter somewhere: the bound is not the relaxation's
    relu = LipschitzMLP(MLPConfig(in_features=6, hidden=(8,), out_features=3, activation="relu")).double().eval()
    with pytest.raises(SystemExit, match="one hidden GroupSort layer"):
        hulls.one_hidden_layer(relu)


def test_the_lp_solvers_probe_records_both_solvers_bounds_and_they_agree(trained, mnist_root, run_script, tmp_path):
    """scripts/probe_lp_solvers.py as a user runs it: for every open rival of the digits asked, the dual simplex
    and IPX without crossover both solve the relaxation, each bound proved from the duals is at most HiGHS's
    objective, and the two bounds agree (the same LP); a digit without open rivals records none."""
    checkpoint, _ = trained
    run = run_script("scripts/probe_lp_solvers.py", checkpoint, "--digits", "0,1,2,3,4,5", "--data-dir", mnist_root,
                     "--seconds", "60", "--json", tmp_path / "lp.json")
    assert run.returncode == 0, run.stderr
    record = json.loads((tmp_path / "lp.json").read_text())
    assert [digit["index"] for digit in record["digits"]] == [0, 1, 2, 3, 4, 5]
    rivals = [rival for digit in record["digits"] for rival in digit["rivals"]]
    assert rivals, "no digit with an open rival: pick others"
    for rival in rivals:
        runs = [rival["dual simplex"], rival["IPX, no crossover"]]
        for one in runs:
            assert one["status"] == "Optimal"
            assert one["proved"] <= one["objective"] + 1e-6 * (1 + abs(one["objective"]))
        assert abs(runs[0]["proved"] - runs[1]["proved"]) <= 1e-5 * (1 + abs(runs[0]["proved"]))
    bad = run_script("scripts/probe_lp_solvers.py", checkpoint, "--digits", "0,x", "--json", tmp_path / "no.json")
    assert bad.returncode != 0 and bad.stderr.count("\n") == 1 and not (tmp_path / "no.json").exists()
