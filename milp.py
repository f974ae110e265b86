"""Exact verification and its linear relaxation: the network over an L-inf ball as a mixed-integer program on HiGHS.

For an example x with label y and each rival class j, the program minimises
the gap f_y - f_j over every input of the ball (cut to its domain) and every
hidden state the network can reach from it, exactly:

- inputs: one variable per pixel, bounded by the box of the ball;
- an affine layer (Linear, convolution): one variable per unit, equal to its
  affine function of the layer before, bounded by IBP's interval (widened by
  the float64 error bound, so that it holds for the exact network);
- every other operator by its own encoding (`operators.Operator.encode`):
  ReLU's big-M with one binary per unstable unit (Tjeng, Xiao & Tedrake 2019),
  GroupSort's sorting network whose big-M constants are IBP's bounds of the
  differences it compares (`operators.Linear.apart`), carried through the
  network (`groupsort.sort`); a comparison that they decide needs no binary.

`encode` can also tighten a program as it builds it (`program.Program.bound`:
each open comparison or unit bounded by HiGHS's root node on the rows that
define it). On the demo net's hardest digits that decided no comparison and
settled no digit, at minutes of one core a digit (docs/results.md, "Bounds
from each comparison's own program"), so `verify` does not ask for it.

Verdicts, per example:

- *robust* when for every j the program with the extra row
  f_y - f_j <= A_yj + SOLVER_MARGIN is infeasible, A_yj the float32 rounding
  allowance of `allowance.certified_gap_bounds`;
- *counterexample* when the float32 logits at x are not finite or not
  predicted y, or when it finds an input whose float32 rounding, evaluated by
  the float32 network, is not predicted y (re-checked, never taken from the
  solver's objective);
- *timeout* when the time limit ends the search first;
- *undecided* when the best input found has a gap within the margins but does
  not flip the float32 network, or, decided by "overflow", when some float32
  quantity may overflow in the box: the allowance then bounds nothing, and the
  program, which reasons in real arithmetic, cannot call the example robust.

Solver tolerances: HiGHS works in floating point with feasibility and
integrality tolerances, here `program.TOLERANCE` = 1e-9. Their effect on the gap is bounded by the
tolerance times the constraints' coefficients and big-M constants, about 1e-7
on the demo's nets; SOLVER_MARGIN = 1e-4 logit units is kept above it, and
a robust verdict needs the program to be infeasible with that margin. This is
as sound as HiGHS's own arithmetic, which is not independently checked (no
exact rational certificate is produced) for the mixed-integer program.

The linear relaxation (binaries in [0, 1]) is a sound certificate: every
variable keeps its IBP interval, so its minimum of each gap is never below
IBP's, and `lp` certifies an example when IBP or the relaxation proves every
gap above its allowance and margin. The relaxation's bound does not rest on
HiGHS's tolerances: it is weak duality recomputed from HiGHS's row duals,
whatever their accuracy, with its own float64 rounding bounded
(`program.Program.dual_bound`), so HiGHS's interior-point solver may stop
short of a vertex (`RELAXATION_SOLVER`).
"""

from __future__ import annotations

import copy
import math
import multiprocessing
import pickle
import signal
import threading
import time
from collections import deque
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import closing
from dataclasses import dataclass, replace
from itertools import chain
from queue import Empty, SimpleQueue
from typing import Iterator, Sequence

import highspy
import numpy as np
import torch
from tqdm import tqdm

import allowance
import attacks
import measure
import rounding
from attacks import Counterexample
from errors import ConfigError
from lipschitz import Ball
from mnist_data import Split
from models import LipschitzMLP, in_float64
from operators import Box, fold_normalisation, require
from program import Program, Wire, Wires, limit_lp_time

