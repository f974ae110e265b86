"""GroupSort sorts within groups only; per-unit bounds, whole-vector bounds and intervals pass through GroupSort
and ReLU soundly; ReLU's encoding holds exactly its graph; bad group sizes and activations are refused."""

from __future__ import annotations

import itertools

import highspy
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import lipschitz
from conftest import REL
from errors import ConfigError
from groupsort import GroupSort, ReLU, bitonic_stages, make_activation
from models import LipschitzMLP, MLPConfig
from operators import Slope
from program import Program, Wire, Wires
from nets import norms, seeds

finite = st.floats(-1e3, 1e3, allow_nan=False, width=32)


@st.composite
def grouped_batches(draw):
    group_size = draw(st.integers(1, 6))
    groups = draw(st.integers(1, 5))
    batch = draw(st.integers(1, 4))
    x = draw(arrays(np.float32, (batch, groups * group_size), elements=finite))
    return group_size, x


@given(grouped_batches())
def test_sorts_each_group_ascending_and_never_mixes_groups(case):
    group_size, x = case
    out = GroupSort(group_size)(torch.from_numpy(x)).numpy()
    by_group = x.reshape(len(x), -1, group_size)
    np.testing.assert_array_equal(out, np.sort(by_group, axis=-1).reshape(x.shape))


def test_group_size_two_is_maxmin():
    x = torch.tensor([[3.0, -1.0, 0.5, 2.0, 7.0, 7.0]])
    out = GroupSort(2)(x)
    assert torch.equal(out[:, 0::2], torch.minimum(x[:, 0::2], x[:, 1::2]))
    assert torch.equal(out[:, 1::2], torch.maximum(x[:, 0::2], x[:, 1::2]))


def test_full_width_group_is_fullsort():
    x = torch.randn(3, 12)
    assert torch.equal(GroupSort(12)(x), x.sort(dim=1).values)


@given(grouped_batches(), st.integers(0, 2**31 - 1))
@settings(max_examples=60)
def test_each_sorted_unit_moves_at_most_its_groups_largest_change(case, seed):
    """The theorem behind the slope rule (`group_maximum`), checked unit by unit (in any p-norm: it compares units only)."""
    group_size, x = case
    a = torch.from_numpy(x).double()
    b = a + torch.randn(a.shape, generator=torch.Generator().manual_seed(seed), dtype=a.dtype)
    change = (a - b).abs()
    sort = GroupSort(group_size)
    moved = (sort(a) - sort(b)).abs()
    allowed = sort.group_maximum(change[0]), sort.group_maximum(change[-1])
    assert (moved[0] <= allowed[0]).all() and (moved[-1] <= allowed[1]).all()


def test_bound_through_groupsort_is_the_group_maximum():
    bound = torch.tensor([1.0, 4.0, 2.0, 0.5, 0.25, 3.0])
    expected = torch.tensor([4.0, 4.0, 4.0, 3.0, 3.0, 3.0])
    whole = torch.tensor(2.5)
    for norm in lipschitz.NORMS:
        assert torch.equal(GroupSort(3).slope(Slope(bound, whole), norm, lipschitz.operator_norm).unit, expected)
        assert torch.equal(GroupSort(1).slope(Slope(bound, whole), norm, lipschitz.operator_norm).unit, bound)


def test_bound_through_relu_is_unchanged():
    bound = torch.tensor([1.0, 4.0, 2.0])
    for norm in lipschitz.NORMS:
        assert torch.equal(ReLU().slope(Slope(bound, torch.tensor(2.5)), norm, lipschitz.operator_norm).unit, bound)


def test_group_size_that_does_not_divide_the_width_fails_at_build_time():
    with pytest.raises(ConfigError, match="group size 3 does not divide the layer width 500"):
        LipschitzMLP(MLPConfig(group_size=3))
    with pytest.raises(ConfigError, match="does not divide the layer width 7"):
        LipschitzMLP(MLPConfig(hidden=(10, 7), group_size=5))


@pytest.mark.parametrize("group_size", [0, -2])
def test_non_positive_group_size_is_rejected(group_size):
    with pytest.raises(ConfigError, match="group size must be a positive integer"):
        GroupSort(group_size)


def test_maxmin_and_fullsort_are_groupsort_with_groups_of_two_and_of_the_whole_layer():
    x = torch.randn(3, 12)
    assert torch.equal(make_activation("maxmin", 10, 12)(x), GroupSort(2)(x))
    assert torch.equal(make_activation("fullsort", 10, 12)(x), x.sort(dim=1).values)
    assert make_activation("fullsort", 10, 12).compares == 12
    with pytest.raises(ConfigError, match="group size 2 does not divide the layer width 7"):
        make_activation("maxmin", 10, 7)


