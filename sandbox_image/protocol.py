"""Messages between the trusted orchestrator and the untrusted sandbox worker.

Every message is a frozen, tagged ``msgspec.Struct`` sent as MessagePack over one
ZeroMQ PAIR socket per job. Each side decodes with one typed decoder and a size
limit; nothing is ever pickled. This module is imported by both sides, so it
depends on msgspec and the standard library only.

Flow of one job::

    worker -> Ready                      (once, as soon as the worker is up)
    host   -> Job
    worker -> CheckReport                (model imported, forward pass checked)
    worker -> Progress*, Predictions     (per seed, only when the job trains)
    worker -> Done | Failure             (exactly one, last)

Schema evolution follows msgspec's rules: new fields are added at the end with
a default. A change that breaks old peers bumps ``PROTOCOL_VERSION``; the host
refuses a worker that reports another version with a "rebuild the image" error.
"""

from __future__ import annotations

import enum
from typing import Annotated

import msgspec

PROTOCOL_VERSION = 1

#: Label on the sandbox image that carries the protocol version it speaks.
IMAGE_PROTOCOL_LABEL = "org.pytorch-researcher.protocol"

#: Upper bound of one message from the worker (logits of 10k x 100 float32 fit).
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024

#: Upper bound of one message to the worker (source code and settings).
MAX_JOB_BYTES = 4 * 1024 * 1024


class FailureKind(str, enum.Enum):
    """Why a candidate failed; a contract users may match on."""

    SYNTAX_ERROR = "syntax_error"
    IMPORT_ERROR = "import_error"
    INSTANTIATE_ERROR = "instantiate_error"
    FORWARD_ERROR = "forward_error"
    SHAPE_MISMATCH = "shape_mismatch"
    TRAINING_ERROR = "training_error"
    NON_FINITE = "non_finite"
    TIMEOUT = "timeout"
    OUT_OF_MEMORY = "out_of_memory"
    CRASHED = "crashed"
    PROTOCOL_VIOLATION = "protocol_violation"
    SANDBOX_UNAVAILABLE = "sandbox_unavailable"


class Stage(str, enum.Enum):
    """Where in a job a failure happened."""

    STARTUP = "startup"
    COMPILE = "compile"
    IMPORT = "import"
    INSTANTIATE = "instantiate"
    FORWARD = "forward"
    TRAIN = "train"
    PREDICT = "predict"
    PROTOCOL = "protocol"


class _Msg(msgspec.Struct, frozen=True, tag=True, forbid_unknown_fields=False):
    """Base of every protocol message (frozen, tagged with the class name)."""


# --------------------------------------------------------------------- settings


class TrainSpec(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How the worker trains a candidate; chosen by the trusted side."""

    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    optimizer: str = "adamw"  # adamw | adam | sgd
    weight_decay: float = 0.0
    momentum: float = 0.9  # sgd only
    patience: int = 5  # early stopping on val loss; 0 disables it
    seeds: tuple[int, ...] = (0,)
    time_budget_s: float = 0.0  # wall-clock budget for all seeds; 0 = none
    amp: bool = True  # mixed precision, used only on cuda


class DataSpec(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Read-only ``.npy`` arrays mounted into the sandbox (no test labels)."""

    root: str = "/data"
    train_x: str = "train_x.npy"
    train_y: str = "train_y.npy"
    val_x: str = "val_x.npy"
    val_y: str = "val_y.npy"
    test_x: str = "test_x.npy"


class EpochStats(msgspec.Struct, frozen=True, kw_only=True):
    """One epoch of one seed, as measured inside the sandbox (diagnostic only)."""

    epoch: int
    train_loss: float
    train_acc: float
    val_loss: float
    val_acc: float
    seconds: float
    lr: float = 0.0


# --------------------------------------------------------------------- messages


class Ready(_Msg):
    """The worker is up, its imports are done, and it waits for a job."""

    protocol: int
    python: str = ""
    torch: str = ""
    device: str = "cpu"
    cuda_devices: int = 0
    threads: int = 1


class Job(_Msg, kw_only=True):
    """One candidate to check and, when ``train`` is set, to train and predict."""

    job_id: str
    source: str
    class_name: str
    input_shape: tuple[int, ...]
    num_classes: int
    device: str = "cpu"
    threads: int = 1
    check_batch: int = 2
    train: TrainSpec | None = None
    data: DataSpec | None = None
    init_kwargs: dict[str, int | float | str | bool] = {}


class CheckReport(_Msg, kw_only=True):
    """The model imported, instantiated and ran one forward pass correctly."""

    params: int
    trainable_params: int
    output_shape: tuple[int, ...]
    forward_seconds: float
    import_seconds: float = 0.0


class Progress(_Msg, kw_only=True):
    """One finished epoch (streamed while training)."""

    seed: int
    stats: EpochStats
    epochs: int = 0


class Predictions(_Msg, kw_only=True):
    """Test logits of one seed as a raw little-endian buffer, plus its curves."""

    seed: int
    logits: bytes
    dtype: str
    shape: tuple[int, ...]
    curves: tuple[EpochStats, ...] = ()
    best_epoch: int = 0
    stopped_early: bool = False
    seconds: float = 0.0


#: Caps of a Failure's text: a forged, huge message is a protocol violation, not 16 MB kept.
MAX_FAILURE_MESSAGE = 8192
MAX_FAILURE_TRACEBACK = 16384


class Failure(_Msg, kw_only=True):
    """The job failed; ``kind`` is the contract, the rest is for humans."""

    stage: Stage
    kind: FailureKind
    message: Annotated[str, msgspec.Meta(max_length=MAX_FAILURE_MESSAGE)]
    traceback: Annotated[str, msgspec.Meta(max_length=MAX_FAILURE_TRACEBACK)] = ""


class Done(_Msg, kw_only=True):
    """Every requested step finished."""

    seconds: float


#: What the worker may send.
WorkerMessage = Ready | CheckReport | Progress | Predictions | Failure | Done
#: What the host may send.
HostMessage = Job

ALLOWED_DTYPES = ("<f4", "<f2", "<f8")


def worker_decoder() -> msgspec.msgpack.Decoder:
    """Decoder the host uses for messages from a worker."""
    return msgspec.msgpack.Decoder(WorkerMessage)


def job_decoder() -> msgspec.msgpack.Decoder:
    """Decoder the worker uses for the host's message."""
    return msgspec.msgpack.Decoder(HostMessage)


def encoder() -> msgspec.msgpack.Encoder:
    """Encoder for both directions."""
    return msgspec.msgpack.Encoder()


def trim_traceback(text: str, limit: int = 4000) -> str:
    """Keep the end of a traceback, where the cause is, within ``limit`` chars."""
    if len(text) <= limit:
        return text
    return "...(trimmed)...\n" + text[-limit:]