VERDICTS = ("robust", "counterexample", "timeout", "undecided")
HARD_STEPS, HARD_RESTARTS = 100, 200  # best's second attack, on the few examples the cheap methods leave
SOLVER_MARGIN = 1e-4  # logit units, above the effect of HiGHS's 1e-9 tolerances
# The relaxation's LPs: HiGHS's interior-point solver IPX, without the crossover to a vertex, since the bound is
# recomputed from the row duals (`Gap.proved`). On ibp-wide's programs (15,000 to 17,000 columns) the dual simplex
# finished none of six LPs in 60 s, where IPX took 12 to 18 s; on the demo net's it takes 1 to 2 s, the simplex
# 0.5 to 2.5 (docs/results.md, "Every core and many machines", the table of the two LP solvers).
RELAXATION_SOLVER = {"solver": "ipx", "run_crossover": "off"}


@dataclass(frozen=True)
class Network:
    """The program of one example: its HiGHS instance, the input columns and the last hidden layer's wires (the
    pixels, with their normalisation pending, in a net without hidden layers)."""

    program: Program
    inputs: list[Wire]
    hidden: Wires


@torch.no_grad()
def encode(model64: LipschitzMLP, x: torch.Tensor, ball: Ball, boxes: list[Box], deadline: float | None = None
           ) -> Network:
    """The network's float64 copy `model64` over the L-inf ball around one example x (1, d), as a program:
    one variable per pixel, bounded by the box of the ball, then every operator but the last by its own
    encoding. `boxes` is `ibp.propagate` over that ball with rounding errors and the differences that
    GroupSort compares, whose intervals bound the units. With a `deadline` (`time.perf_counter()`) the
    program is tightened until then (`program.Program.bound`), which `verify` does not ask for (the module's
    docstring says why)."""
    if ball.norm != "linf":
        raise ConfigError("exact and lp verification take L-inf balls only: the L2 ball is not linear")
    operators = model64.operators()
    require(operators[:-1], "exact verification", "encode")
    program = Program(deadline=deadline)
    lower, upper = (end[0].numpy() for end in ball.box(x))
    inputs = [Wire(program.variable(float(lo), float(hi)), float(lo), float(hi)) for lo, hi in zip(lower, upper)]
    wires = Wires(inputs)
    for operator, before, after in zip(operators[:-1], boxes[:-1], boxes[1:]):
        wires = operator.encode(program, wires, before, after)
    return Network(program, inputs, wires)


def open_rivals(gaps: allowance.CertifiedGaps, label: int) -> dict[int, float]:
    """The rival classes j whose gap f_label - f_j IBP does not prove above 0 (`gaps` of one example), the
    weakest first, each with the threshold its program must pass: the gap's float32 allowance plus
    SOLVER_MARGIN."""
    lower, lost = gaps.certified_lower()[0, label], gaps.allowance[0, label]
    return {j: float(lost[j]) + SOLVER_MARGIN for j in lower.argsort().tolist() if j != label and lower[j] <= 0}


@dataclass(frozen=True)
class Search:
    """What one search of `Gap.search` ended with: HiGHS's status, its best solution, the lower bound of the gap
    it proved (None before the search's first node), and the work it did: the nodes of its tree that it
    finished, the root among them (0 while it is still at the root), and its simplex iterations."""

    status: highspy.HighsModelStatus
    solution: highspy.HighsSolution
    bound: float | None
    nodes: int
    iterations: int


