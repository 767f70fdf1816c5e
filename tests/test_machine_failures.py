"""Failures of the machine end in one line naming what failed, and stopping never hangs: a
TensorBoard writer wedged in close, SIGTERM, a full disk, a read-only run directory, `ulimit -v`
too low, too few file descriptors, a directory name that is not UTF-8 (issue 38 items 9, 10)."""

from __future__ import annotations

import errno
import importlib
import io
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, cast

import pytest
from test_artifacts import LATEST, TINY, train, trained  # noqa: F401 (a fixture)

from maml_rl import artifacts, checkpoint
from maml_rl.cli import main
from maml_rl.logger import RunLogger

if TYPE_CHECKING:
    from _typeshed import FileDescriptorOrPath, StrOrBytesPath
    from torch.utils.tensorboard import SummaryWriter

CLI = "import sys; from maml_rl.cli import main; sys.exit(main(sys.argv[1:]))"


def one_line(err: str) -> str:
    err = err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


# --- item 9: stopping never hangs ---


def test_a_tensorboard_writer_blocked_in_close_does_not_hang_the_logger(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(importlib.import_module("maml_rl.logger"), "TENSORBOARD_WAIT_S", 0.2)
    logger = RunLogger(tmp_path, 1, progress=False, tensorboard=False)
    release = threading.Event()

    class Wedged:  # SummaryWriter.close -> _AsyncWriter.flush -> Queue.join, forever
        def close(self) -> None:
            release.wait()

    logger._writer = cast("SummaryWriter", Wedged())  # the logger only closes it here
    closing = threading.Thread(target=logger.close, daemon=True)
    closing.start()
    closing.join(5.0)
    release.set()
    assert not closing.is_alive(), "RunLogger.close waited on the wedged writer"
    assert "TensorBoard did not finish writing within 0.2 s" in capsys.readouterr().out


def processes_naming(text: str) -> list[int]:
    """The pids of live processes whose command line contains `text` (forked workers keep
    their parent's)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if text.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:  # it ended meanwhile
                pass
    return found


@pytest.mark.parametrize("sampler", ["auto", "async"])
def test_sigterm_mid_run_is_one_line_exit_143_and_the_run_resumes(
    tmp_path: Path, sampler: str
) -> None:
    """Also with Gymnasium's worker processes (async): they inherit the CLI's SIGTERM handler
    by fork, and must end without a traceback each and without outliving the run."""
    run = tmp_path / "run"
    argv = ["train", "navigation", "--out", str(run), *TINY, "--set", "num_batches=10000"]
    argv += ["--set", f"sampler={sampler}"]
    process = subprocess.Popen(
        [sys.executable, "-c", CLI, *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, with its workers
    )
    metrics = run / "metrics.jsonl"
    deadline = time.monotonic() + 240
    try:
        while not (metrics.exists() and metrics.read_text().count("\n") >= 2):
            assert process.poll() is None and time.monotonic() < deadline, process.communicate()
            time.sleep(0.2)
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=120)
    finally:  # a failed test leaves no 10000-iteration run behind (nor its workers)
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    assert process.returncode == 143, err
    line = one_line(err)
    assert line.startswith("maml-rl: terminated (SIGTERM): interrupted; ") and "saved" in line
    if Path("/proc/self/cmdline").exists():
        assert processes_naming(str(run)) == [], "workers outlived the run"
    done = checkpoint.load(run / LATEST)["iteration"] + 1
    assert main(["train", "--resume", str(run), "--set", f"num_batches={done + 1}"]) == 0


# --- item 10: machine failures in one line ---


def test_a_full_disk_while_logging_metrics_is_one_line_naming_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    real_open = Path.open

    class FullDisk(io.StringIO):
        def write(self, text: str) -> int:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # as a handle's write does

    def open_(self: Path, mode: str = "r", *args: Any, **kwargs: Any) -> IO[Any]:
        if self.name == "metrics.jsonl" and "a" in mode:
            return FullDisk()
        return real_open(self, mode, *args, **kwargs)

    monkeypatch.setattr(Path, "open", open_)
    assert train(tmp_path / "run") == 1
    line = one_line(capsys.readouterr().err)
    assert line.startswith("maml-rl: error: No space left on device (ENOSPC): ")
    assert "metrics.jsonl" in line


def test_a_full_disk_that_torch_save_hides_behind_its_own_error_is_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Found by the second round (a real full tmpfs): torch.save's zip writer meets ENOSPC and
    then raises a RuntimeError ('unexpected pos') while closing."""

    torch = importlib.import_module("maml_rl.checkpoint").torch
    real_save = torch.save

    def save(state: object, target: object, *args: object, **kwargs: object) -> None:
        if isinstance(target, io.BytesIO):  # the checksum's copy, in memory
            return real_save(state, target, *args, **kwargs)
        try:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        finally:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 832")

    monkeypatch.setattr(torch, "save", save)
    assert train(tmp_path / "run") == 2
    line = one_line(capsys.readouterr().err)
    assert "checkpoint_best.pt: No space left on device" in line, line


def test_a_write_on_a_read_only_file_system_is_one_artifact_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found by the second round (a tmpfs remounted read-only): removing the temporary file
    that could not be created fails too (EROFS), and must not replace the one-line error."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(tmp_path / ".f.tmp.png"))

    monkeypatch.setattr(Path, "unlink", refuse)
    with pytest.raises(artifacts.ArtifactError, match=r"cannot write .*f\.png: Read-only file"):
        artifacts.write_with(tmp_path / "f.png", refuse)


@pytest.mark.parametrize("when", ["start", "mid-step"])
def test_memory_that_cannot_be_allocated_is_one_line(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    when: str,
) -> None:
    message = (
        "[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: "
        "you tried to allocate 9600000000 bytes. Error code 12 (Cannot allocate memory)"
    )

    def fail(*args: object, **kwargs: object) -> None:
        raise RuntimeError(message) if when == "mid-step" else MemoryError()

    training = importlib.import_module("maml_rl.train")
    monkeypatch.setattr(training, "meta_step" if when == "mid-step" else "build", fail)
    assert train(tmp_path / "run") == 1
    line = one_line(capsys.readouterr().err)
    assert line.startswith("maml-rl: error: out of memory (")


def test_ulimit_v_below_what_the_run_needs_is_refused_before_allocating(tmp_path: Path) -> None:
    script = textwrap.dedent(f"""
        import resource, sys
        import torch  # mapped before the limit: what is left is what the run may use
        from maml_rl.cli import main
        from pathlib import Path
        size = int(Path("/proc/self/status").read_text().split("VmSize:")[1].split()[0]) * 1024
        resource.setrlimit(resource.RLIMIT_AS, (size + 300 * 2**20, resource.RLIM_INFINITY))
        sys.exit(main(["train", "navigation", "--out", {str(tmp_path / "run")!r},
                       "--set", "meta_batch_size=40", "fast_batch_size=40",
                       "hidden_sizes=[256,256]", "--no-progress"]))
    """)
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 2, done.stderr[-3000:]
    line = one_line(done.stderr)
    assert "GiB of memory available here" in line, line


def test_too_few_file_descriptors_for_async_workers_is_one_line(tmp_path: Path) -> None:
    script = textwrap.dedent(f"""
        import resource, sys
        import torch, gymnasium
        from maml_rl.cli import main
        resource.setrlimit(resource.RLIMIT_NOFILE, (40, 40))
        sys.exit(main(["train", "navigation", "--out", {str(tmp_path / "run")!r},
                       "--set", "sampler=async", "meta_batch_size=20", "fast_batch_size=20",
                       "num_batches=1", "hidden_sizes=[8]", "--no-progress"]))
    """)
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 1, done.stderr[-3000:]
    line = one_line(done.stderr)  # and no worker's traceback on a broken pipe
    assert line.startswith("maml-rl: error: Too many open files (EMFILE)"), line
    assert not (tmp_path / "run").exists()


def test_a_run_directory_name_that_is_not_utf8_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = Path(os.fsdecode(bytes(tmp_path) + b"/run\xff"))
    assert train(run) == 1
    line = one_line(capsys.readouterr().err)
    assert line.startswith("maml-rl: error: cannot encode ") and "rename it" in line


@pytest.fixture
def read_only(
    trained: Path,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Path]:
    """A copy of the trained run that cannot be written: chmod where that works, else (as root,
    where it does not) every write under it fails with EROFS, as on a read-only mount."""
    run = tmp_path / "run"
    shutil.copytree(trained, run, ignore=shutil.ignore_patterns(".lock"))
    for path in [run, *run.rglob("*")]:
        path.chmod(0o555 if path.is_dir() else 0o444)
    if not os.access(run, os.W_OK):
        yield run
        for path in [run, *run.rglob("*")]:
            path.chmod(0o755)
        return
    inside = str(run) + os.sep

    def refuse(path: object) -> None:
        name = os.fsdecode(path) if isinstance(path, str | bytes | os.PathLike) else ""
        if (name + os.sep).startswith(inside) or name.startswith(inside):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), name)

    real_io_open, real_mkdir, real_os_open = io.open, os.mkdir, os.open
    real_replace, real_rename = os.replace, os.rename

    def io_open(file: FileDescriptorOrPath, mode: str = "r", *args: Any, **kwargs: Any) -> IO[Any]:
        if any(c in mode for c in "wax+"):
            refuse(file)
        return real_io_open(file, mode, *args, **kwargs)

    def mkdir(path: StrOrBytesPath, *args: Any, **kwargs: Any) -> None:
        if os.path.exists(path):
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), os.fsdecode(path))
        refuse(path)
        real_mkdir(path, *args, **kwargs)

    def os_open(path: StrOrBytesPath, flags: int, *args: Any, **kwargs: Any) -> int:
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            refuse(path)
        return real_os_open(path, flags, *args, **kwargs)

    def replace(src: StrOrBytesPath, dst: StrOrBytesPath, **kwargs: Any) -> None:
        refuse(dst)
        real_replace(src, dst, **kwargs)

    for module, name, value in [
        (io, "open", io_open),
        (os, "mkdir", mkdir),
        (os, "open", os_open),
        (os, "replace", replace),
        (os, "rename", replace),
    ]:
        monkeypatch.setattr(module, name, value)
    monkeypatch.setattr("builtins.open", io_open)
    yield run
    del real_rename


def test_a_read_only_run_is_refused_in_one_line_and_evaluate_writes_elsewhere_with_out(
    read_only: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    quick = ["--num-tasks", "2", "--num-steps", "1", "--no-progress"]
    commands = {
        "evaluate": ["evaluate", str(read_only), *quick],
        "render": ["render", str(read_only), "--steps", "0"],
        "plot": ["plot", str(read_only)],
        "resume": ["train", "--resume", str(read_only), "--set", "num_batches=3"],
    }
    for name, argv in commands.items():
        assert main(argv) in (1, 2), name
        line = one_line(capsys.readouterr().err)
        assert "Read-only file system" in line or "Permission denied" in line, (name, line)
        assert str(read_only) in line, (name, line)
    elsewhere = tmp_path / "elsewhere" / "eval"
    assert main(["evaluate", str(read_only), *quick, "--out", str(elsewhere)]) == 0
    out = capsys.readouterr().out
    assert f"wrote {elsewhere / 'adaptation.csv'}" in out
    assert (elsewhere / "evaluation.json").is_file() and not (read_only / "eval").exists()
