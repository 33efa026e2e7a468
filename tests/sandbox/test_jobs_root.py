"""The jobs root keeps every other local user away from a job's socket until the worker is Ready.

A job's PAIR socket takes the first peer that connects; that peer gets the Job
and can answer in the worker's name. These tests plant what another local user
could plant (a foreign, writable or symlinked root, a link at the socket path)
and run a second local uid (65534, as root forks it) that races the worker to
the socket of a live job. The Docker tests prove that the real worker, uid
65534 inside its container, still reaches the socket under runc and gVisor.
"""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest
import zmq

from orchestrator.exceptions import ProtocolViolation, SandboxUnavailable
from orchestrator.sandbox.channel import Channel
from orchestrator.sandbox.config import SandboxConfig
from orchestrator.sandbox.local import SubprocessBackend
from orchestrator.sandbox.jobsroot import chmod_socket, ensure_jobs_root
from orchestrator.sandbox.runner import Slot, execute, make_job_dir, new_job_id, run_job
from sandbox_image.protocol import Job, job_decoder
from tests.ci import needs_root

MODELS = Path(__file__).resolve().parents[1] / "models"
NOBODY = 65534
_ROOT_REASON = "needs root: it chowns to, or runs as, another uid"


@pytest.fixture
def _root() -> None:
    """Root or no test: a skip on a developer's machine, a failure under CI (which runs as root)."""
    needs_root(_ROOT_REASON)


as_root = pytest.mark.usefixtures("_root")

# Another local user: connect to the socket path, as ZeroMQ's ipc transport would, until SIGTERM;
# print each outcome ("connected" or the errno's name) with how often it happened.
INTRUDER = r"""
import errno, signal, socket, sys, time
def stop(*_):
    raise SystemExit
signal.signal(signal.SIGTERM, stop)
seen = {}
until = time.monotonic() + float(sys.argv[2])
try:
    while True:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(sys.argv[1])
            key = "connected"
        except OSError as exc:
            key = errno.errorcode.get(exc.errno, str(exc.errno))
        s.close()
        seen[key] = seen.get(key, 0) + 1
        if time.monotonic() > until:
            break
        time.sleep(0.005)
finally:
    print(" ".join(f"{k}={v}" for k, v in sorted(seen.items())), flush=True)
"""


def _intruder(path: Path, seconds: float) -> subprocess.Popen:
    """Uid 65534 trying to connect to ``path`` for ``seconds`` (or until terminated)."""
    # a system interpreter: uid 65534 may not enter the venv's or a home directory's
    python = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else os.path.realpath(sys.executable)
    return subprocess.Popen([python, "-I", "-S", "-c", INTRUDER, str(path), str(seconds)],
                            user=NOBODY, group=NOBODY, extra_groups=[], stdout=subprocess.PIPE, text=True)


def _outcomes(proc: subprocess.Popen, *, stop: bool = False) -> dict[str, int]:
    """What the intruder saw: outcome -> attempts (``stop``: end it now rather than at its time)."""
    if stop and proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=10)
    return {k: int(v) for k, v in (item.split("=") for item in out.split())}


@pytest.fixture
def open_root():
    """A jobs root path whose parent (the system temp dir, sticky) uid 65534 may search.

    Below ``tmp_path`` every test would pass vacuously: pytest's own 0700
    directory would keep the intruder out, not the jobs root.
    """
    path = Path(tempfile.gettempdir()) / f"researcher-test-{uuid.uuid4().hex[:8]}"
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


# ------------------------------------------------------------------ the root itself


def test_a_missing_root_is_made_private_and_job_dirs_only_searchable(tmp_path):
    root = tmp_path / "deep" / "jobs"
    assert ensure_jobs_root(root) == root
    assert _mode(root) == 0o700 and os.stat(root).st_uid == os.geteuid()
    job_dir = make_job_dir(root)
    assert job_dir.parent == root and _mode(job_dir) == 0o711


def test_an_own_root_that_others_may_read_is_tightened_to_0700(tmp_path):
    root = tmp_path / "jobs"
    root.mkdir(mode=0o755)
    root.chmod(0o755)  # past the umask
    ensure_jobs_root(root)
    assert _mode(root) == 0o700


@pytest.mark.parametrize("mode", [0o777, 0o770, 0o703])
def test_a_root_writable_by_group_or_others_is_refused(tmp_path, mode):
    root = tmp_path / "jobs"
    root.mkdir()
    root.chmod(mode)
    with pytest.raises(SandboxUnavailable, match=rf"jobs dir {root} .*writable by group or others \(mode {mode:04o}\).*--jobs-dir"):
        make_job_dir(root)
    assert _mode(root) == mode and list(root.iterdir()) == []  # untouched, nothing made in it


@as_root
def test_a_root_owned_by_another_user_is_refused(tmp_path):
    root = tmp_path / "jobs"
    root.mkdir(mode=0o700)
    os.chown(root, NOBODY, NOBODY)
    with pytest.raises(SandboxUnavailable, match=rf"jobs dir {root} .*belongs to uid {NOBODY}, not to this user.*Remove it"):
        make_job_dir(root)
    assert list(root.iterdir()) == []


def test_a_symlink_as_the_root_is_refused_and_not_followed(tmp_path):
    target = tmp_path / "elsewhere"
    target.mkdir(mode=0o755)
    target.chmod(0o755)
    link = tmp_path / "jobs"
    link.symlink_to(target)
    with pytest.raises(SandboxUnavailable, match=rf"jobs dir {link} .*symbolic link"):
        make_job_dir(link)
    assert _mode(target) == 0o755 and list(target.iterdir()) == []


