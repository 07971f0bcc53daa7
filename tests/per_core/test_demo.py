"""``python -m per_core.demo``: user errors are one line and exit 2, like the other CLIs."""

import pytest

from per_core.demo import main


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["--epochs", "0"], "epochs"),
        (["--seed", "-1"], "seed"),
    ],
)
def test_bad_values_print_one_error_line(tmp_path, capsys, argv, match):
    assert main([*argv, "--out", str(tmp_path / "d"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and match in err[0] and "Traceback" not in err[0]


def test_an_out_that_is_a_file_prints_one_error_line(tmp_path, capsys):
    target = tmp_path / "a_file"
    target.write_text("keep me")
    assert main(["--out", str(target), "--no-progress", "--epochs", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and target.read_text() == "keep me"


def test_debug_shows_the_traceback(tmp_path):
    with pytest.raises(ValueError, match="epochs"):
        main(["--epochs", "0", "--out", str(tmp_path / "d"), "--debug", "--no-progress"])
