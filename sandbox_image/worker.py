"""The sandbox worker: the only code that runs beside an untrusted model.

Started as ``python -m sandbox_image.worker SOCKET_PATH`` inside a hardened
container (or, for tests only, a local subprocess). It imports torch first, so
that ``Ready`` means "warm", then takes exactly one ``Job``: compile the source
into a fresh module, instantiate the class, check one forward pass, and, when
asked, train per seed and predict the test inputs. Every outcome is a message;
the worker never decides whether a result is good - the host does.

The worker trusts nothing it is given either, but it is not a security
boundary: the model runs in this process and can do anything the container
allows. Containment is the container's job; honesty of results is the host's.
"""

from __future__ import annotations

import functools
import os
import sys
import time
import traceback
import types
from collections.abc import Callable

import msgspec
import zmq

from sandbox_image.protocol import (
    MAX_JOB_BYTES,
    BATCHES_EVERY_S,
    PROTOCOL_VERSION,
    Batches,
    CheckReport,
    Done,
    Failure,
    FailureKind,
    Job,
    Predictions,
    Progress,
    Ready,
    Stage,
    encoder,
    job_decoder,
    trim_traceback,
)

_JOB_WAIT_MS = 3_600_000  # the host kills idle workers long before this
_BYE_WAIT_MS = 30_000  # the host says Bye as soon as it has read the last message
_LINGER_MS = 10_000


class JobFailed(Exception):
    """Internal: carries a Failure out of a stage."""

    def __init__(self, failure: Failure) -> None:
        super().__init__(failure.message)
        self.failure = failure


def _fail(stage: Stage, kind: FailureKind, exc: BaseException | str) -> JobFailed:
    if isinstance(exc, BaseException):
        message = f"{type(exc).__name__}: {exc}"
        tb = trim_traceback("".join(traceback.format_exception(exc)))
    else:
        message, tb = exc, ""
    return JobFailed(Failure(stage=stage, kind=kind, message=message[:2000], traceback=tb))


def _threads() -> int:
    try:
        return max(1, int(os.environ.get("OMP_NUM_THREADS", "1")))
    except ValueError:
        return 1


# ------------------------------------------------------------------ job stages


def load_model_class(source: str, class_name: str) -> type:
    """Compile ``source`` into a fresh module and return the named class."""
    try:
        code = compile(source, "<candidate>", "exec")
    except SyntaxError as exc:
        raise _fail(Stage.COMPILE, FailureKind.SYNTAX_ERROR, exc) from None
    module = types.ModuleType("candidate")
    module.__file__ = "<candidate>"
    sys.modules["candidate"] = module
    try:
        exec(code, module.__dict__)  # noqa: S102 - this is the sandbox; isolation is the container
    except BaseException as exc:  # noqa: BLE001 - SystemExit from a model is a failure too
        raise _fail(Stage.IMPORT, FailureKind.IMPORT_ERROR, exc) from None
    cls = module.__dict__.get(class_name)
    if not isinstance(cls, type):
        found = sorted(k for k, v in module.__dict__.items() if isinstance(v, type) and not k.startswith("_"))
        raise _fail(
            Stage.IMPORT,
            FailureKind.IMPORT_ERROR,
            f"no class named {class_name!r} in the source (classes found: {', '.join(found) or 'none'})",
        )
    return cls


def instantiate(cls: type, job: Job):
    """Instantiate the model class and check it is an nn.Module."""
    import torch

    try:
        model = cls(**job.init_kwargs)
    except BaseException as exc:  # noqa: BLE001
        raise _fail(Stage.INSTANTIATE, FailureKind.INSTANTIATE_ERROR, exc) from None
    if not isinstance(model, torch.nn.Module):
        raise _fail(
            Stage.INSTANTIATE,
            FailureKind.INSTANTIATE_ERROR,
            f"{job.class_name} is a {type(model).__name__}, not a torch.nn.Module",
        )
    return model