@dataclass(frozen=True)
class Gap:
    """The gap f_label - f_rival of one example's program as a linear function of its columns: `coefficients`
    on `columns`, plus `offset`."""

    columns: np.ndarray
    coefficients: np.ndarray
    offset: float

    @staticmethod
    def of(network: Network, model64: LipschitzMLP, label: int, rival: int) -> Gap:
        """The gap through the float64 model's last (affine) layer, on the program's last hidden wires; a
        constant-zero wire drops out, a pending normalisation is folded into the weights."""
        last = model64.layers[-1]
        weight, bias = last.weight.detach().numpy(), last.bias.detach().numpy()
        if network.hidden.pending:
            weight, bias = fold_normalisation(weight, bias, network.hidden.mean, network.hidden.std)
        live = [(k, w.column) for k, w in enumerate(network.hidden) if w.column is not None]
        units, columns = (np.array(v, dtype=np.int32) for v in zip(*live)) if live else (np.zeros(0, np.int32),) * 2
        return Gap(columns, (weight[label] - weight[rival])[units], float(bias[label] - bias[rival]))

    def cost(self, total: int) -> np.ndarray:
        """The gap's coefficients on all `total` columns of the program."""
        cost = np.zeros(total)
        cost[self.columns] = self.coefficients
        return cost

    def minimise(self, solver: highspy.Highs) -> None:
        """Make the gap the solver's objective, to be minimised."""
        total = solver.getNumCol()
        solver.changeColsCost(total, np.arange(total, dtype=np.int32), self.cost(total))
        solver.changeObjectiveOffset(self.offset)

    def proved(self, program: Program, solver: highspy.Highs) -> float:
        """A lower bound of the gap over the relaxation of `program`, exact in real arithmetic
        (`program.Program.dual_bound`), from the row duals of the last run of `solver` (its relaxation, the gap its
        objective); -inf when that run left none."""
        solution = solver.getSolution()
        if not solution.dual_valid:
            return -math.inf
        return program.dual_bound(self.cost(len(program.lower)), self.offset, np.array(solution.row_dual))

    def search(self, solver: highspy.Highs, threshold: float, time_limit: float) -> Search:
        """Minimise the gap in the mixed-integer program with the extra row gap <= `threshold` (the cut-off:
        branches whose relaxation is above it are cut at once), stopping at the first input whose gap is below
        -`threshold`; the row is removed again. Infeasible exactly when the gap never comes within the
        threshold."""
        self.minimise(solver)
        solver.addRow(-math.inf, threshold - self.offset, len(self.columns), self.columns, self.coefficients)
        solver.setOptionValue("objective_target", -threshold)
        solver.setOptionValue("time_limit", time_limit)
        solver.run()
        status, solution, info = solver.getModelStatus(), solver.getSolution(), solver.getInfo()
        solver.deleteRows(1, np.array([solver.getNumRow() - 1], dtype=np.int32))  # resets the solver's info
        return Search(status, solution, info.mip_dual_bound if info.mip_node_count >= 0 else None,
                      max(info.mip_node_count, 0), info.simplex_iteration_count)


@dataclass(frozen=True)
class Verdict:
    """One example's verdict, what decided it ("clean": misclassified at x itself, "ibp", "pgd", "lp", "milp"
    or "overflow"), the seconds it took, and the counterexample found."""

    status: str
    decided_by: str
    seconds: float
    counterexample: Counterexample | None = None


