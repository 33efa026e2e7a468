"""Messages between the trusted orchestrator and the untrusted sandbox worker.

Every message is a frozen, tagged ``msgspec.Struct`` sent as MessagePack over one
ZeroMQ PAIR socket per job. Each side decodes with one typed decoder and a size
limit; nothing is ever pickled. This module is imported by both sides, so it
depends on msgspec and the standard library only.

Flow of one job::

    worker -> Ready                      (once, as soon as the worker is up)
    host   -> Job
    worker -> CheckReport                (model imported, forward pass checked)
    worker -> (Batches* Progress)*, Batches*, Predictions
                                         (per seed, only when the job trains: where the
                                         running epoch's training or validation is, then
                                         the prediction, every BATCHES_EVERY_S at most;
                                         and each finished epoch)
    worker -> Done | Failure             (exactly one, last)
    host   -> Bye                        (all read; the worker exits)

Schema evolution follows msgspec's rules: new fields are added at the end with
a default. A change that breaks old peers bumps ``PROTOCOL_VERSION``; the host
refuses a worker that reports another version with a "rebuild the image" error.
"""

from __future__ import annotations

import enum
from typing import Annotated, Literal

import msgspec

PROTOCOL_VERSION = 5  # 3: TrainSpec.fit_val; 4: Batches; 5: Batches.phase (a 4 host refuses predict's)

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


#: Caps the decoder applies to what a worker sends (a forged, huge value is a protocol
#: violation, not memory spent). The host checks the values themselves in
#: ``orchestrator.sandbox.bounds``.
MAX_FAILURE_MESSAGE = 8192
MAX_FAILURE_TRACEBACK = 16384
MAX_LABEL = 64  # short strings: versions, device, dtype
MAX_DIMS = 8  # a shape's length
MAX_EPOCHS = 1000  # curve entries of one seed (a job asks for at most this many epochs)

Label = Annotated[str, msgspec.Meta(max_length=MAX_LABEL)]
Shape = Annotated[tuple[int, ...], msgspec.Meta(max_length=MAX_DIMS)]


class _Msg(msgspec.Struct, frozen=True, tag=True, forbid_unknown_fields=False):
    """Base of every protocol message (frozen, tagged with the class name)."""


# --------------------------------------------------------------------- settings


#: TrainSpec.optimizer and TrainSpec.schedule choices (the recipe implements each; the planner bounds by them).
OPTIMIZERS = ("adamw", "adam", "sgd")
SCHEDULES = ("constant", "cosine", "onecycle")
AUGMENTS = ("none", "shift", "crop_flip", "crop_flip_erase")  # TrainSpec.augment
PAD_MODES = ("zero", "reflect")  # TrainSpec.pad_mode


class TrainSpec(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How the worker trains a candidate; chosen by the trusted side.

    The recipe (``evaluator.recipe``) documents what each knob does; the defaults are
    the plain recipe (constant lr, no augmentation, early stopping with patience 5).
    """

    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3  # the peak lr of a schedule (OneCycle's max_lr)
    optimizer: str = "adamw"  # adamw | adam | sgd
    weight_decay: float = 0.0
    momentum: float = 0.9  # sgd only
    # Epochs without a better validation result before training stops; 0 never stops
    # early; None: 5 with the constant schedule, 0 with cosine and onecycle.
    patience: int | None = None
    seeds: tuple[int, ...] = (0,)
    time_budget_s: float = 0.0  # wall-clock budget for all seeds; 0 = none
    amp: bool = True  # mixed precision (bf16 where the GPU has it), used only on cuda
    augment: str = "none"  # images: none | shift | crop_flip | crop_flip_erase
    crop_px: int = 0  # largest shift in pixels; 0: 1 under 16 px, 2 under 32 px, else 4
    pad_mode: str = "reflect"  # zero | reflect: what fills the border a shift uncovers
    hflip_ok: bool = False  # set by the trusted side from the dataset: may images be flipped?
    schedule: str = "constant"  # constant | cosine | onecycle, stepped per batch
    warmup_epochs: float = 0.0  # linear warm-up of constant and cosine (onecycle has its own)
    nesterov: bool = False  # sgd only
    label_smoothing: float = 0.0  # of the training loss only
    tta_flip: bool = False  # average the logits of flipped test images (only when hflip_ok)
    channels_last: bool = False  # channels_last memory format for images (CPU and CUDA)
    # Train on train + val (a final training): nothing is held out to pick weights by or to
    # stop on, so the last epoch's weights are kept and the val curve is on trained data.
    fit_val: bool = False


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
    python: Label = ""
    torch: Label = ""
    device: Label = "cpu"
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
    output_shape: Shape
    forward_seconds: float
    import_seconds: float = 0.0
    # forward FLOPs per example, counted by torch's FlopCounterMode on the check batch (matrix
    # multiplies, convolutions, attention; elementwise work is not counted); None: not counted
    flops: int | None = None


class Progress(_Msg, kw_only=True):
    """One finished epoch (streamed while training)."""

    seed: int
    stats: EpochStats
    epochs: int = 0


#: Seconds between two Batches messages of an honest worker (the host allows a burst above
#: one per second on average; see ``orchestrator.sandbox.bounds.check_batches``).
BATCHES_EVERY_S = 5.0


#: What a seed's batches are doing: training epoch ``epoch``, validating it, or (its training
#: over, ``epoch`` its last) predicting the evaluation inputs.
Phase = Literal["train", "val", "predict"]


class Batches(_Msg, kw_only=True):
    """Where a seed is inside an epoch: ``step`` of its ``steps`` batches done (streamed at most
    every ``BATCHES_EVERY_S``, so a long epoch, validation or prediction shows progress).

    ``epochs`` is what the job asked; ``planned`` the epochs training now goes to, fewer once
    the job's deadline re-planned an annealing schedule over the epochs that fit (0: as asked;
    always 0 while predicting). ``phase`` says which batches: training, validation or prediction.
    """

    seed: int
    epoch: int
    step: int
    steps: int
    epochs: int = 0
    planned: int = 0
    phase: Phase = "train"


class Predictions(_Msg, kw_only=True):
    """Test logits of one seed as a raw little-endian buffer, plus its curves."""

    seed: int
    logits: bytes
    dtype: Label
    shape: Shape
    curves: Annotated[tuple[EpochStats, ...], msgspec.Meta(max_length=MAX_EPOCHS)] = ()
    best_epoch: int = 0
    stopped_early: bool = False
    seconds: float = 0.0
    truncated: bool = False  # training was cut by the job's time budget (best weights kept)




class Failure(_Msg, kw_only=True):
    """The job failed; ``kind`` is the contract, the rest is for humans."""

    stage: Stage
    kind: FailureKind
    message: Annotated[str, msgspec.Meta(max_length=MAX_FAILURE_MESSAGE)]
    traceback: Annotated[str, msgspec.Meta(max_length=MAX_FAILURE_TRACEBACK)] = ""


class Done(_Msg, kw_only=True):
    """Every requested step finished."""

    seconds: float


class Bye(_Msg):
    """The host has read the job's last message (Done or Failure): the worker may exit now.

    The worker waits for it before closing its socket: a worker that exits while its
    last frames still wait in the host's small receive queue would lose them.
    """


#: What the worker may send.
WorkerMessage = Ready | CheckReport | Batches | Progress | Predictions | Failure | Done
#: What the host may send.
HostMessage = Job | Bye

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