def test_unknown_activation_is_rejected():
    with pytest.raises(ConfigError, match="unknown activation 'tanh'"):
        make_activation("tanh", 10, 20)
    with pytest.raises(ConfigError, match="unknown activation 'tanh'"):
        MLPConfig(activation="tanh")


@given(st.integers(1, 6), arrays(np.float64, (2, 12), elements=st.floats(-100, 100)), norms)
@settings(max_examples=80)
def test_sorting_is_a_contraction_in_every_p_norm(group_size, pair, norm):
    """||sort(a) - sort(a')||_p <= ||a - a'||_p: why a whole-vector bound passes GroupSort unchanged."""
    width = 12 - 12 % group_size
    a, b = torch.from_numpy(pair[:, :width])
    sort = GroupSort(group_size)
    moved = lipschitz.vector_norm(sort(a) - sort(b), norm)
    assert moved <= lipschitz.vector_norm(a - b, norm) * (1 + REL) + REL
    for activation in (sort, ReLU()):
        assert activation.slope(Slope(torch.ones(width), torch.tensor(2.5)), norm, lipschitz.operator_norm).whole == 2.5


@given(st.integers(1, 5), st.integers(1, 4), seeds)
@settings(max_examples=60)
def test_intervals_pass_through_activations_soundly(group_size, groups, seed):
    g = torch.Generator().manual_seed(seed)
    centre = torch.randn(1, group_size * groups, generator=g, dtype=torch.float64)
    radius = torch.rand(1, group_size * groups, generator=g, dtype=torch.float64)
    lower, upper = centre - radius, centre + radius
    inside = lower + (upper - lower) * torch.rand(200, group_size * groups, generator=g, dtype=torch.float64)
    for activation in (GroupSort(group_size), ReLU()):
        low, high = activation.interval(lower, upper)
        out = activation(inside)
        assert (low <= out).all() and (out <= high).all()


@pytest.mark.parametrize("lower, upper", [(-1.0, 0.05), (-0.05, 1.0), (-1e-3, 1e-3), (0.2, 1.0), (-1.0, -0.2)])
def test_the_relu_encoding_holds_exactly_the_graph_of_relu(lower, upper):
    """For a pre-activation a fixed anywhere in its bounds, the program's output h can only be relu(a): its
    largest and least value are both relu(a), whether the bounds decide the unit or a binary does."""
    for value in np.linspace(lower, upper, 7):
        program = Program()
        a = program.variable(lower, upper)
        program.row([a], [1.0], value, value)
        (h,) = ReLU().encode(program, Wires([Wire(a, lower, upper)]), None, None)
        if h.column is None:  # the bounds decide the unit: 0, a constant
            assert upper <= 0 and (h.lower, h.upper) == (0.0, 0.0)
            continue
        extremes = []
        for sense in (highspy.ObjSense.kMaximize, highspy.ObjSense.kMinimize):
            solver = program.highs(relax=False)
            solver.changeColCost(h.column, 1.0)
            solver.changeObjectiveSense(sense)
            solver.run()
            extremes.append(solver.getInfo().objective_function_value)
        assert extremes == pytest.approx([max(value, 0.0)] * 2, abs=1e-7), value


@pytest.mark.parametrize("size", [2, 4, 8, 16])
def test_the_bitonic_sorter_pairs_every_wire_once_a_stage_and_sorts_every_zero_one_input(size):
    """Each stage is one MaxMin layer behind a permutation: every wire in exactly one pair. By the 0-1 principle,
    a comparator network that sorts every 0-1 input sorts everything; real inputs are checked too."""
    stages = bitonic_stages(size)
    log = size.bit_length() - 1
    assert len(stages) == log * (log + 1) // 2
    assert all(sorted(wire for pair in pairs for wire in pair) == list(range(size)) for pairs in stages)
    inputs = torch.tensor(list(itertools.product((0.0, 1.0), repeat=size)))
    inputs = torch.cat([inputs, torch.randn(200, size, generator=torch.Generator().manual_seed(size))])
    values = inputs.clone()
    for pairs in stages:
        low, high = (torch.tensor(side) for side in zip(*pairs))
        values[:, low], values[:, high] = torch.minimum(values[:, low], values[:, high]), torch.maximum(
            values[:, low], values[:, high])
    assert torch.equal(values, inputs.sort(dim=1).values)


@pytest.mark.parametrize("size", [0, 1, 3, 12])
def test_a_bitonic_sorter_of_a_width_not_a_power_of_two_is_refused(size):
    with pytest.raises(ConfigError, match="power of two"):
        bitonic_stages(size)