@torch.no_grad()
@rounding.exact_arithmetic()
def verify(model: LipschitzMLP, x: torch.Tensor, label: int, ball: Ball, relax: bool = False,
           time_limit: float = 60.0, model64: LipschitzMLP | None = None, index: int = 0) -> Verdict:
    """Verdict for one float32 example x (d,) with `label` (its `index` in the split, for the record): exact,
    or with `relax` the linear relaxation, whose verdicts are only robust or undecided. `model64` is the
    model's float64 copy, made here when not given.

    A rival class j that IBP already proves is skipped; then the relaxation is
    tried on each remaining j, and the mixed-integer program only where it
    fails. The program carries the row f_y - f_j <= threshold, so that branches
    whose relaxation is above it are cut at once; it is infeasible exactly
    when the gap never comes within the threshold, and it stops at the first
    input whose gap is below minus the threshold, which is then checked.
    """
    start = time.perf_counter()

    def elapsed() -> float:
        return time.perf_counter() - start

    model64 = in_float64(model) if model64 is None else model64
    x32 = x.float()[None]
    logits = model(x32)
    if not measure.clean_correct(logits, torch.tensor([label]))[0]:  # wrong, or not finite, at x itself
        predicted = int(logits.argmax(dim=1)) if torch.isfinite(logits).all() else -1
        return Verdict("counterexample", "clean", elapsed(), Counterexample(index, label, x32[0], x32[0], predicted,
                                                                             "clean"))
    x64 = x32.double()
    gaps = allowance.certified_gap_bounds(model64, x64, ball, apart=True)
    if allowance.voided(gaps.allowance)[0]:  # the program reasons in real arithmetic: no robust verdict
        return Verdict("undecided", "overflow", elapsed())
    thresholds = open_rivals(gaps, label)
    if not thresholds:
        return Verdict("robust", "ibp", elapsed())
    network = encode(model64, x64, ball, gaps.boxes)
    relaxation = network.program.highs(relax=True)
    for option, value in RELAXATION_SOLVER.items():
        relaxation.setOptionValue(option, value)
    hard = []
    for rival, threshold in thresholds.items():
        gap = Gap.of(network, model64, label, rival)
        gap.minimise(relaxation)
        limit_lp_time(relaxation, max(time_limit - elapsed(), 1e-3))  # the earlier rivals' LPs ran in it too
        relaxation.run()
        if gap.proved(network.program, relaxation) > threshold:
            continue
        if relaxation.getModelStatus() == highspy.HighsModelStatus.kTimeLimit:
            return Verdict("timeout", "lp", elapsed())
        hard.append(rival)
    if not hard:
        return Verdict("robust", "lp", elapsed())
    if relax:
        return Verdict("undecided", "lp", elapsed())
    box_lower, box_upper = (end[0] for end in ball.box(x64))
    solver = network.program.highs(relax=False)
    for rival in hard:
        if elapsed() >= time_limit:
            return Verdict("timeout", "milp", elapsed())
        gap = Gap.of(network, model64, label, rival)
        searched = gap.search(solver, thresholds[rival], max(time_limit - elapsed(), 1e-3))
        status, solution = searched.status, searched.solution
        if status == highspy.HighsModelStatus.kInfeasible:
            continue  # no input brings the gap within the threshold
        if solution.value_valid:
            values = torch.from_numpy(np.array(solution.col_value)[: len(network.inputs)])
            candidate = attacks.float32_inside(values, box_lower, box_upper)
            flipped = int(model(candidate[None]).argmax(dim=1))
            if flipped != label:
                return Verdict("counterexample", "milp", elapsed(),
                               Counterexample(index, label, x32[0], candidate, flipped, "milp"))
        if status == highspy.HighsModelStatus.kTimeLimit:
            return Verdict("timeout", "milp", elapsed())
        return Verdict("undecided", "milp", elapsed())
    return Verdict("robust", "milp", elapsed())


METHODS = ("lp", "exact", "best")


