"""Forged launcher requests are refused with a clear reason and start nothing.

A client of the launcher may be a compromised orchestrator: every request here is
built by hand (plain msgpack maps, not the protocol's Structs) the way such a client
would, and sent to a real launcher on a real engine, first through ``handle`` and then
through its socket. After each, no container labelled with the launcher's root exists.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import msgspec
import pytest
import zmq

from orchestrator.launcher.protocol import (
    MAX_FRAME_BYTES,
    MAX_REQUEST_BYTES,
    JobDir,
    Ok,
    Refused,
    Staged,
    Welcome,
    reply_decoder,
)

pytestmark = pytest.mark.docker

SESSION = "s" * 12
OTHER = "o" * 12
SMALL = {"memory": "256m", "cpus": 1.0, "pids": 64, "tmpfs_size": "16m", "timeout_s": 30.0}


def forge(type_: str, session: str = SESSION, **fields) -> bytes:
    """A request as a hostile client writes it: any map, msgpack-encoded."""
    return msgspec.msgpack.encode({"type": type_, "session": session, **fields})


def ask(launcher, type_: str, session: str = SESSION, **fields):
    """Forge a request and hand it to the launcher."""
    return launcher.handle(forge(type_, session, **fields))


def job_dir(launcher, job_id: str, session: str = SESSION) -> Path:
    reply = ask(launcher, "MakeJobDir", session, job_id=job_id)
    assert isinstance(reply, JobDir), reply
    return Path(reply.path)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """A prepared data directory below the launcher's data source (tmp_path)."""
    data = tmp_path / "run" / "data"
    data.mkdir(parents=True)
    (data / "train_x.npy").write_bytes(b"\x00" * 512)
    return data


@pytest.fixture
def refused(launcher, sandboxes_of):
    """``refused(payload_or_reply, *words)``: the reply is a Refused naming every word, and nothing started."""

    def check(reply, *words: str) -> str:
        if isinstance(reply, bytes):
            reply = launcher.handle(reply)
        assert isinstance(reply, Refused), f"not refused: {reply}"
        for word in words:
            assert word.lower() in reply.reason.lower(), f"{word!r} not in the reason: {reply.reason}"
        assert sandboxes_of(launcher.root) == [], f"a refused request started a sandbox: {reply.reason}"
        return reply.reason

    return check


# ------------------------------------------------------------------ fields no request has

@pytest.mark.parametrize(("extra", "word"), [
    ({"privileged": True}, "privileged"),
    ({"binds": ["/:/host:rw"]}, "binds"),
    ({"volumes": {"/var/run/docker.sock": {"bind": "/docker.sock", "mode": "rw"}}}, "volumes"),
    ({"network_mode": "host"}, "network_mode"),
    ({"cap_add": ["SYS_ADMIN"]}, "cap_add"),
    ({"user": "0:0"}, "user"),
    ({"security_opt": ["seccomp=unconfined"]}, "security_opt"),
    ({"devices": ["/dev/kmsg"]}, "devices"),
    ({"pid_mode": "host"}, "pid_mode"),
    ({"labels": {"org.pytorch-researcher.launcher": "elsewhere"}}, "labels"),
    ({"command": ["sh", "-c", "id"]}, "command"),
    ({"environment": {"LD_PRELOAD": "/tmp/x.so"}}, "environment"),
    ({"job_dir": "/etc"}, "job_dir"),
])
def test_a_create_carrying_a_field_the_protocol_lacks_is_refused_by_name(launcher, refused, extra, word):
    job_dir(launcher, "j1")
    reason = refused(forge("Create", job_id="j1", **SMALL, **extra), "unknown field", word)
    assert reason.startswith("not a launcher request")


