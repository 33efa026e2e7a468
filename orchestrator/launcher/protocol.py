"""Launcher requests and replies: frozen, tagged msgspec Structs, strict both ways.

Requests name only what the launcher lets a client choose: a job id, a staged data
handle (never a path to mount), caps, device, GPU and runtime. There is no field for an
image other than the launcher's, a bind, a network or privileges: a request carrying one
fails to decode (``forbid_unknown_fields``) and is refused with the field named.
Every request carries the client's ``session`` (its lease) and a request id echoed back.
"""

from __future__ import annotations

from typing import Union

import msgspec

#: Bumped when a request or reply changes incompatibly.
LAUNCHER_PROTOCOL = 1
#: Longest request the launcher reads (ZeroMQ drops a peer sending more than MAX_FRAME_BYTES).
MAX_REQUEST_BYTES = 64 * 1024
MAX_FRAME_BYTES = 1024 * 1024
#: Longest reply a client reads (logs are capped well below it).
MAX_REPLY_BYTES = 4 * 1024 * 1024
#: The launcher's socket file in its root (``ipc://<root>/launcher.sock``).
LAUNCHER_SOCKET = "launcher.sock"


class _Request(msgspec.Struct, frozen=True, kw_only=True, tag=True, forbid_unknown_fields=True):
    session: str  # the client's lease: its sandboxes go when it stops renewing it
    rid: int = 0  # echoed in the reply


class Hello(_Request):
    """Open or renew a session; the reply says what the launcher offers."""

    protocol: int = LAUNCHER_PROTOCOL


class MakeJobDir(_Request):
    """A new job directory (made by the launcher) for the client's job socket."""

    job_id: str


class StageData(_Request):
    """Copy a prepared data directory (under a data source root) into the launcher's root."""

    source: str


class Create(_Request):
    """Create and start one hardened sandbox for ``job_id`` (whose directory came from MakeJobDir)."""

    job_id: str
    data: str | None = None  # a handle from StageData
    image: str = ""  # empty: the launcher's image; anything else must equal it
    memory: str = "2g"
    cpus: float = 1.0
    pids: int = 256
    tmpfs_size: str = "256m"
    nofile: int = 1024
    runtime: str = "runc"
    device: str = "cpu"
    gpu: str | None = None
    timeout_s: float = 300.0
    warm_up: bool = False


class Kill(_Request):
    """SIGKILL the sandbox of ``job_id`` (idempotent)."""

    job_id: str


class Remove(_Request):
    """Remove the sandbox of ``job_id`` and its job directory (idempotent)."""

    job_id: str


class Prioritise(_Request):
    """Give a warm slot's sandbox the normal CPU weight."""

    job_id: str


class Logs(_Request):
    """The last ``tail`` lines of a sandbox's output."""

    job_id: str
    tail: int = 50


class Poll(_Request):
    """This session's sandboxes and how they ended; also renews the lease."""


class Release(_Request):
    """End the session: remove its sandboxes, job directories and staged data."""


Request = Union[Hello, MakeJobDir, StageData, Create, Kill, Remove, Prioritise, Logs, Poll, Release]


class _Reply(msgspec.Struct, frozen=True, kw_only=True, tag=True):
    rid: int = 0


class Refused(_Reply):
    """The request was not carried out; ``reason`` says why and what to do."""

    reason: str


class Ok(_Reply):
    """Done."""


class Welcome(_Reply):
    """What the launcher offers (``researcher doctor`` prints it)."""

    protocol: int
    image: str
    image_present: bool
    image_protocol: str
    engine: str
    runtimes: tuple[str, ...]
    devices: tuple[str, ...]
    gpus: tuple[tuple[str, str], ...]  # (index, name)
    max_memory: str
    max_cpus: float
    max_pids: int
    max_time_s: float
    max_sandboxes: int
    lease_s: float


class JobDir(_Reply):
    """The job directory, the same path for client and engine."""

    path: str


class Staged(_Reply):
    """A handle for ``Create.data``."""

    handle: str
    files: int
    bytes: int


class SandboxState(msgspec.Struct, frozen=True, kw_only=True):
    """One sandbox as the launcher sees it; ``exit_code`` is None while it runs."""

    job_id: str
    exit_code: int | None = None
    oom_killed: bool = False
    error: str = ""
    peak_memory: int | None = None


class States(_Reply):
    """The session's sandboxes."""

    sandboxes: tuple[SandboxState, ...] = ()


class LogText(_Reply):
    """A sandbox's last output lines."""

    text: str


Reply = Union[Refused, Ok, Welcome, JobDir, Staged, States, LogText]

request_decoder = msgspec.msgpack.Decoder(Request)
reply_decoder = msgspec.msgpack.Decoder(Reply)
encoder = msgspec.msgpack.Encoder()