def test_a_root_below_a_directory_others_can_write_is_refused_unless_sticky(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)  # another user could move the root away and put theirs in its place
    with pytest.raises(SandboxUnavailable, match=rf"jobs dir {shared}/jobs .*below {shared}, which is writable by group or others"):
        make_job_dir(shared / "jobs")
    shared.chmod(0o1777)  # sticky, as /tmp: only the owner of an entry can move it
    assert make_job_dir(shared / "jobs").parent == shared / "jobs"


@as_root
def test_a_root_below_another_users_directory_is_refused(tmp_path):
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o755)
    os.chown(theirs, NOBODY, NOBODY)
    with pytest.raises(SandboxUnavailable, match=rf"below {theirs}, which belongs to uid {NOBODY}"):
        make_job_dir(theirs / "jobs")


def test_the_default_root_is_per_user_and_private():
    root = Path(SandboxConfig().jobs_root)
    assert root.parent == Path(tempfile.gettempdir()) and root.name == f"researcher-jobs-{os.geteuid()}"
    ensure_jobs_root(root)
    assert _mode(root) == 0o700


# ------------------------------------------------------------------ the socket


def test_chmod_of_the_socket_never_follows_a_symlink(tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("the orchestrator's")
    secret.chmod(0o600)
    link = tmp_path / "worker.sock"
    link.symlink_to(secret)
    with pytest.raises(SandboxUnavailable, match="is not the socket just bound there"):
        chmod_socket(link, 0o666)
    with pytest.raises(SandboxUnavailable, match="is not the socket just bound there"):
        chmod_socket(secret, 0o666)  # a plain file in its place: refused too
    assert _mode(secret) == 0o600


def test_a_link_planted_at_the_socket_path_is_replaced_not_followed(tmp_path):
    secret = tmp_path / "secret"
    secret.write_text("the orchestrator's")
    secret.chmod(0o600)
    job_dir = make_job_dir(tmp_path / "jobs")
    (job_dir / "worker.sock").symlink_to(secret)
    with Channel(job_dir, max_message_bytes=1 << 20) as channel:  # ZeroMQ unlinks a stale path before bind
        assert stat.S_ISSOCK(os.lstat(channel.path).st_mode) and _mode(channel.path) == 0o666
    assert _mode(secret) == 0o600 and secret.read_text() == "the orchestrator's"


# ------------------------------------------------------------------ a second local user


@as_root
def test_another_local_user_cannot_reach_a_live_jobs_socket(open_root):
    job_dir = make_job_dir(open_root)
    with Channel(job_dir, max_message_bytes=1 << 20) as channel:
        assert _outcomes(_intruder(channel.path, 0.2)).keys() == {"EACCES"}

        open_root.chmod(0o711)  # the old layout: only search on the root
        try:
            assert "connected" in _outcomes(_intruder(channel.path, 0.2))  # so the root is what stops it
        finally:
            ensure_jobs_root(open_root)
        assert _mode(open_root) == 0o700

        # the worker (here: a peer of our own uid) still connects and gets the job
        peer = zmq.Context.instance().socket(zmq.PAIR)
        try:
            peer.setsockopt(zmq.LINGER, 0)
            peer.connect(f"ipc://{channel.path}")
            job = Job(job_id="j1", source="", class_name="Net", input_shape=(4,), num_classes=2)
            _send_when_connected(channel, job)
            assert peer.poll(5000), "our own peer never got the job"
            assert job_decoder().decode(peer.recv()) == job
        finally:
            peer.close(linger=0)


def _send_when_connected(channel: Channel, job: Job) -> None:
    deadline = time.monotonic() + 5  # the control intruder's half-open connection may hold the PAIR a moment
    while True:
        try:
            return channel.send(job)
        except ProtocolViolation:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


@as_root
def test_the_fake_backend_worker_runs_through_the_private_root(open_root):
    job = Job(job_id=new_job_id(), source=(MODELS / "good_mlp.py").read_text(), class_name="Net",
              input_shape=(1, 8, 8), num_classes=10)
    result = run_job(SubprocessBackend(), job, SandboxConfig(timeout_s=30, jobs_dir=str(open_root)))
    assert result.status == "passed", result.failure
    assert _mode(open_root) == 0o700 and list(open_root.iterdir()) == []


@pytest.mark.docker
@as_root
@pytest.mark.parametrize("runtime", ["runc", "runsc"])
def test_the_real_worker_wins_the_race_and_no_other_user_gets_in(docker_backend, open_root, runtime):
    """Uid 65534 on the host tries from before the container starts until Ready; the worker gets the job."""
    config = SandboxConfig(timeout_s=90, startup_timeout_s=90, container_runtime=runtime, jobs_dir=str(open_root))
    job = Job(job_id=new_job_id(), source=(MODELS / "good_mlp.py").read_text(), class_name="Net",
              input_shape=(1, 8, 8), num_classes=10)
    with Slot(docker_backend, config, slot_id=job.job_id) as slot:
        intruder = _intruder(slot.channel.path, 120)
        time.sleep(0.2)  # it is trying before the container exists
        slot.start()
        slot.wait_ready()
        outcomes = _outcomes(intruder, stop=True)
        result = execute(slot, job)
    assert outcomes.keys() == {"EACCES"} and outcomes["EACCES"] > 10, outcomes
    assert result.status == "passed", (result.failure, result.logs)
    assert result.check.params == 64 * 128 + 128 + 128 * 10 + 10
    assert list(open_root.iterdir()) == []