@pytest.mark.parametrize(("fields", "words"), [
    ({"image": "alpine"}, ("image 'alpine'", "not the launcher's")),
    ({"image": "pytorch-researcher-sandbox:evil"}, ("image", "not the launcher's")),
    ({"memory": "64g"}, ("memory 64g", "over the launcher's maximum 4g")),
    ({"memory": str(4 * 1024**3 + 1)}, ("memory", "maximum 4g")),
    ({"memory": "lots"}, ("'lots' is not a size",)),
    ({"memory": "256m\n"}, ("is not a size",)),  # refused by the launcher, not left to the engine
    ({"tmpfs_size": "1g"}, ("tmpfs 1g", "over the memory cap")),
    ({"cpus": 3.0}, ("cpus 3.0", "outside (0, 2]")),
    ({"cpus": 0.0}, ("cpus 0.0", "outside")),
    ({"cpus": math.nan}, ("cpus nan", "outside")),
    ({"cpus": math.inf}, ("cpus inf", "outside")),
    ({"pids": 100_000}, ("pids 100000", "outside [16, 512]")),
    ({"pids": 4}, ("pids 4", "outside")),
    ({"timeout_s": 10_000.0}, ("time limit 10000 s", "outside (0, 600]")),
    ({"timeout_s": math.nan}, ("time limit", "outside")),
    ({"nofile": 10**7}, ("nofile", "outside")),
    ({"runtime": "runsc"}, ("runtime 'runsc'", "not allowed")),
    ({"runtime": "nvidia"}, ("runtime 'nvidia'", "not allowed")),
    ({"device": "cuda"}, ("device 'cuda'", "not granted", "--gpus all")),
    ({"device": "cuda", "gpu": "0"}, ("device 'cuda'", "not granted")),
    ({"gpu": "0"}, ("cpu sandbox names no gpu",)),
    ({"device": "tpu"}, ("device 'tpu'", "not granted")),
])
def test_a_create_over_the_launchers_maxima_is_refused_naming_the_excess(launcher, refused, fields, words):
    job_dir(launcher, "j1")
    refused(forge("Create", job_id="j1", **{**SMALL, **fields}), *words)


def test_every_excess_of_one_create_is_named_at_once(launcher, refused):
    job_dir(launcher, "j1")
    reason = refused(forge("Create", job_id="j1", image="alpine", memory="64g", cpus=64.0, pids=10**6,
                           timeout_s=1e9, runtime="runsc", device="cuda"))
    for word in ("image", "memory", "cpus", "pids", "time limit", "runtime", "device"):
        assert word in reason, (word, reason)


@pytest.mark.parametrize(("fields", "says"), [
    ({"memory": 2**40}, "Expected `str`, got `int`"),
    ({"cpus": "all"}, "Expected `float`, got `str`"),
    ({"pids": -1.5}, "Expected `int`, got `float`"),
    ({"warm_up": "yes"}, "Expected `bool`"),
    ({"job_id": None}, "Expected `str`, got `None`"),
])
def test_a_create_with_a_wrongly_typed_field_is_refused(launcher, refused, fields, says):
    job_dir(launcher, "j1")
    refused(forge("Create", **{"job_id": "j1", **SMALL, **fields}), "not a launcher request", says)


# ------------------------------------------------------------------ jobs, data and sessions

def test_a_create_without_make_job_dir_is_refused(launcher, refused):
    refused(forge("Create", job_id="never-made", **SMALL), "no job directory", "MakeJobDir")


def test_a_create_for_another_sessions_job_is_refused(launcher, refused, dirs_in):
    job_dir(launcher, "theirs", session=OTHER)
    refused(forge("Create", job_id="theirs", **SMALL), "no job directory of this session")
    refused(forge("Kill", job_id="theirs"), "no sandbox in this session")
    refused(forge("Logs", job_id="theirs"), "no sandbox in this session")
    assert isinstance(ask(launcher, "Remove", job_id="theirs"), Ok)  # idempotent, and a no-op on others' jobs
    assert len(dirs_in(launcher.root)) == 1, "another session removed a job dir it does not own"
    refused(forge("MakeJobDir", job_id="theirs"), "exists already")


@pytest.mark.parametrize("job_id", ["../../etc", "a/b", "", "x" * 65, "job id", "j\x00", "..", "j1\n"])
def test_a_job_id_that_is_not_a_plain_name_is_refused(launcher, refused, dirs_in, job_id):
    refused(forge("MakeJobDir", job_id=job_id), "a job id is 1-64 letters")
    assert dirs_in(launcher.root) == []