def verify_split(model: LipschitzMLP, split: Split, ball: Ball, method: str, time_limit: float = 60.0,
                 pgd_steps: int = 50, pgd_restarts: int = 5, seed: int = 0, progress: bool = True,
                 workers: int = 1, indices: Sequence[int] | None = None, attack: str = attacks.ATTACKS[0],
                 into: dict[int, Verdict] | None = None) -> list[Verdict]:
    """Every example's verdict under `method`, in order, with a progress bar (examples done, verdict counts, time
    left). `indices` are the examples' indices in the whole split, for the records (default 0, 1, ...). Each
    verdict is also put in `into`, by position, as it arrives: what a caller keeps when the run is interrupted.

    lp and exact: `verify` on every example (IBP first, inside it). best: the
    cheap methods first, each on the whole split at once: IBP's certificate
    (robust), then `attack` (APGD by default, `attacks.attack`; a
    counterexample, re-checked in float32 inside the exact box), then PGD on
    what is left with HARD_STEPS steps and HARD_RESTARTS restarts, side by
    side (`attacks.pgd`; on the seed-0 demo GroupSort net at L-inf 0.1 it
    breaks a third of the digits that the mixed-integer program cannot settle
    in 60 s), then `verify` on the rest (the relaxation, then the program).

    With `workers` > 1 the `verify` calls run in that many processes (`pooled`: this one and `workers` - 1
    spawned ones), one torch and one HiGHS thread each: every call depends on its example alone, so the
    verdicts are those of one worker (but for a time limit that a busier machine reaches first).
    """
    if method not in METHODS:
        raise ConfigError(f"unknown verification method {method!r}: choose one of {', '.join(METHODS)}")
    if ball.norm != "linf":
        raise ConfigError("exact and lp verification take L-inf balls only: the L2 ball is not linear")
    if workers < 1:
        raise ConfigError(f"workers must be a positive integer, got {workers}")
    require(model.operators()[:-1], "exact verification", "propagate", "rounding", "encode")
    model, split = copy.deepcopy(model).cpu().eval(), split.to("cpu")
    indices = list(range(len(split))) if indices is None else [int(i) for i in indices]
    if len(indices) != len(split):
        raise ConfigError(f"{len(indices)} indices for {len(split)} examples")
    ibp_seconds = 0.0
    proved = torch.zeros(len(split), dtype=torch.bool)
    attacked: dict[int, Verdict] = {}
    if method == "best":
        start = time.perf_counter()
        proved = measure.certify_split(model, split, ball, ("ibp",))["ibp"]
        ibp_seconds = (time.perf_counter() - start) / max(1, len(split))
        spent = ibp_seconds  # per example that went through every stage so far
        passes = ((attack, lambda xs, ys: attacks.attack(attack, model, xs, ys, ball, pgd_steps, pgd_restarts, seed,
                                                         progress)),
                  ("pgd", lambda xs, ys: attacks.pgd(model, xs, ys, ball, HARD_STEPS, HARD_RESTARTS, seed + 1,
                                                     side_by_side=True)))
        for name, attack_on in passes:
            left = (~proved).clone()
            left[list(attacked)] = False
            if not left.any():
                break
            start = time.perf_counter()
            index = left.nonzero().flatten()
            broken, found = attack_on(split.images[index], split.labels[index])
            spent += (time.perf_counter() - start) / len(index)
            subset = Split(split.images[index], split.labels[index])
            for k, found_one in attacks.counterexamples(model, subset, ball, broken, found, name).items():
                position = int(index[k])
                attacked[position] = Verdict("counterexample", name, spent, replace(found_one, index=indices[position]))
    settled = {k: Verdict("robust", "ibp", ibp_seconds) for k in proved.nonzero().flatten().tolist()}
    settled.update(attacked)
    tasks = [(k, split.images[k], int(split.labels[k]), indices[k]) for k in range(len(split)) if k not in settled]
    options = {"ball": ball, "relax": method == "lp", "time_limit": time_limit}
    verdicts: dict[int, Verdict] = {} if into is None else into
    counts = dict.fromkeys(VERDICTS, 0)
    bar = tqdm(total=len(split), disable=not progress, unit="example", desc=method, leave=False)
    arriving = verdicts_of(model, tasks, options, workers)
    with closing(arriving):  # interrupted here: the pool stops at once all the same
        for position, verdict in chain(settled.items(), arriving):
            verdicts[position] = verdict
            counts[verdict.status] += 1
            bar.set_postfix({k: v for k, v in counts.items() if v}, refresh=False)
            bar.update()
    bar.close()
    return [verdicts[k] for k in range(len(split))]


Task = tuple[int, torch.Tensor, int, int]  # (position in the split, image, label, index in the whole split)


def verdicts_of(model: LipschitzMLP, tasks: list[Task], options: dict, workers: int) -> Iterator[tuple[int, Verdict]]:
    """(position, `verify`'s verdict) for every task, in the order they finish: in this process with one worker,
    else in this one and `workers` - 1 spawned ones (`pooled`)."""
    if workers == 1 or len(tasks) < 2:
        model64 = in_float64(model)
        for position, image, label, index in tasks:
            yield position, verify(model, image, label, model64=model64, index=index, **options)
        return
    yield from pooled(model, tasks, options, min(workers, len(tasks)))