def check_forward(model, job: Job, import_seconds: float) -> CheckReport:
    """Run one forward pass on a random batch and check shape and finiteness."""
    import torch

    batch = max(1, job.check_batch)
    x = torch.randn(batch, *job.input_shape, generator=torch.Generator().manual_seed(0))
    model.eval()
    start = time.perf_counter()
    try:
        with torch.no_grad():
            out = model(x)
    except BaseException as exc:  # noqa: BLE001
        raise _fail(Stage.FORWARD, FailureKind.FORWARD_ERROR, exc) from None
    seconds = time.perf_counter() - start
    expected = (batch, job.num_classes)
    if not isinstance(out, torch.Tensor):
        raise _fail(Stage.FORWARD, FailureKind.SHAPE_MISMATCH, f"forward returned {type(out).__name__}, expected a Tensor of shape {expected}")
    if tuple(out.shape) != expected:
        raise _fail(Stage.FORWARD, FailureKind.SHAPE_MISMATCH, f"forward returned shape {tuple(out.shape)}, expected {expected} (batch, num_classes)")
    if not bool(torch.isfinite(out).all()):
        raise _fail(Stage.FORWARD, FailureKind.NON_FINITE, "forward returned NaN or infinite values on a random batch")
    params = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return CheckReport(
        params=params,
        trainable_params=trainable,
        output_shape=tuple(out.shape),
        forward_seconds=seconds,
        import_seconds=import_seconds,
        flops=count_flops(model, x),
    )


def count_flops(model, x) -> int | None:
    """Forward FLOPs per example of ``model`` on the batch ``x``, by torch's FlopCounterMode
    (which counts matrix multiplies, convolutions and attention); None where it cannot count.
    It costs one more forward pass of the check batch."""
    import torch

    try:
        counter = _flop_counter()(display=False)
        with torch.no_grad(), counter:
            model(x)
        flops = int(counter.get_total_flops()) // max(1, x.shape[0])
    except Exception:  # noqa: BLE001 - a count is a nicety: a model it cannot follow still passes its check
        return None
    return flops if 0 <= flops <= 2**53 else None


@functools.cache
def _flop_counter() -> type:
    """torch's FlopCounterMode, its dispatch mode without torch.compile's wrapper.

    TorchDispatchMode subclasses get their ``__torch_dispatch__`` wrapped in
    ``torch._disable_dynamo``, whose first call imports torch._dynamo: 1-2 s of CPU per
    sandbox, which the recipe avoids too (``evaluator.recipe``'s note on start-up cost).
    Nothing here compiles, so the mode's own method is used unwrapped. Should a torch
    release lack the internals this relies on, the stock class is used (only slower).
    """
    import inspect

    from torch.utils import flop_counter

    stock = flop_counter.FlopCounterMode
    inner = getattr(flop_counter, "_FlopCounterMode", None)
    raw = vars(inner).get("__torch_dispatch__") if isinstance(inner, type) else None
    if raw is None or not callable(getattr(stock, "__enter__", None)):
        return stock

    class Mode(inner):  # type: ignore[misc, valid-type]
        @classmethod
        def _should_skip_dynamo(cls) -> bool:  # keep the method below as written
            return False

        __torch_dispatch__ = inspect.unwrap(raw)

    class Counter(stock):  # type: ignore[misc, valid-type]
        def __enter__(self):  # stock's __enter__, with the mode above
            self.flop_counts.clear()
            self.mod_tracker.__enter__()
            try:
                self.mode = Mode(self)
                self.mode.__enter__()
            except BaseException:
                self.mod_tracker.__exit__()  # no module hooks left behind for training
                raise
            return self

    return Counter


def train_all(cls: type, job: Job, send: Callable[[msgspec.Struct], None]) -> None:
    """Train a fresh instance per seed and send Batches, Progress and Predictions.

    With a time budget, each seed gets an equal share of what is left when it starts,
    so every seed stops in time, keeps its best weights, returns predictions and says
    ``truncated``; the host's hard kill is only for a worker that will not stop.
    """
    from evaluator.recipe import NonFiniteLoss, load_arrays, train_seed

    assert job.train is not None and job.data is not None
    spec = job.train
    try:
        data = load_arrays(job.data)
    except BaseException as exc:  # noqa: BLE001
        raise _fail(Stage.TRAIN, FailureKind.TRAINING_ERROR, exc) from None
    budget_end = time.monotonic() + spec.time_budget_s if spec.time_budget_s > 0 else None
    for index, seed in enumerate(spec.seeds):
        deadline = None
        if budget_end is not None:
            now = time.monotonic()
            deadline = now + max(budget_end - now, 0.0) / (len(spec.seeds) - index)

        said = [time.monotonic()]  # when the host last heard where this seed is

        def on_epoch(stats, seed=seed, said=said):
            send(Progress(seed=seed, stats=stats, epochs=spec.epochs))
            said[0] = time.monotonic()

        def on_batch(epoch, step, steps, planned, phase, seed=seed, said=said):
            now = time.monotonic()
            # the last batch of a phase is followed by what ends it (the next phase, Progress, Predictions)
            if step < steps and now - said[0] >= BATCHES_EVERY_S:
                send(Batches(seed=seed, epoch=epoch, step=step, steps=steps, epochs=spec.epochs, planned=planned,
                             phase=phase))
                said[0] = now

        try:
            result = train_seed(
                lambda: cls(**job.init_kwargs), data, spec,
                seed=seed, device=job.device, on_epoch=on_epoch, deadline=deadline, on_batch=on_batch,
            )
        except NonFiniteLoss as exc:
            raise _fail(Stage.TRAIN, FailureKind.NON_FINITE, exc) from None
        except BaseException as exc:  # noqa: BLE001
            raise _fail(Stage.TRAIN, FailureKind.TRAINING_ERROR, exc) from None
        logits = result.logits.astype("<f4", copy=False)
        send(
            Predictions(
                seed=seed,
                logits=logits.tobytes(),
                dtype="<f4",
                shape=tuple(logits.shape),
                curves=tuple(result.curves),
                best_epoch=result.best_epoch,
                stopped_early=result.stopped_early,
                seconds=result.seconds,
                truncated=result.truncated,
            )
        )