def test_a_data_handle_never_staged_is_refused(launcher, refused, data_dir):
    job_dir(launcher, "j1")
    refused(forge("Create", job_id="j1", data="data-" + "0" * 32, **SMALL), "data handle", "not staged")
    staged = ask(launcher, "StageData", session=OTHER, source=str(data_dir))
    assert isinstance(staged, Staged), staged
    refused(forge("Create", job_id="j1", data=staged.handle, **SMALL), "not staged by this session")
    refused(forge("Create", job_id="j1", data="../../etc", **SMALL), "not staged")


def test_stage_data_outside_the_data_sources_is_refused(launcher, refused, dirs_in):
    for source in ("/etc", "/", "/var/run", "relative/path", f"{launcher.config.data_sources[0]}/../.."):
        refused(forge("StageData", source=source), "data source")
    assert dirs_in(launcher.root) == []


def test_stage_data_through_a_symlink_escaping_the_source_is_refused(launcher, refused, dirs_in, tmp_path):
    outside = Path("/tmp") / f"rl-outside-{os.getpid()}"
    outside.mkdir(exist_ok=True)
    try:
        (outside / "secret.txt").write_text("host secret")
        (tmp_path / "escape").symlink_to(outside)
        refused(forge("StageData", source=str(tmp_path / "escape")), "symbolic link")
        (tmp_path / "data").mkdir()
        (tmp_path / "data" / "secret.npy").symlink_to(outside / "secret.txt")
        refused(forge("StageData", source=str(tmp_path / "data")), "secret.npy cannot be staged")
        assert dirs_in(launcher.root) == []
    finally:
        for entry in outside.iterdir():
            entry.unlink()
        outside.rmdir()


@pytest.mark.parametrize("session", ["", "short", "s" * 65, "../../x1234", "s e s s i o n", "ses\nsion1",
                                     "sessionid\n"])
def test_a_bad_session_id_is_refused(launcher, refused, session):
    refused(forge("Hello", session=session), "session must be 8-64")
    refused(forge("MakeJobDir", session=session, job_id="j1"), "session must be 8-64")


def test_a_request_with_the_wrong_protocol_is_refused(launcher, refused):
    refused(forge("Hello", protocol=999), "protocol", "same version")


def test_a_session_cannot_hoard_job_dirs_or_data_copies(make_launcher, dirs_in, data_dir):
    launcher = make_launcher(max_sandboxes=2)
    for i in range(4):  # twice the sandboxes it may run
        job_dir(launcher, f"j{i}")
    reply = ask(launcher, "MakeJobDir", job_id="j4")
    assert isinstance(reply, Refused) and "remove some first" in reply.reason, reply
    for _ in range(8):
        assert isinstance(ask(launcher, "StageData", source=str(data_dir)), Staged)
    reply = ask(launcher, "StageData", source=str(data_dir))
    assert isinstance(reply, Refused) and "staged 8 data dirs" in reply.reason, reply
    assert len(dirs_in(launcher.root)) == 12
    assert isinstance(ask(launcher, "Release"), Ok)
    assert dirs_in(launcher.root) == []


# ------------------------------------------------------------------ frames that are not requests

@pytest.mark.parametrize("payload", [
    b"", b"\x00", b"\xc1", b"garbage \xff\xfe", os.urandom(512),
    msgspec.msgpack.encode([1, 2, 3]),
    msgspec.msgpack.encode(42),
    msgspec.msgpack.encode("Create"),
    msgspec.msgpack.encode(None),
    msgspec.msgpack.encode({"session": SESSION}),  # no type
    msgspec.msgpack.encode({"type": "Exec", "session": SESSION}),
    msgspec.msgpack.encode({"type": "_Request", "session": SESSION}),
    msgspec.msgpack.encode({"type": "Refused", "session": SESSION, "reason": "x"}),  # a reply, not a request
    msgspec.msgpack.encode({"type": "Create", "session": SESSION}),  # no job_id
    # nested deeper than the decoder recurses, within the size limit
    b"\x82\xa1x" + b"\x81\xa1a" * 20_000 + b"\xc0" + b"\xa4type\xa5Hello",
], ids=["empty", "nul", "never-used-byte", "text", "random", "array", "int", "str", "nil", "no-type",
        "unknown-type", "private-type", "reply-type", "missing-field", "deep-nesting"])