def pooled(model: LipschitzMLP, tasks: list[Task], options: dict, workers: int) -> Iterator[tuple[int, Verdict]]:
    """`verify` on every task in `workers` processes, one torch and one HiGHS thread each: this one and
    `workers` - 1 spawned ones. The spawned processes take tasks from the front of the queue, each handed its
    next task only when it has finished the last; this process takes them from the back. Every task runs
    once, and the two ends meet with no task queued behind a long one. A spawned process takes about 2 s to
    start (it imports torch and HiGHS): this process is at work meanwhile, and does not pay that start
    itself. The model travels once per spawned process, pickled whole, the images as numpy arrays, and each
    verdict comes back pickled: every tensor inline, none through torch's shared memory, whose file
    descriptors a long run would exhaust.

    The spawned processes' verdicts are passed on between this process's own, up to one program late. When
    this process is interrupted (Ctrl-C, a signal, an error), every spawned process stops at once and the
    verdicts they had finished are passed on before the interruption is."""
    queue, lock, closed = deque(range(len(tasks))), threading.Lock(), threading.Event()
    finished: SimpleQueue[tuple[int, Future]] = SimpleQueue()  # the spawned processes' tasks, as each finishes
    pool = ProcessPoolExecutor(workers - 1, mp_context=multiprocessing.get_context("spawn"), initializer=start_worker,
                               initargs=(pickle.dumps(model),))

    def hand_out() -> None:
        """The task at the front to the pool: once per spawned process, then each time one finishes."""
        with lock:
            if closed.is_set() or not queue:
                return
            k = queue.popleft()
            _, image, label, index = tasks[k]
            future = pool.submit(verify_in_worker, image.numpy(), label, index, options)
        future.add_done_callback(lambda done: (finished.put((k, done)), hand_out()))

    def arrived(wait: bool) -> Iterator[tuple[int, Verdict]]:
        """The spawned processes' verdicts that have arrived (with `wait`, at least one)."""
        while wait or not finished.empty():
            try:
                k, done = finished.get(timeout=0.1)  # a short wait, so that Ctrl-C is not held up
            except Empty:
                continue
            wait = False
            if not done.cancelled() and (done.exception() is None or not closed.is_set()):
                yield tasks[k][0], pickle.loads(done.result())

    def stop() -> None:  # the executor has no public way to stop its processes now, not after their programs
        with lock:
            closed.set()
        processes = list((pool._processes or {}).values())
        pool.shutdown(wait=False, cancel_futures=True)
        for process in processes:
            process.terminate()

    for _ in range(workers - 1):
        hand_out()
    left, threads = len(tasks), torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model64 = in_float64(model)
        while left:
            with lock:
                k = queue.pop() if queue else None
            if k is None:  # the rest is the pool's
                for item in arrived(wait=True):
                    left -= 1
                    yield item
                continue
            for item in arrived(wait=False):
                left -= 1
                yield item
            position, image, label, index = tasks[k]
            verdict = verify(model, image, label, model64=model64, index=index, **options)
            left -= 1
            yield position, verdict
    except GeneratorExit:  # the caller stopped listening
        stop()
        raise
    except BaseException:  # Ctrl-C, a signal, an error: every process stops now, then what it had finished
        stop()
        yield from arrived(wait=False)
        raise
    finally:
        torch.set_num_threads(threads)
    pool.shutdown(wait=False)  # every task is done: the processes exit on their own (joined at the interpreter's exit)


class WorkerModel:
    """The model (and its float64 copy) of one pool process, set once by `start_worker`: the process's own
    copy, read by every `verify_in_worker` call that this process runs."""

    model: LipschitzMLP | None = None
    model64: LipschitzMLP | None = None


def start_worker(model: bytes) -> None:
    """A pool process's start: one torch thread (HiGHS runs single-threaded already, `program.Program.highs`),
    and the pickled model."""
    torch.set_num_threads(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group: the parent stops the pool
    WorkerModel.model = pickle.loads(model)
    WorkerModel.model64 = in_float64(WorkerModel.model)


def verify_in_worker(image: np.ndarray, label: int, index: int, options: dict) -> bytes:
    """`verify` in a pool process, its verdict pickled with its tensors inline."""
    verdict = verify(WorkerModel.model, torch.from_numpy(image), label, model64=WorkerModel.model64, index=index,
                     **options)
    return pickle.dumps(verdict)
