"""fastgan.progress: a tqdm bar on a terminal (or FASTGAN_PROGRESS=1), plain lines otherwise; bench's bar total."""
import io
import re

import pytest

from fastgan import progress as P

CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")   # any control character but \t and \n


class _Tty(io.StringIO):
    """A stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


@pytest.fixture
def no_env(monkeypatch):
    monkeypatch.delenv("FASTGAN_PROGRESS", raising=False)


@pytest.mark.parametrize("env, tty, on", [
    (None, False, False), (None, True, True),
    ("0", True, False), ("off", True, False), ("1", False, True), ("yes", False, True),
])
def test_bars_enabled_follows_env_then_tty(monkeypatch, env, tty, on):
    if env is None:
        monkeypatch.delenv("FASTGAN_PROGRESS", raising=False)
    else:
        monkeypatch.setenv("FASTGAN_PROGRESS", env)
    monkeypatch.setattr("sys.stderr", _Tty() if tty else io.StringIO())
    assert P.bars_enabled() is on


def test_closed_stream_means_no_bar(no_env):
    s = io.StringIO()
    s.close()
    assert P.bars_enabled(s) is False


def test_not_a_terminal_prints_plain_lines(no_env, capsys):
    bar = P.progress_bar(total=3, desc="train", unit="step")
    assert isinstance(bar, P._Plain)
    for i in range(3):
        bar.update(1)
        bar.set_postfix_str(f"loss {i}")
        bar.write(f"step {i + 1}/3 | loss {i}")
    bar.close()
    assert list(P.progress(range(4), total=4, desc="features")) == [0, 1, 2, 3]
    out = capsys.readouterr()
    assert out.out == "step 1/3 | loss 0\nstep 2/3 | loss 1\nstep 3/3 | loss 2\n"
    assert out.err == ""
    assert not CONTROL.search(out.out)


def test_env_off_beats_a_terminal(monkeypatch, capsys):
    monkeypatch.setenv("FASTGAN_PROGRESS", "0")
    err = _Tty()
    monkeypatch.setattr("sys.stderr", err)
    with P.progress_bar(total=2, desc="train") as bar:
        bar.update(2)
        bar.write("line")
    assert isinstance(bar, P._Plain)
    assert err.getvalue() == "" and capsys.readouterr().out == "line\n"


def test_terminal_draws_a_tqdm_bar_and_writes_lines_above_it(no_env, monkeypatch, capsys):
    from tqdm.std import tqdm

    err = _Tty()
    monkeypatch.setattr("sys.stderr", err)
    bar = P.progress_bar(total=5, desc="train", unit="step")
    assert isinstance(bar, P._Bar) and isinstance(bar.bar, tqdm)
    bar.update(5)
    bar.write("step 5/5")
    assert bar.bar.n == 5 and bar.bar.total == 5
    bar.close()
    assert "train" in err.getvalue() and "\r" in err.getvalue()        # the bar went to (fake) stderr
    assert "step 5/5\n" in capsys.readouterr().out                       # the line to stdout


def test_forced_progress_iterates_through_tqdm(monkeypatch):
    monkeypatch.setenv("FASTGAN_PROGRESS", "1")
    err = io.StringIO()
    monkeypatch.setattr("sys.stderr", err)
    assert list(P.progress(iter(range(3)), total=3, desc="features", unit="batch")) == [0, 1, 2]
    assert "features" in err.getvalue()


def test_bench_bar_total_is_the_number_of_rows(monkeypatch):
    """``fastgan bench``'s bar counts the rows run_bench measures (eager-tutorial once, others per precision)."""
    import torch

    from fastgan.bench import harness
    from fastgan.bench.command import row_count

    def fake_row(mode, spec, cfg, case, precision, data, device, bc, timer=None):
        return {"variant": case.variant, "resolution": case.resolution, "batch": case.batch, "mode": mode,
                "precision": "fp32" if mode == "eager-tutorial" else precision, "status": "skipped", "reason": "stub"}

    monkeypatch.setattr(harness, "run_row", fake_row)
    monkeypatch.setattr(harness, "step_flops", lambda *a, **k: (None, "stub"))
    bc = harness.BenchConfig.matrix(["dcgan"], [16], [4, 8], precisions=["auto", "fp32", "bf16"],
                                    modes=["eager-tutorial", "eager-best", "fastgan"], width=4, device="cpu",
                                    matmul_ceiling=False)
    rows = harness.run_bench(bc, log=None)["rows"]
    assert row_count(bc, torch.device("cpu")) == len(rows) == 2 * (1 + 2 + 2)