def test_a_frame_that_is_no_request_is_refused(launcher, refused, payload):
    assert len(payload) <= MAX_REQUEST_BYTES
    refused(payload, "not a launcher request")


def test_an_oversized_request_is_refused_before_it_is_read(launcher, refused):
    payload = forge("Hello", pad="x" * MAX_REQUEST_BYTES)
    refused(payload, f"{MAX_REQUEST_BYTES}-byte limit")


# ------------------------------------------------------------------ what a valid request starts

def test_a_valid_create_starts_a_hardened_sandbox_with_only_its_own_mounts(launcher, docker_client, sandboxes_of,
                                                                            dirs_in, data_dir):
    job = job_dir(launcher, "good1")
    staged = ask(launcher, "StageData", source=str(data_dir))
    assert isinstance(staged, Staged) and (staged.files, staged.bytes) == (1, 512)
    copy = launcher.root / staged.handle
    assert copy.is_dir() and copy != data_dir
    reply = ask(launcher, "Create", job_id="good1", data=staged.handle, **SMALL)
    assert isinstance(reply, Ok), reply
    try:
        [name] = sandboxes_of(launcher.root)
        info = docker_client.api.inspect_container(name)
        host, config = info["HostConfig"], info["Config"]
        assert host["ReadonlyRootfs"] is True
        assert host["Privileged"] is False
        assert [cap.upper() for cap in host["CapDrop"]] == ["ALL"] and not host.get("CapAdd")
        assert host["NetworkMode"] == "none"
        assert any(opt.startswith("no-new-privileges") for opt in host["SecurityOpt"])
        assert config["User"] == "65534:65534"
        assert host["Memory"] == 256 * 1024**2 and host["PidsLimit"] == 64 and host["NanoCpus"] == 10**9
        assert host.get("Runtime") == "runc" and not host.get("DeviceRequests")
        assert sorted(host["Binds"]) == sorted([f"{job}:/job:ro", f"{copy}:/data:ro"]), host["Binds"]
        assert not [m for m in info["Mounts"] if m["Type"] == "bind" and m["RW"]]
        assert config["Labels"]["org.pytorch-researcher.launcher"] == str(launcher.root)
    finally:
        assert isinstance(ask(launcher, "Remove", job_id="good1"), Ok)
    assert sandboxes_of(launcher.root) == []
    assert not job.exists()
    assert dirs_in(launcher.root) == [staged.handle]  # the data copy stays until the session ends
    assert isinstance(ask(launcher, "Release"), Ok)
    assert dirs_in(launcher.root) == []


def test_a_session_that_stops_renewing_its_lease_loses_its_sandboxes(launcher, sandboxes_of, dirs_in):
    job_dir(launcher, "lapse1")
    assert isinstance(ask(launcher, "Create", job_id="lapse1", **SMALL), Ok)
    assert len(sandboxes_of(launcher.root)) == 1
    launcher.sweep(time.monotonic() + 1.0)  # within the lease: nothing happens
    assert len(sandboxes_of(launcher.root)) == 1
    launcher.sweep(time.monotonic() + launcher.config.lease_s + 1.0)
    assert sandboxes_of(launcher.root) == [] and dirs_in(launcher.root) == []
    refused_reply = ask(launcher, "Kill", job_id="lapse1")
    assert isinstance(refused_reply, Refused) and "no sandbox" in refused_reply.reason


def test_no_more_sandboxes_than_the_maximum(make_launcher, sandboxes_of):
    launcher = make_launcher(max_sandboxes=1)
    job_dir(launcher, "first")
    job_dir(launcher, "second")
    assert isinstance(ask(launcher, "Create", job_id="first", **SMALL), Ok)
    reply = ask(launcher, "Create", job_id="second", **SMALL)
    assert isinstance(reply, Refused) and "--max-sandboxes" in reply.reason, reply
    assert len(sandboxes_of(launcher.root)) == 1
    ask(launcher, "Release")
    assert sandboxes_of(launcher.root) == []


