"""A runs dir this uid cannot write is a usage error before anything is written (compose's root-owned ./runs)."""

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from orchestrator import cli
from orchestrator.exceptions import UsageError
from orchestrator.research import check_runs_dir
from tests.ci import needs_root

OTHER_UID = 10001


def _as_another_user(path):
    """check_runs_dir(path) as a uid that does not own it: (raised, message)."""
    if os.geteuid() != 0:  # not root: a directory of ours without write permission is the same case
        return _in_process(path)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child drops to another uid; nothing but check_runs_dir runs there
        os.close(read)
        try:
            os.setgroups([])
            os.setgid(OTHER_UID)
            os.setuid(OTHER_UID)
            try:
                check_runs_dir(path)
                message = "ok"
            except UsageError as exc:
                message = f"UsageError: {exc}"
            except BaseException as exc:  # noqa: BLE001 - reported to the parent, which fails
                message = f"{type(exc).__name__}: {exc}"
            os.write(write, message.encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as reader:
        message = reader.read()
    os.waitpid(pid, 0)
    return message


def _in_process(path):
    try:
        check_runs_dir(path)
    except UsageError as exc:
        return f"UsageError: {exc}"
    return "ok"


@pytest.fixture
def unwritable():
    """A root-owned 0755 runs dir, as Docker makes a missing bind-mount source (not root: ours, 0555).

    In a 0755 directory of the system temp dir, so that the other uid can reach it (pytest's
    own tmp_path is below a 0700 directory).
    """
    top = Path(tempfile.mkdtemp(prefix="runs-dir-test-"))
    top.chmod(0o755)
    runs = top / "runs"
    runs.mkdir(mode=0o755)
    if os.geteuid() != 0:
        runs.chmod(0o555)
    yield runs
    runs.chmod(0o755)
    shutil.rmtree(top)


def test_a_runs_dir_below_a_directory_this_uid_cannot_search_is_refused(tmp_path):
    needs_root("needs root to act as a second uid")
    hidden = tmp_path / "hidden"
    hidden.mkdir(mode=0o700)
    assert _as_another_user(hidden / "runs").startswith(f"UsageError: cannot write the runs dir {hidden}/runs")


def test_a_runs_dir_of_another_owner_is_refused_with_the_fix(unwritable):
    uid = OTHER_UID if os.geteuid() == 0 else os.geteuid()
    message = _as_another_user(unwritable)
    assert message == (f"UsageError: cannot write the runs dir {unwritable} as uid {uid}: under compose set "
                       "RESEARCHER_UID and RESEARCHER_GID to its owner (`id -u`, `id -g`, e.g. in .env), or chown it")
    # A missing runs dir below it: the nearest existing parent decides.
    assert _as_another_user(unwritable / "deeper" / "runs").startswith(
        f"UsageError: cannot write the runs dir {unwritable}/deeper/runs as uid {uid}")


def test_a_writable_or_missing_runs_dir_passes(tmp_path):
    check_runs_dir(tmp_path)
    check_runs_dir(tmp_path / "not" / "yet")  # made with its parents by the run
    assert not (tmp_path / "not").exists()  # the check writes nothing


def test_a_runs_dir_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "runs").write_text("not a directory")
    with pytest.raises(UsageError, match="cannot write the runs dir"):
        check_runs_dir(tmp_path / "runs")


def test_researcher_run_exits_2_before_anything_is_written_or_any_sandbox(tmp_path, monkeypatch, capsys):
    """The CLI's order: the runs dir first, before data, sandbox backend or run directory."""
    for name in [n for n in os.environ if n.startswith(cli.ENV_PREFIX)]:
        monkeypatch.delenv(name)

    def no_backend(*args, **kwargs):
        raise AssertionError("a sandbox backend was asked for although the runs dir is not writable")

    runs = tmp_path / "runs"
    runs.mkdir()
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: False if str(path) == str(runs) else real_access(path, mode, **kw))
    monkeypatch.setattr(cli, "backend_factory", no_backend)
    monkeypatch.setattr(cli, "locate_data", no_backend)
    code = cli.main(["run", "--runs-dir", str(runs), "--max-candidates", "1", "--name", "never"])
    err = capsys.readouterr().err
    assert code == cli.EXIT_USAGE, err
    assert f"cannot write the runs dir {runs} as uid {os.geteuid()}" in err and "RESEARCHER_UID" in err
    assert list(runs.iterdir()) == []
