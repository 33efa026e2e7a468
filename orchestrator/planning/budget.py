"""Time estimates and budget arithmetic for the offline planner, from measured candidates.

A finished candidate tells how long it took (``Outcome.seconds``: start-up, training and
predictions) and how many epochs it trained (its val curve; one seed when it was pruned,
every seed otherwise), and the assembler how much work one example costs
(multiply-accumulates, ``Analysis.macs``). A candidate's seconds are modelled as

    seconds = overhead + epochs x seeds x rate x macs ** exponent

Overhead and rate are fitted by least squares (the overhead kept between 0 and the
quickest candidate's time). The exponent is the one of a grid that fits best once three
measurements span a 4x range of sizes, and a prior before that: 1 on a CPU, where time
follows the arithmetic, and 0.5 on a GPU, where small nets are bound by per-batch
overheads rather than by their MACs. No measurement, no
estimate: the planner then proposes without fitting, and the loop's per-candidate
deadline bounds the cost of a wrong guess.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

#: Exponent of the MACs before the data can tell it, per device kind.
PRIOR_EXPONENT = {"cpu": 1.0, "cuda": 0.5}
SAFETY = 1.2  # estimates are padded by this factor before they are compared with time left
FINAL_SHARE = 0.4  # a final training is planned to take at most this share of the run
#: The time kept for a final training is its padded estimate x this, so that a search candidate
#: that overruns its own estimate cannot drop the time left below the final's plan (from there
#: the final can only shrink to its design's epochs + 1, or not come at all).
FINAL_SLACK = 1.15
MAX_EPOCHS = 500  # TrainSpec's bound
UNTIMED_FINAL_FACTOR = 3  # a final training's epochs, x its design's, where no time budget sizes it
_EXPONENT_RANGE = (0.2, 1.2)
_MIN_SPREAD = math.log(4.0)  # of log MACs, to fit the exponent instead of assuming it


@dataclass(frozen=True)
class _Point:
    macs: int
    seconds: float
    epoch_seeds: int


@dataclass
class EpochTimer:
    """Candidate times learned from measurements: a fixed overhead plus seconds per epoch."""

    prior_exponent: float = 1.0
    _points: dict[str, _Point] = field(default_factory=dict)
    _fitted: tuple[float, float, float] | None = field(default=None, repr=False)  # cache

    @classmethod
    def for_device(cls, device: str) -> EpochTimer:
        """A timer with the prior exponent of ``device`` ("cpu", "cuda", "cuda:1", ...)."""
        kind = "cuda" if device.startswith("cuda") else "cpu"
        return cls(prior_exponent=PRIOR_EXPONENT[kind])

    def add(self, key: str, macs: int, seconds: float, epoch_seeds: int) -> None:
        """Record that a model of ``macs`` took ``seconds`` for ``epoch_seeds`` epochs x seeds."""
        if macs > 0 and epoch_seeds > 0 and math.isfinite(seconds) and seconds > 0:
            self._points[key] = _Point(macs, seconds, epoch_seeds)
            self._fitted = None

    def __len__(self) -> int:
        return len(self._points)

    def exponent(self) -> float:
        """The exponent of the MACs: fitted once sizes differ 4x, else the prior."""
        fitted = self.fit()
        return self.prior_exponent if fitted is None else fitted[2]

    def fit(self) -> tuple[float, float, float] | None:
        """(overhead seconds, rate, exponent) of the model; None before any measurement."""
        points = list(self._points.values())
        if not points:
            return None
        if self._fitted is None:
            self._fitted = self._fit(points)
        return self._fitted

    def _fit(self, points: list[_Point]) -> tuple[float, float, float]:
        """For each exponent on a grid, overhead and rate by least squares; the exponent whose
        predictions are closest in log seconds wins (relative errors: small and big candidates
        count alike). The prior exponent while the sizes are too alike to tell."""
        logs = [math.log(p.macs) for p in points]
        if len(points) < 3 or max(logs) - min(logs) < _MIN_SPREAD:
            return (*_linear(points, self.prior_exponent), self.prior_exponent)
        best: tuple[float, tuple[float, float, float]] | None = None
        for step in range(int(round((_EXPONENT_RANGE[1] - _EXPONENT_RANGE[0]) / 0.05)) + 1):
            a = _EXPONENT_RANGE[0] + 0.05 * step
            overhead, rate = _linear(points, a)
            error = math.fsum((math.log(overhead + rate * p.epoch_seeds * p.macs ** a)
                               - math.log(p.seconds)) ** 2 for p in points)
            if best is None or error < best[0]:
                best = (error, (overhead, rate, a))
        assert best is not None
        return best[1]

    def overhead(self) -> float:
        """Seconds a candidate costs besides its epochs (start-up, predictions); 0 before any."""
        fitted = self.fit()
        return 0.0 if fitted is None else fitted[0]

    def per_epoch(self, macs: int) -> float | None:
        """Seconds an epoch of one seed of a model of ``macs`` adds; None before any measurement."""
        fitted = self.fit()
        if fitted is None or macs <= 0:
            return None
        _, rate, a = fitted
        return rate * macs ** a

    def measured_per_epoch(self, key: str) -> float | None:
        """Seconds per epoch and seed that candidate ``key`` took, its overhead taken out."""
        point = self._points.get(key)
        if point is None:
            return None
        spent = max(point.seconds - self.overhead(), 0.5 * point.seconds)
        return spent / point.epoch_seeds

    def cheapest_per_epoch(self) -> float | None:
        """The least measured seconds per epoch and seed, overhead taken out (None before any)."""
        values = [self.measured_per_epoch(key) for key in self._points]
        return min(v for v in values if v is not None) if values else None


def _linear(points: list[_Point], a: float) -> tuple[float, float]:
    """Overhead (0 .. the quickest candidate's seconds) and rate: seconds = overhead + rate * x."""
    xs = [p.epoch_seeds * p.macs ** a for p in points]
    ys = [p.seconds for p in points]
    overhead = 0.0
    if len(xs) >= 2 and max(xs) > min(xs):
        mx, my = math.fsum(xs) / len(xs), math.fsum(ys) / len(ys)
        slope = math.fsum((x - mx) * (y - my) for x, y in zip(xs, ys)) \
            / math.fsum((x - mx) ** 2 for x in xs)
        if slope > 0:
            overhead = min(max(my - slope * mx, 0.0), min(ys))
    rate = math.fsum(x * (y - overhead) for x, y in zip(xs, ys)) / math.fsum(x * x for x in xs)
    return overhead, max(rate, 1e-300)


def epoch_seeds(epochs_trained: int, seeds: int, pruned: bool) -> int:
    """Epochs x seeds a finished candidate trained (a pruned one stopped during its first seed)."""
    return epochs_trained * (1 if pruned else max(seeds, 1))


def shortest_final(base: int) -> int:
    """Fewest epochs that make a final training worth it: one more than its design's (it
    also trains on train + val, so even that is more training on more data)."""
    return base + 1


@dataclass
class Budget:
    """What the run has left and what a candidate costs in it: the planner's time arithmetic.

    Every estimate is padded by ``SAFETY``. Seconds per epoch and seed of a design come
    from its own measurement where there is one (a final training), else from the timer.
    """

    timer: EpochTimer
    seeds: int = 1  # per candidate, as the loop runs them
    seconds_left: float | None = None  # None: no time budget
    run_seconds: float | None = None  # the most time left ever seen: the run's budget
    candidate_s: float | None = None  # the most one candidate may train
    candidates_left: int | None = None
    final_scale: float = 1.0  # a final epoch's time / its design's (it trains on train + val)
    _raw: dict[str, float] = field(default_factory=dict)  # key -> seconds / (epochs x seeds)

    def set(self, seconds_left: float | None, candidate_s: float | None,
            candidates_left: int | None) -> None:
        """Take the loop's view of what is left (None: unlimited)."""
        self.seconds_left = None if seconds_left is None else max(float(seconds_left), 0.0)
        if self.seconds_left is not None:
            self.run_seconds = max(self.run_seconds or 0.0, self.seconds_left)
        self.candidate_s, self.candidates_left = candidate_s, candidates_left

    def measure(self, key: str, macs: int | None, seconds: float, done: int) -> None:
        """Record candidate ``key``: ``seconds`` for ``done`` epochs x seeds (``macs`` if known)."""
        if done > 0 and math.isfinite(seconds) and seconds > 0:
            self._raw[key] = seconds / done
            if macs is not None:
                self.timer.add(key, macs, seconds, done)

    def cost(self, per_epoch: float, epochs: int) -> float:
        """Padded seconds of a candidate: overhead plus ``epochs`` x seeds at ``per_epoch``."""
        return SAFETY * (self.timer.overhead() + self.seeds * epochs * per_epoch)

    def epochs_within(self, seconds: float, per_epoch: float) -> int:
        """The most epochs whose padded cost at ``per_epoch`` fits in ``seconds``."""
        room = seconds / SAFETY - self.timer.overhead()
        return max(math.floor(room / (self.seeds * per_epoch)), 0)

    def per_epoch_of(self, key: str) -> float | None:
        """Seconds per epoch and seed candidate ``key`` measured (overhead out where known)."""
        return self.timer.measured_per_epoch(key) or self._raw.get(key)

    def final_per_epoch(self, key: str) -> float | None:
        """Seconds per epoch and seed of a final training of design ``key`` (None: not timed)."""
        per_epoch = self.per_epoch_of(key)
        return None if per_epoch is None else per_epoch * self.final_scale

    def cheapest(self, epochs: int) -> float | None:
        """Padded seconds of the cheapest measured design trained ``epochs`` (None before any).

        From the timer's designs; where it has none (an LLM's source, whose size it cannot
        tell), from what the measured candidates took per epoch and seed.
        """
        fastest = self.timer.cheapest_per_epoch()
        if fastest is None and self._raw:
            fastest = min(self._raw.values())
        return None if fastest is None else self.cost(fastest, epochs)

    def search_limit(self, reserve: float | None) -> float | None:
        """Seconds one search candidate may take (None: no limit).

        At most the per-candidate cap. With a final training still to come (``reserve``
        its seconds, None once it is proposed), also the time left less the reserve, and
        little enough that if this candidate turns out best, a longer final training of it
        (on train + val) still fits after it.
        """
        limits = [] if self.candidate_s is None else [self.candidate_s]
        if self.seconds_left is not None:
            left = self.seconds_left
            limits.append(left if reserve is None else min(left - reserve, left / 2.5))
        return min(limits) if limits else None

    def final_plan(self, key: str, base: int, most: float) -> tuple[int, float | None] | None:
        """(epochs, padded seconds) of training design ``key`` longer than its ``base`` epochs.

        With a time budget, the epochs that fill ``FINAL_SHARE`` of the run: spending what
        the search leaves on the best design is the final's point. Without one, or before
        the design is timed, ``UNTIMED_FINAL_FACTOR`` x the epochs. Never more than ``most``
        x the epochs, nor than one candidate may take; None when that is not longer
        (``shortest_final``).
        """
        cap = min(math.floor(most * base), MAX_EPOCHS)
        epochs = min(round(UNTIMED_FINAL_FACTOR * base), cap)
        per_epoch = self.final_per_epoch(key)
        if per_epoch is not None and self.run_seconds:
            share = self.epochs_within(FINAL_SHARE * self.run_seconds, per_epoch)
            epochs = min(max(share, shortest_final(base)), cap)
        if per_epoch is not None and self.candidate_s is not None:
            epochs = min(epochs, self.epochs_within(self.candidate_s, per_epoch))
        if epochs < shortest_final(base):
            return None
        return epochs, None if per_epoch is None else self.cost(per_epoch, epochs)

    def kept_for_final(self, seconds: float) -> float:
        """Seconds kept for a final planned at ``seconds``: with ``FINAL_SLACK``, at most what is left."""
        left = math.inf if self.seconds_left is None else self.seconds_left
        return min(left, FINAL_SLACK * seconds)

    def fit_left(self, key: str, epochs: int) -> int:
        """``epochs``, fewer where the time left cannot train design ``key`` that long."""
        per_epoch = self.final_per_epoch(key)
        if self.seconds_left is None or per_epoch is None:
            return epochs
        return min(epochs, self.epochs_within(self.seconds_left, per_epoch))
