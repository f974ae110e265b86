"""Mutation check of the bound rules: every unsound change to a rule must fail the test suite.

    python scripts/mutants.py            # every mutant; exit 1 if any survives
    python scripts/mutants.py --list     # the mutants, without running them

Each mutant makes one rule unsound: a bound, threshold, spread or radius 2 %
too small (or too large, for a radius), a tie certified, a group maximum
dropped. It is applied to a copy of the tracked files, and the unit tests of the
certificate modules run on it (stopping at the first failure); a mutant that
survives them gets the whole suite. Nothing in the working tree is changed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FAST_TESTS = ["tests/test_operators.py", "tests/test_milp.py", "tests/test_ibp.py", "tests/test_groupsort.py",
              "tests/test_rounding.py", "tests/test_lipschitz.py", "tests/test_overflow.py", "tests/test_certificates.py",
              "tests/test_models.py", "tests/test_wasserstein.py", "tests/test_convolution.py",
              "tests/test_export.py"]

# (file, exact original text, unsound replacement, what the mutant breaks)
MUTANTS = [
    # The norm math behind the Linear operator's slope rule (lipschitz.py).
    ("lipschitz.py", "chained = rows.abs() @ unit", "chained = 0.98 * (rows.abs() @ unit)",
     "per-unit bound of a row (the L-inf linear rule |W| b)"),
    ("lipschitz.py", "torch.minimum(chained, dual_norm(rows, norm) * whole)",
     "torch.minimum(chained, 0.98 * dual_norm(rows, norm) * whole)", "Hoelder bound of a row"),
    ("lipschitz.py", "torch.minimum(operator_norm(weight, norm) * whole, by_units)",
     "torch.minimum(0.98 * operator_norm(weight, norm) * whole, by_units)", "whole-vector bound, operator norm"),
    ("lipschitz.py", "by_units = vector_norm(out_unit, norm)", "by_units = 0.98 * vector_norm(out_unit, norm)",
     "whole-vector bound, from the units"),
    ("lipschitz.py", "return torch.linalg.matrix_norm(weight, ord=_OPERATOR_ORD[norm])",
     "return 0.98 * torch.linalg.matrix_norm(weight, ord=_OPERATOR_ORD[norm])", "operator norm"),
    ("lipschitz.py", "return torch.linalg.vector_norm(rows, ord=_DUAL_ORD[norm], dim=-1)",
     "return 0.98 * torch.linalg.vector_norm(rows, ord=_DUAL_ORD[norm], dim=-1)", "dual norm"),
    ("lipschitz.py", '"l2": math.sqrt(2.0)', '"l2": 0.98 * math.sqrt(2.0)', "the sqrt 2 of a gap in l2"),
    # The normalisation operator (operators.py): slope, interval, rounding, encoding.
    ("operators.py", "scale = 1 / self.std", "scale = 0.98 / self.std", "Normalise: slope rule, 1/std"),
    ("operators.py", '''both ends map."""
        return self(lower), self(upper)''', '''both ends map."""
        return self(lower) + 0.02 * (self(upper) - self(lower)), self(upper)''', "Normalise: interval's lower end"),
    ("operators.py", "errors = torch.stack([rounding.normalisation_error(distance, self.mean, self.std, runs_in),",
     "errors = torch.stack([0 * rounding.normalisation_error(distance, self.mean, self.std, runs_in),",
     "Normalise: rounding rule without the float32 rounding"),
    ("operators.py", "return Wires(wires, self.mean, self.std, pending=True)", "return Wires(wires)",
     "Normalise: encoding that forgets the normalisation"),
    # The Linear operator (operators.py): interval, ball cut, rounding, differences, cut, encoding.
    ("operators.py", "middle, spread = self.affine(center), self.abs_apply(half_width)",
     "middle, spread = self.affine(center), 0.98 * self.abs_apply(half_width)",
     "Affine: interval spread (Linear, convolution, the gaps')"),
    ("operators.py", "spread = ball.radii(center)[:, None] * self.row_norms(ball.norm)",
     "spread = 0.98 * ball.radii(center)[:, None] * self.row_norms(ball.norm)",
     "Affine: range over the p-ball (Linear, convolution)"),
    ("operators.py", "upper = torch.maximum(upper, lower)  # two nearly equal ranges", "pass  # two nearly equal ranges",
     "Linear: intervals that invert"),
    ("operators.py", "return rounding.linear_error(self, magnitude, error, dtype, extra_roundings, extra), None",
     "return rounding.linear_error(self, magnitude, 0 * error, dtype, extra_roundings, extra), None",
     "Affine: rounding rule that drops the error carried in"),
    ("operators.py", "bound = rows.interval(box.lower, box.upper)[1]",
     "bound = rows.interval(box.lower + 0.02 * (box.upper - box.lower), box.upper)[1]",
     "Linear: bounds of the differences within a group, from a box 2 % too small"),
    ("operators.py", "width = (error + reach) * (1 + 4 * u)", "width = 0.98 * (error + reach) * (1 + 4 * u)",
     "a deeper box cut 2 % inside the units' Lipschitz reach"),
    ("operators.py", "return weight / std, bias - weight.sum(axis=1) * mean / std",
     "return weight / std, bias - 0.98 * weight.sum(axis=1) * mean / std",
     "Affine: encoding (and the Linear ONNX export) with the normalisation mis-folded"),
    ("operators.py", "lower, upper = after.lower[0].numpy() - slack, after.upper[0].numpy() + slack",
     "lower, upper = after.lower[0].numpy() - slack, after.upper[0].numpy() - 0.02 * (after.upper[0] - "
     "after.lower[0]).numpy()", "Affine: encoding whose units' bounds are 2 % too tight"),
    # The activations (groupsort.py): slope, interval, rounding, encoding.
    ("groupsort.py", "return groups.amax(dim=-1, keepdim=True).expand_as(groups).flatten(-2)",
     "return bound", "GroupSort: slope and rounding without the group maximum"),
    ("groupsort.py", "return self.group_maximum(errors), error_norm", "return errors, error_norm",
     "GroupSort: rounding rule without the group maximum"),
    ("groupsort.py", '''so lower <= a <= upper gives sort(lower)_k <= sort(a)_k <= sort(upper)_k."""
        return self(lower), self(upper)''', '''so lower <= a <= upper gives sort(lower)_k <= sort(a)_k <= sort(upper)_k."""
        return self(lower) + 0.02 * (self(upper) - self(lower)), self(upper)''', "GroupSort: interval's lower end"),
    ("groupsort.py", "bound[i], bound[j] = np.minimum(p[0], p[1]), np.maximum(p[0], p[1])",
     "bound[i], bound[j] = np.maximum(p[0], p[1]), np.minimum(p[0], p[1])",
     "GroupSort: encoding's difference bounds, min and max rows swapped"),
    ("groupsort.py", "bound[:, i], bound[:, j] = np.maximum(q[:, 0], q[:, 1]), np.minimum(q[:, 0], q[:, 1])",
     "bound[:, i], bound[:, j] = np.minimum(q[:, 0], q[:, 1]), np.maximum(q[:, 0], q[:, 1])",
     "GroupSort: encoding's difference bounds, min and max columns swapped"),
    ("groupsort.py", '''per unit, hence also in every p-norm of the vector."""
        return slope''', '''per unit, hence also in every p-norm of the vector."""
        return Slope(0.98 * slope.unit, slope.whole)''', "ReLU: slope rule 2 % too small"),
    ("groupsort.py", '''relu(lower) <= relu(a) <= relu(upper)."""
        return self(lower), self(upper)''', '''relu(lower) <= relu(a) <= relu(upper)."""
        return self(lower) + 0.02 * (self(upper) - self(lower)), self(upper)''', "ReLU: interval's lower end"),
    ("groupsort.py", "return errors.masked_fill(off, 0.0), error_norm",
     "return 0.98 * errors.masked_fill(off, 0.0), error_norm", "ReLU: rounding rule 2 % too small"),
    ("groupsort.py", "elif wire.upper <= 0:", "elif wire.upper <= 0.1:", "ReLU: encoding that fixes live units at 0"),
    # The IBP walk, the certificate rules and the allowance.
    ("lipschitz.py", "radius = self.radii(x)[:, None]", "radius = 0.98 * self.radii(x)[:, None]", "IBP's input box"),
    ("certificates.py", "shared = 2 * bounds.per_logit.max()", "shared = 1.96 * bounds.per_logit.max()",
     "global threshold 2 max L"),
    ("certificates.py", "return torch.minimum(shared, lipschitz.difference_coefficient(bounds.norm) * bounds.output)",
     "return torch.minimum(shared, 0.98 * lipschitz.difference_coefficient(bounds.norm) * bounds.output)",
     "global threshold's output bound in l2 and l1"),
    ("certificates.py", "torch.minimum(bounds.per_logit[:, None] + bounds.per_logit[None, :], shared)",
     "torch.minimum(0.98 * (bounds.per_logit[:, None] + bounds.per_logit[None, :]), shared)", "pairwise threshold"),
    ("certificates.py", "torch.minimum(bounds.per_gap, pairwise)", "torch.minimum(0.98 * bounds.per_gap, pairwise)",
     "margin threshold"),
    ("certificates.py", "beaten = (label_gaps > drop) | ~others", "beaten = (label_gaps >= drop) | ~others",
     "a tie certified (>= for >)"),
    ("certificates.py", "usable / (rows * scale),", "1.02 * usable / (rows * scale),",
     "Lipschitz radius 2 % too large"),
    ("certificates.py", "return ((rows > 0) | ~others).all(dim=1)", "return ((rows >= 0) | ~others).all(dim=1)",
     "IBP certifies a zero lower bound"),
    ("certificates.py", "low, high = torch.where(ok, middle, low), torch.where(ok, high, middle)\n    return low",
     "low, high = torch.where(ok, middle, low), torch.where(ok, high, middle)\n    return high",
     "IBP radius: the bisection's upper end"),
    # Sound in floating point: every allowance for rounding is needed.
    ("rounding.py", "count = layer.fan_in + 1 + extra_roundings", "count = 2 + extra_roundings",
     "a dot product's rounding bounded as if it had two terms"),
    ("allowance.py", "lost = last.gap_rounding(box, runs_in) + own[:, :, None] + own[:, None, :]",
     "lost = 0 * last.gap_rounding(box, runs_in) + own[:, :, None] + own[:, None, :]",
     "the Lipschitz methods without the float32 allowance"),
    ("allowance.py", "return self.lower - self.allowance", "return self.lower - 0 * self.allowance",
     "IBP without the float32 allowance"),
    ("lipschitz.py", "return (top / bottom).sqrt() * (1 + 4 * rounding.unit_roundoff(f64))",
     "return (top / bottom).sqrt() * (1 - 1e-9)", "spectral norm a relative 1e-9 below its upper bound"),
    ("certificates.py", "if float(written) > value:", "if False:", "radii rounded to nearest, not down"),
    # No certificate without a finite network: overflow in each operator, non-finite logits at x, the verifier.
    ("rounding.py", "return ~(bound * (1 + 2 * unit_roundoff(dtype)) < torch.finfo(dtype).max)",
     "return ~(bound * (1 + 2 * unit_roundoff(dtype)) < 1.02 * torch.finfo(dtype).max)",
     "overflow checked 2 % past float32's largest value"),
    ("operators.py", "return box.overflow | rounding.linear_overflows(self, box.magnitude, dtype)",
     "return box.overflow", "Affine: rounding rule without its overflow check"),
    ("operators.py", "overflow = box.overflow | rounding.overflows(torch.maximum(distance, magnitude), runs_in).any(dim=1)",
     "overflow = box.overflow", "Normalise: rounding rule without its overflow check"),
    ("allowance.py", "return torch.where(overflow.view(-1, *[1] * (allowance.ndim - 1)), torch.inf, allowance)",
     "return allowance", "an allowance that may overflow, not voided"),
    ("measure.py", "return (logits.argmax(dim=1) == labels) & torch.isfinite(logits).all(dim=1)",
     "return logits.argmax(dim=1) == labels", "non-finite logits at x counted clean"),
    ("milp.py", "if allowance.voided(gaps.allowance)[0]:", "if False:",
     "exact verification of a net that may overflow"),
    # Deep nets in L2 and L1: the error vector's L2 norm.
    ("rounding.py", "error_norm[:, None] * layer.row_norms(\"l2\") * grow)",
     "0.98 * error_norm[:, None] * layer.row_norms(\"l2\") * grow)",
     "a unit's carried error 2 % below ||w||_2 times the error vector's L2 norm"),
    ("rounding.py", "out = torch.minimum(out, operator * error_norm +", "out = torch.minimum(out, 0.98 * operator * error_norm +",
     "the error vector's L2 norm 2 % below ||W||_2 times the incoming one"),
    ("ibp.py", "spread = (whole_reach + box.error_norm) * grow", "spread = box.error_norm * grow",
     "the L2 norm of a deep box's values, and their spread, without how far they move over the ball"),
    ("ibp.py", "spread = (whole_reach + box.error_norm) * grow", "spread = (0.98 * whole_reach + box.error_norm) * grow",
     "the L2 norm of a deep box's values, and their spread, with 2 % less of how far they move over the ball"),
    # Convolutions, invertible downsampling and BCOP (convolution.py, bcop.py).
    ("convolution.py", "return self.apply(v, self.weight.abs(), None)", "return self.apply(v, self.weight, None)",
     "Convolution: |W| v without the absolute value (slope, interval spread, rounding)"),
    ("convolution.py", "return self(lower), self(upper)",
     "return self(lower) + 0.02 * (self(upper) - self(lower)), self(upper)", "Downsample: interval's lower end"),
    ("convolution.py", "return self.apply(ones, self.weight.square(), None).sqrt()",
     "return 0.98 * self.apply(ones, self.weight.square(), None).sqrt()",
     "Convolution: L2 row norms 2 % too small (Hoelder bound, ball range, error norm)"),
    ("convolution.py", "return self.weight.abs().sum(dim=(0, 2, 3)).repeat(self.in_features // self.in_channels)",
     "return self.weight.abs().amax(dim=(0, 2, 3)).repeat(self.in_features // self.in_channels)",
     "Convolution: circular column norms from the largest tap, not the sum (L1 operator norm)"),
    ("convolution.py", "return self.bias.repeat(self.out_features // self.out_channels)",
     "return 0 * self.bias.repeat(self.out_features // self.out_channels)",
     "Convolution: rounding rule without the biases"),
    ("convolution.py", "return self.in_channels * self.kernel_size[0] * self.kernel_size[1]",
     "return self.in_channels",
     "Convolution: the rounding of a dot product counted over the channels, not the whole window"),
    ("convolution.py", "return self(errors), error_norm", "return 0.98 * self(errors), error_norm",
     "Downsample: rounding errors 2 % too small"),
    ("convolution.py", "return Slope(self(slope.unit), slope.whole)", "return Slope(self(slope.unit), 0.98 * slope.whole)",
     "Downsample: whole-vector bound 2 % too small"),
    ("bcop.py", "torch.stack([(eye - p) @ q, (eye - p) @ (eye - q)])",
     "torch.stack([(eye - p) @ q, (eye - p) @ (eye + q)])", "BCOP: a block that is not paraunitary"),
    # The certified lower bound of a Wasserstein distance.
    ("wasserstein.py", 'lipschitz = float(model64.certified_logit_bounds("l2").per_logit[0])',
     'lipschitz = 0.98 * float(model64.certified_logit_bounds("l2").per_logit[0])',
     "W1's lower bound divided by a Lipschitz bound 2 % too low"),
    ("wasserstein.py", "numerator = values[0] - values[1] - slack", "numerator = values[0] - values[1]",
     "W1's lower bound without the critic's rounding errors"),
    # ReLU's off units, and the exact program's encodings of convolutional nets and of nets without hidden layers.
    ("groupsort.py", "off = upper < -errors.sum(dim=0) * (1 + 4 * rounding.unit_roundoff(torch.float64))",
     "off = upper < 0", "ReLU: a unit called off in both arithmetics by its upper end alone, without the errors"),
    ("groupsort.py", "off = upper < -errors.sum(dim=0) * (1 + 4 * rounding.unit_roundoff(torch.float64))",
     "off = upper < -errors[0]", "ReLU: a unit called off without the box end's own float64 error"),
    ("convolution.py", "return Wires([wires[k] for k in order], wires.mean, wires.std, wires.pending)",
     "return Wires(list(wires), wires.mean, wires.std, wires.pending)", "Downsample: encoding that does not permute"),
    ("milp.py", "if network.hidden.pending:", "if False:",
     "exact verification of a net without hidden layers, the normalisation not folded into the objective"),
    ("convolution.py", 'name = graph.node("Div", [name, graph.constant("std"',
     'name = graph.node("Mul", [name, graph.constant("std"', "Convolution: ONNX export multiplying by std"),
    ("convolution.py", "perm=[0, 1, 3, 5, 2, 4]", "perm=[0, 1, 3, 5, 4, 2]",
     "Downsample: ONNX export with the two pixels of a row swapped"),
    ("attacks.py", 'APGDStage("dlr-t", runs=32, targets=3, start="vertex", focus=0.05),',
     'APGDStage("dlr-t", runs=8, targets=1, start="vertex", focus=0.05),',
     "APGD: the focused targeted runs on the likeliest rival alone, as before the L2 needle digits"),
    ("rounding.py", "torch.backends.cudnn.flags(enabled=False, allow_tf32=False)",
     "torch.backends.cudnn.flags(enabled=True, allow_tf32=True)",
     "exact_arithmetic: certificates convolve with cuDNN on (Winograd, FFT, TF32 on a GPU)"),
    ("milp.py", "@torch.no_grad()\n@rounding.exact_arithmetic()\ndef verify(", "@torch.no_grad()\ndef verify(",
     "exact/lp verification without exact_arithmetic (cuDNN on for its convolutions)"),
    ("ibp.py", "len(model.affine_layers()) > 1  # a hidden layer", "len(model.affine_layers()) > 2  # a hidden layer",
     "IBP: the error and value norms carried from two hidden layers only, as before 2026-12-04"),
    ("rounding.py", "total = (layer.abs_apply(torch.maximum(low.abs(), high.abs())) + reach + bias) * grow * grow",
     "total = (layer.abs_apply(torch.maximum(low.abs(), high.abs())) + bias) * grow * grow",
     "rounding: the new rounding bounded from the input's value at x without its spread over the ball"),
    ("operators.py", "rounding.carried_error(self.pairs(), box.errors[0], box.error_norm).unflatten(1, (out, out))",
     "rounding.carried_error(self.pairs(), box.errors[0], box.error_norm).unflatten(1, (out, out)) / 2**0.5",
     "gap_rounding: the carried error of a gap taken through one row's norm, not the rows' difference's"),
    ("rounding.py", "(count - 1) * u * (1 + u) * (side + gamma(count, dtype) * total)",
     "(count - 1) * u * (1 + u) * (side / 2 + gamma(count, dtype) * total)",
     "sum_error: each addition's rounding taken from half the larger side"),
    ("rounding.py", "top, bottom = high.clamp_min(0), low.clamp_max(0)", "top, bottom = high, low",
     "fresh_error_within: the larger side from h(x)'s interval, not widened to hold 0 (the sum, not its sides)"),
    ("rounding.py", "side = (centre + layer.abs_apply((top - bottom) / 2) + bias / 2 + reach) * grow * grow",
     "side = (centre + layer.abs_apply((top - bottom) / 2) + bias / 2) * grow * grow",
     "fresh_error_within: the larger side without the spread's reach over the ball"),
    ("allowance.py", "torch.minimum(own, last.box_rounding(box, runs_in)[0])",
     "torch.maximum(own, last.box_rounding(box, runs_in)[0])",
     "own_error: the float64 pass's error from the walk's own interval errors even where the network's is smaller"),
    ("groupsort.py", "(i, i ^ step) if i & block == 0 else (i ^ step, i)", "(i, i ^ step)",
     "bitonic_stages: every compare-exchange ascending (the bitonic sequences are never formed)"),
    ("orthonormal.py", "            position[low], position[high] = 2 * t, 2 * t + 1  # MaxMin sorts each pair ascending\n",
     "",
     "start_as_sorting_network_: the wires' positions not followed from stage to stage"),
    ("milp.py", "                k = queue.pop() if queue else None", "                k = queue.popleft() if queue else None",
     "pooled: this process takes its tasks from the front, as the spawned ones do"),
    ("milp.py", "        solver.deleteRows(1, np.array([solver.getNumRow() - 1], dtype=np.int32))  # resets the solver's info\n",
     "", "Gap.search: the cut-off row of one rival left in the program for the next"),
    ("milp.py", "return Gap(columns, (weight[label] - weight[rival])[units], float(bias[label] - bias[rival]))",
     "return Gap(columns, (weight[label] - weight[rival])[units], float(bias[label]))",
     "Gap.of: the gap without the rival's bias"),
    ("milp.py", "        stop()\n        yield from arrived(wait=False)\n        raise", "        stop()\n        raise",
     "pooled: the verdicts the spawned processes had finished are lost when this process is interrupted"),
    ("milp.py", "        for position, verdict in chain(settled.items(), arriving):",
     "        for position, verdict in [*settled.items(), *arriving]:",
     "verify_split: the pool's generator drained whole before the first verdict is kept (an interrupted run keeps none)"),
    ("milp.py", "future.add_done_callback(lambda done: (finished.put((k, done)), hand_out()))",
     "future.add_done_callback(lambda done: finished.put((k, done)))",
     "pooled: a spawned process is handed its first task only"),
    # The tightened program (program.py's bound, its use by the sort and by ReLU).
    ("program.py", "return -proved + MARGIN if math.isfinite(proved) else math.inf",
     "return -proved - 0.02 if math.isfinite(proved) else math.inf", "Program.bound: 0.02 below HiGHS's bound"),
    ("groupsort.py", "bound[i, j] = min(bound[i, j], program.bound(wires[i], wires[j]))",
     "bound[i, j] = min(bound[i, j], program.bound(wires[j], wires[i]))",
     "sort: a comparison's tightened bound taken the wrong way round"),
    ("groupsort.py", "upper = min(wire.upper, program.bound(wire, zero))",
     "upper = min(wire.upper, 0.98 * program.bound(wire, zero))", "ReLU encoding: tightened upper end 2 % too low"),
    ("groupsort.py", "lower = max(wire.lower, -program.bound(zero, wire))",
     "lower = max(wire.lower, -0.98 * program.bound(zero, wire))", "ReLU encoding: tightened lower end 2 % too high"),
    ("program.py", 'solver.setOptionValue("time_limit", solver.getRunTime() + seconds)',
     'solver.setOptionValue("time_limit", seconds)',
     "limit_lp_time: an LP's limit not started from the instance's run time (a later rival's relaxation cut short)"),
    # The relaxation's bound from its row duals (program.py's dual_bound, its use by milp.verify).
    ("program.py", "return float(total - 2 * error - 2 * rounding.unit_roundoff(torch.float64) * abs(total))",
     "return float(total)", "Program.dual_bound: without its rounding allowance"),
    ("program.py", "side = np.where(y > 0, np.array(self.row_lower), np.where(y < 0, np.array(self.row_upper), 0.0))",
     "side = np.where(y > 0, np.array(self.row_upper), np.where(y < 0, np.array(self.row_lower), 0.0))",
     "Program.dual_bound: each multiplier's row bound taken on the wrong side"),
    ("program.py", "reach = np.where(d > moved, np.abs(lower), np.where(d < -moved, np.abs(upper),",
     "reach = np.where(d > moved, np.abs(upper), np.where(d < -moved, np.abs(lower),",
     "Program.dual_bound: a reduced cost's rounding error weighed by the column's other end"),
    ("milp.py", "if gap.proved(network.program, relaxation) > threshold:",
     "if gap.proved(network.program, relaxation) > threshold - 0.05:",
     "verify: the relaxation's bound 0.05 too high"),
    ("milp.py", "max(info.mip_node_count, 0), info.simplex_iteration_count)",
     "max(solver.getInfo().mip_node_count, 0), solver.getInfo().simplex_iteration_count)",
     "Gap.search: its nodes and iterations read after the cut-off row's removal reset them"),
]


def copy_tree(target: Path) -> None:
    """The tracked and untracked-but-not-ignored files of the repository, copied under `target`, with ../shared
    (MNIST and the original demo's checkpoints) linked beside it as it lies beside the repository."""
    shared = REPO.parent / "shared"
    if shared.is_dir():
        target.parent.mkdir(parents=True, exist_ok=True)
        (target.parent / "shared").symlink_to(shared.resolve())
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, text=True, check=True).stdout.split("\n")
    for name in filter(None, listed):
        source = REPO / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)