def serve_job(job: Job, send: Callable[[msgspec.Struct], None]) -> None:
    """Run every stage of one job, sending a Failure or Done at the end."""
    start = time.perf_counter()
    try:
        cls = load_model_class(job.source, job.class_name)
        import_seconds = time.perf_counter() - start
        model = instantiate(cls, job)
        send(check_forward(model, job, import_seconds))
        del model
        if job.train is not None:
            train_all(cls, job, send)
    except JobFailed as failed:
        send(failed.failure)
        return
    send(Done(seconds=time.perf_counter() - start))


# ------------------------------------------------------------------ transport


def _ready() -> Ready:
    import torch

    threads = _threads()
    torch.set_num_threads(threads)
    torch.set_num_interop_threads(threads)
    cuda = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return Ready(
        protocol=PROTOCOL_VERSION,
        python=sys.version.split()[0],
        torch=str(torch.__version__),
        device="cuda" if cuda else "cpu",
        cuda_devices=cuda,
        threads=threads,
    )


def serve(endpoint: str, *, warm_up: bool = False) -> int:
    """Connect to the host, announce Ready, run one job, and exit.

    ``warm_up`` (a warm-pool slot) pays torch's one-time costs (first autograd pass
    and optimiser step, the FLOP counter's import) before Ready, so the job does not;
    the cold path skips it, and a check without training never needs the first two.
    """
    if warm_up:
        from evaluator.recipe import warm_up as _warm

        _warm()
        _flop_counter()
    ready = _ready()
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.PAIR)
    sock.setsockopt(zmq.MAXMSGSIZE, MAX_JOB_BYTES)
    sock.setsockopt(zmq.LINGER, _LINGER_MS)
    sock.connect(endpoint)
    enc = encoder()

    def send(msg: msgspec.Struct) -> None:
        sock.send(enc.encode(msg), copy=False)

    send(ready)
    if not sock.poll(_JOB_WAIT_MS, zmq.POLLIN):
        return 3
    try:
        job = job_decoder().decode(sock.recv(copy=True))
    except msgspec.DecodeError as exc:
        send(Failure(stage=Stage.PROTOCOL, kind=FailureKind.PROTOCOL_VIOLATION, message=f"bad job: {exc}"))
        return 4
    if not isinstance(job, Job):
        return 4
    serve_job(job, send)
    # The host keeps a small receive queue: wait until it has read everything (its Bye), so
    # no frame is lost when the connection closes; then linger flushes nothing more.
    sock.poll(_BYE_WAIT_MS, zmq.POLLIN)
    sock.close()  # linger flushes what is queued
    ctx.term()
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point: ``python -m sandbox_image.worker SOCKET_PATH``."""
    args = sys.argv[1:] if argv is None else argv
    warm = "--warm-up" in args
    args = [a for a in args if a != "--warm-up"]
    if len(args) != 1:
        print("usage: python -m sandbox_image.worker [--warm-up] SOCKET_PATH", file=sys.stderr)
        return 2
    return serve(f"ipc://{args[0]}", warm_up=warm)


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # Everything is sent (the socket lingered until flushed); skip the interpreter's slow
    # teardown of torch so the container is gone before the host's grace period ends.
    os._exit(code)
