"""`lensgen generate` as a user meets it: quiet loads, clear one-line errors, checks before the slow load,
bounded batches, prompt files, file modes."""

from lensgen import cli


def test_quiet_generate_prints_no_loading_noise(tmp_path, capfd):
    """Neither diffusers' "accelerate was not found" warning nor transformers' "Loading weights" bar."""
    from transformers.utils import logging as hf_logging

    assert hf_logging.is_progress_bar_enabled()  # so the bar would show if our loads did not hide it
    out = tmp_path / "a.png"
    assert cli.main(["generate", "a red circle", "--steps", "1", "-o", str(out), "-q"]) == 0
    captured = capfd.readouterr()
    assert captured.out.strip() == str(out)
    assert "accelerate" not in captured.err and "Loading weights" not in captured.err
    assert captured.err == ""
    assert hf_logging.is_progress_bar_enabled()  # restored after the load