def killed(tree: Path, tests: list[str], in_order: bool = False) -> bool:
    """True when pytest fails on the mutated tree. `in_order`: one process, the files in the order given (the
    likeliest killers first, so -x stops soon), instead of pytest-xdist's workers on every core."""
    env = {**os.environ, "MNIST_ROOT": os.environ.get("MNIST_ROOT", str(REPO.parent / "shared" / "mnist"))}
    run = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
                          *(["-n", "0"] if in_order else []), *tests],
                         cwd=tree, capture_output=True, text=True, env=env)
    return run.returncode != 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--list", action="store_true", help="list the mutants and exit")
    parser.add_argument("--only", type=int, nargs="+", metavar="N", help="run only these mutants (numbers of --list)")
    parser.add_argument("--no-baseline", action="store_true",
                        help="skip the run of the unit tests on the unmutated tree (when the suite has just passed)")
    args = parser.parse_args()
    if not args.list and not args.no_baseline:
        with tempfile.TemporaryDirectory() as folder:
            copy_tree(Path(folder) / "repo")
            if killed(Path(folder) / "repo", FAST_TESTS):
                sys.exit("the unit tests fail on the unmutated tree: fix them before judging mutants")
    survivors = 0
    chosen = [(n, m) for n, m in enumerate(MUTANTS, 1) if args.only is None or n in args.only]
    for number, (file, original, mutant, what) in chosen:
        if args.list:
            print(f"{number:2d} {file}: {what}")
            continue
        with tempfile.TemporaryDirectory() as folder:
            tree = Path(folder) / "repo"
            copy_tree(tree)
            text = (tree / file).read_text()
            if text.count(original) != 1:
                sys.exit(f"mutant {number} ({what}): its original text is not found exactly once in {file}")
            (tree / file).write_text(text.replace(original, mutant))
            own = [t for t in dict.fromkeys((f"tests/test_{Path(file).stem}.py", "tests/test_operators.py"))
                   if t in FAST_TESTS]
            fast = [*own, *(t for t in FAST_TESTS if t not in own)]  # the likeliest killers first
            verdict = "killed by the unit tests" if killed(tree, fast, in_order=True) else (
                "killed by the whole suite" if killed(tree, ["tests"]) else "SURVIVED")
        survivors += verdict == "SURVIVED"
        print(f"{number:2d} {file}: {what}: {verdict}", flush=True)
    if not args.list:
        print(f"{len(chosen) - survivors} of {len(chosen)} mutants killed")
        sys.exit(1 if survivors else 0)


if __name__ == "__main__":
    main()