# ------------------------------------------------------------------ through the socket

def _dealer(ctx: zmq.Context, address: str) -> zmq.Socket:
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(address)
    return sock


def _reply(sock: zmq.Socket, timeout_s: float = 10.0):
    if not sock.poll(int(timeout_s * 1000)):
        return None
    frames = sock.recv_multipart()
    assert frames[0] == b"" and len(frames) == 2, frames
    return reply_decoder.decode(frames[1])


def test_garbage_and_oversized_frames_on_the_socket_are_refused_and_the_launcher_serves_on(served, sandboxes_of):
    ctx = zmq.Context()
    try:
        sock = _dealer(ctx, served.address)
        for frames in ([b"only one frame"], [b"", b"a", b"b"], [b"x", b"y"], [b"", b""], [b"", b"\xff" * 100]):
            sock.send_multipart(frames)
            reply = _reply(sock)
            assert isinstance(reply, Refused), (frames, reply)
            assert "delimiter frame" in reply.reason or "not a launcher request" in reply.reason, reply.reason
        # over the request limit but under the frame limit: read, refused, answered
        sock.send_multipart([b"", forge("Hello", pad="x" * (MAX_REQUEST_BYTES + 1))])
        reply = _reply(sock)
        assert isinstance(reply, Refused) and f"{MAX_REQUEST_BYTES}-byte limit" in reply.reason, reply

        # over the frame limit: ZeroMQ drops the sender without a reply
        big = _dealer(ctx, served.address)
        big.send_multipart([b"", b"\x00" * (MAX_FRAME_BYTES + 1)])
        assert _reply(big, timeout_s=1.5) is None
        big.close(linger=0)

        for sock_ in (_dealer(ctx, served.address), sock):  # a fresh client and the earlier one
            sock_.send_multipart([b"", forge("Hello", rid=7)])
            reply = _reply(sock_)
            assert isinstance(reply, Welcome) and reply.rid == 7, reply
            assert reply.devices == ("cpu",) and reply.max_memory == "4g" and reply.image_present
            sock_.close(linger=0)
        assert served.alive()
        assert sandboxes_of(served.launcher.root) == []
    finally:
        ctx.term()


def test_a_flood_of_unanswerable_requests_does_not_wedge_the_launcher(served):
    """Requests that made ``handle`` raise once left their pending count behind, 256 of them froze it."""
    ctx = zmq.Context()
    try:
        sock = _dealer(ctx, served.address)
        deep = b"\x82\xa1x" + b"\x81\xa1a" * 20_000 + b"\xc0" + b"\xa4type\xa5Hello"
        for _ in range(300):
            sock.send_multipart([b"", deep])
        answered = 0
        while answered < 300 and (reply := _reply(sock, timeout_s=30)) is not None:
            assert isinstance(reply, Refused), reply
            answered += 1
        assert answered == 300
        sock.send_multipart([b"", forge("Hello")])
        assert isinstance(_reply(sock), Welcome)
        sock.close(linger=0)
    finally:
        ctx.term()


def test_until_idle_exits_only_after_a_client_came_and_went(launcher):
    """--until-idle (compose): no exit before the first client; exit once the last one has gone."""
    import threading

    from orchestrator.launcher.client import hello

    stop, ready = threading.Event(), threading.Event()
    thread = threading.Thread(target=launcher.serve, args=(stop,),
                              kwargs={"on_ready": ready.set, "until_idle_s": 0.3}, daemon=True)
    thread.start()
    try:
        assert ready.wait(10)
        time.sleep(1.0)
        assert thread.is_alive(), "exited before any client came"
        assert isinstance(hello(launcher.config.address), Welcome)  # a session opened and released
        thread.join(10)
        assert not thread.is_alive(), "still serving 10 s after its only client left"
    finally:
        stop.set()
        thread.join(10)
