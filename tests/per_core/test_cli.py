"""How every command line ends: per_core.cli.run_command and say, in process and through real pipes."""

import io
import json
import os
import subprocess
import sys

import pytest

from per_core.cli import EXIT_PIPE, run_command, say


def _raises(err: BaseException):
    def body() -> int:
        raise err

    return body


def test_run_command_returns_the_body_status():
    assert run_command(lambda: 0) == 0
    assert run_command(lambda: 1) == 1


def test_run_command_user_error_is_one_line_exit_2(capsys):
    assert run_command(_raises(ValueError("--lam must be >= 0, got -1"))) == 2
    assert capsys.readouterr().err == "error: --lam must be >= 0, got -1\n"


def test_run_command_other_errors_and_debug_keep_their_traceback():
    with pytest.raises(KeyError):  # not a user error: a bug shows its traceback
        run_command(_raises(KeyError("x")))
    with pytest.raises(RuntimeError):  # not in this command's list
        run_command(_raises(RuntimeError("x")), errors=(ValueError,))
    with pytest.raises(ValueError):
        run_command(_raises(ValueError("x")), debug=True)
    with pytest.raises(KeyboardInterrupt):
        run_command(_raises(KeyboardInterrupt()), debug=True)


def test_run_command_interrupt_says_what_was_kept_exit_130(capsys):
    assert run_command(_raises(KeyboardInterrupt()), interrupted=lambda: "interrupted; epochs 1-3 are saved") == 130
    assert capsys.readouterr().err == "\ninterrupted; epochs 1-3 are saved\n"
    assert run_command(_raises(KeyboardInterrupt())) == 130
    assert "every file written so far is complete" in capsys.readouterr().err


def _with_closed_stdout(argv: list[str]) -> tuple[int, str]:
    """Run ``python -m ...`` whose reader closes stdout before the first line (``| head -0``)."""
    proc = subprocess.Popen([sys.executable, "-m", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdout.close()
    _, err = proc.communicate(timeout=300)
    return proc.returncode, err


def test_closed_stdout_does_not_stop_training_and_ends_analysis_quietly(tmp_path):
    out = tmp_path / "run"
    rc, err = _with_closed_stdout(
        ["per_core.train", "--smoke", "--epochs", "3", "--record", "layer1", "--out", str(out), "--no-progress"]
    )
    assert rc == 0, err
    assert "Traceback" not in err and err.count("stdout was closed") == 1, err
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3]  # every epoch trained after the pipe closed

    rc, err = _with_closed_stdout(["analysis.bounds", str(out), "--no-progress"])
    assert (rc, err) == (EXIT_PIPE, "")  # no traceback, no "error:": the reader has gone
    assert (out / "analysis" / "bounds.csv").is_file()  # written before the summary was printed


def test_a_closed_pipe_carrying_stdout_and_stderr_does_not_stop_training(tmp_path):
    out = tmp_path / "run"
    argv = ["per_core.train", "--smoke", "--epochs", "3", "--record", "none", "--out", str(out), "--no-progress"]
    argv += ["--method", "bn", "--lam", "0.1"]  # a flag without effect: a note on stderr before training
    proc = subprocess.Popen([sys.executable, "-m", *argv], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    proc.stdout.close()  # 2>&1 | head -0: the notes have nowhere to go either
    assert proc.wait(timeout=300) == 0
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 3


class _ClosedPipe(io.StringIO):
    """A stdout whose reader has gone, without a file descriptor (as in some notebook or IDE consoles)."""

    def write(self, text: str) -> int:
        raise BrokenPipeError(32, "Broken pipe")


def test_say_goes_on_when_stdout_without_a_descriptor_is_closed(monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdout", _ClosedPipe())
    say("epoch 1")  # no exception: the job goes on
    replaced = sys.stdout
    assert replaced.name == os.devnull
    say("epoch 2")
    replaced.close()
    assert capsys.readouterr().err.count("stdout was closed") == 1


def test_a_bar_is_shown_in_a_kernel_not_in_a_process_that_imported_ipykernel(monkeypatch):
    # before: "ipykernel" in sys.modules counted as a notebook; nbclient (the notebook tests, a Jupyter server)
    # imports it, and the bars' carriage returns then went into captured stderr
    pytest.importorskip("ipykernel")
    IPython = pytest.importorskip("IPython")

    from per_core.cli import bar_shown

    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)
    assert not bar_shown(True)
    monkeypatch.setattr(IPython, "get_ipython", lambda: type("Shell", (), {"kernel": object()})())
    assert bar_shown(True) and not bar_shown(False)

    def broken() -> None:
        raise RuntimeError("a half-imported IPython")

    monkeypatch.setattr(IPython, "get_ipython", broken)
    assert not bar_shown(True)  # before: the RuntimeError
    monkeypatch.setattr(IPython, "get_ipython", lambda: type("Shell", (), {"kernel": property(lambda self: 1 / 0)})())
    assert not bar_shown(True)


def test_running_the_library_module_names_the_commands():
    # an audit: python -m per_core.cli --help printed nothing and exited 0
    proc = subprocess.run([sys.executable, "-m", "per_core.cli", "--help"], capture_output=True, text=True)
    assert proc.returncode == 1 and proc.stdout == ""
    assert "it is not a command" in proc.stderr and "python -m per_core.train" in proc.stderr


@pytest.mark.parametrize(
    ("module", "argv"),
    [
        ("per_core.train", ["--smoke", "--out", ""]),
        ("per_core.train", ["--smoke", "--data-dir", ""]),
        ("per_core.demo", ["--out", ""]),
        ("per_core.sweep", ["--smoke", "--out", ""]),
        ("per_core.sweep", ["--table", ""]),
        ("analysis.plot", ["runs", "--out", ""]),
        ("analysis.figures", ["--out", ""]),
        ("analysis.figures", ["--runs", ""]),
    ],
)
def test_an_empty_path_flag_is_refused(module, argv, capsys, tmp_path, monkeypatch):
    # a review: analysis.plot R --out "" wrote its figures into the working directory, sweep --table "" tabled
    # every run below it (an unset "$OUT" in a script)
    import importlib

    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as stop:
        importlib.import_module(module).main(argv)
    assert stop.value.code == 2
    assert "an empty path (an unset shell variable?): name a folder" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []
