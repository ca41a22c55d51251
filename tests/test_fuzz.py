"""Property-based fuzzing of everything a user hands fastgan: `train` flags and TOML configs, the other commands'
flags, dataset folders and npz files, and the files of a finished run read back by `sample`, `eval` and
`train --resume`.

The contract checked on every case: the command returns 0 (the input is valid, or handled as documented — files
without an image extension, hidden entries and empty class folders in a dataset folder are skipped) or 2 with one
`error: ...` line on stderr (after `note:` lines at most) and no traceback; and it writes nothing outside the run
folder or the output file it was given: the working directory, TMPDIR and the input files stay as they were.

Profiles: `fuzz` (the default) is derandomized and sized for CI; HYPOTHESIS_PROFILE=slow runs ten times as many
cases, drawn at random. The number of cases run is printed at the end of the module (`fuzz cases: ...`).
"""
from __future__ import annotations

import collections
import contextlib
import dataclasses
import hashlib
import io
import json
import logging
import math
import os
import re
import shutil
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, event, example, given, note, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from hypothesis.control import currently_in_test_context  # noqa: E402
from hypothesis.extra import numpy as hnp  # noqa: E402

from fastgan.cli import build_parser, main  # noqa: E402
from fastgan.data.datasets import IMAGE_EXTENSIONS, load_dataset  # noqa: E402
from fastgan.models.dcgan import RESOLUTIONS  # noqa: E402
from fastgan.train.config import MODES, PRECISIONS, TrainConfig  # noqa: E402
from fastgan.train.step import COMPILE_MODES  # noqa: E402
from fastgan.variants import list_variants  # noqa: E402

# One intra-op thread (conftest): the CI box is a busy 2-core machine, where OpenMP barriers stall tiny ops.
pytestmark = pytest.mark.usefixtures("one_thread")

# ----------------------------------------------------------------------------- profiles and case counting

settings.register_profile("fuzz", deadline=None, derandomize=True, database=None, print_blob=True,
                          suppress_health_check=list(HealthCheck))
settings.register_profile("slow", deadline=None, derandomize=False, database=None, print_blob=True,
                          suppress_health_check=list(HealthCheck))
PROFILE = "slow" if os.environ.get("HYPOTHESIS_PROFILE") == "slow" else "fuzz"
SCALE = {"fuzz": 1, "slow": 10}[PROFILE]
CASES: collections.Counter = collections.Counter()


def fuzz(n: int):
    """The profile's settings with ``n`` examples (times ten in the slow profile)."""
    return settings(settings.get_profile(PROFILE), max_examples=n * SCALE)


def _note(text: str) -> None:
    """Shown with a failing example (outside a hypothesis test: nothing)."""
    if currently_in_test_context():
        note(text)


def _event(rc, err: str) -> None:
    """The outcome, for --hypothesis-show-statistics: exit code and the error with names and numbers elided."""
    if currently_in_test_context():
        last = (err.strip().splitlines() or [""])[-1]
        event(f"exit {rc}: " + re.sub(r"'[^']*'|\"[^\"]*\"|-?\d[\d.e+-]*|/\S+", "~", last)[:70])


def _count() -> None:
    test = os.environ.get("PYTEST_CURRENT_TEST", "?").split("::")[-1].split(" ")[0].split("[")[0]
    CASES[test] += 1


@pytest.fixture(scope="module", autouse=True)
def _report_cases(request):
    yield
    line = (f"fuzz cases: {sum(CASES.values())} (profile {PROFILE}): "
            + ", ".join(f"{k.removeprefix('test_')} {v}" for k, v in CASES.items()))
    tr = request.config.pluginmanager.get_plugin("terminalreporter")
    capman = request.config.pluginmanager.get_plugin("capturemanager")
    if tr is None or capman is None:  # pragma: no cover
        print(line)
        return
    with capman.global_and_fixture_disabled():
        tr.write("\n" + line + "\n")


# ----------------------------------------------------------------------------- one sandboxed CLI call


def _tree(root: Path) -> dict[str, str]:
    """Every entry below ``root``: file contents' digest, link target, or 'dir'."""
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            p = Path(dirpath, name)
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = "link:" + os.readlink(p)
            elif p.is_dir():
                out[rel] = "dir"
            else:
                out[rel] = hashlib.sha1(p.read_bytes()).hexdigest()
    return out


class Case:
    """A fresh folder per example: ``cwd/`` (the working directory of the call), ``tmp/`` (TMPDIR), ``in/`` (the
    inputs), and ``out`` (the path passed as --out, not created)."""

    def __init__(self, root: Path):
        self.dir = Path(tempfile.mkdtemp(dir=root))
        self.cwd, self.tmp, self.inp, self.out = (self.dir / n for n in ("cwd", "tmp", "in", "out"))
        for d in (self.cwd, self.tmp, self.inp):
            d.mkdir()
        (self.inp / "file.txt").write_text("this is = = not TOML\n")
        (self.inp / "empty").mkdir()

    def fill(self, tokens: list[str]) -> list[str]:
        return [t.replace("{IN}", str(self.inp)).replace("{OUT}", str(self.out)) for t in tokens]

    def run(self, capfd, argv: list[str], allowed: tuple[str, ...] = ("out",)) -> tuple[int, str, str]:
        """``fastgan argv`` in the sandbox; checks the contract and returns (exit code, stdout, stderr).
        ``allowed``: the names the call may create next to cwd/, tmp/ and in/."""
        argv = self.fill(argv)
        _note(f"argv = {argv!r}")
        capfd.readouterr()
        inputs, top = _tree(self.inp), {p.name for p in self.dir.iterdir()}
        cwd, tmpdir, env = os.getcwd(), tempfile.tempdir, os.environ.get("TMPDIR")
        os.chdir(self.cwd)
        tempfile.tempdir = os.environ["TMPDIR"] = str(self.tmp)
        # What a plain `fastgan` process prints for log records (logging's last resort; pytest captures them).
        stderr_log = logging.StreamHandler(sys.stderr)
        stderr_log.setLevel(logging.WARNING)
        logging.getLogger().addHandler(stderr_log)
        try:
            with warnings.catch_warnings():
                _cli_warnings()
                try:
                    rc = main(argv)
                except SystemExit as e:              # --help and --version only
                    rc = e.code
        finally:
            logging.getLogger().removeHandler(stderr_log)
            os.chdir(cwd)
            tempfile.tempdir = tmpdir
            if env is None:
                os.environ.pop("TMPDIR", None)
            else:
                os.environ["TMPDIR"] = env
        out, err = capfd.readouterr()
        _note(f"rc = {rc}, stderr = {err!r}")
        _event(rc, err)
        check_outcome(rc, err)
        assert sorted(os.listdir(self.cwd)) == [], f"wrote into the working directory: {os.listdir(self.cwd)}"
        written = [n for n in os.listdir(self.tmp) if not n.startswith(TORCH_CACHES)]
        assert written == [], f"wrote into TMPDIR: {written}"
        assert _tree(self.inp) == inputs, "changed the input files"
        new = {p.name for p in self.dir.iterdir()} - top
        assert new <= set(allowed), f"wrote {sorted(new - set(allowed))} outside the run folder"
        return rc, out, err


def _cli_warnings() -> None:
    """Warnings as a plain `fastgan` process shows them (Python's default filters, printed to stderr); pytest
    would record them instead."""
    warnings.resetwarnings()
    warnings.simplefilter("default")
    for category in (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning):
        warnings.simplefilter("ignore", category)
    warnings.showwarning = lambda message, category, filename, lineno, file=None, line=None: sys.stderr.write(
        warnings.formatwarning(message, category, filename, lineno, line))


TORCH_CACHES = ("torchinductor_",)   # torch's own compile cache, made in TMPDIR the first time torch asks for it


def check_outcome(rc, err: str) -> None:
    """Exit 0, or exit 2 with one `error:` line (after `note:` lines at most); never a traceback."""
    assert "Traceback" not in err, err
    if rc == 0:
        return
    lines = [line for line in err.splitlines() if line.strip()]
    assert rc == 2, f"exit code {rc}: {err}"
    assert lines and lines[-1].startswith("error: "), err
    assert all(line.startswith("note: ") for line in lines[:-1]), f"more than one error line: {err}"


@pytest.fixture(scope="module")
def fuzz_root(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


def _parser_flags(command: str) -> set[str]:
    sub = next(a for a in build_parser()._actions if a.dest == "cmd")
    return {o for a in sub.choices[command]._actions for o in a.option_strings}


TRAIN_FLAGS = _parser_flags("train")
RESUME = "--resume" in TRAIN_FLAGS
VARIANTS = [s.name for s in list_variants()]
CONDITIONAL = {s.name for s in list_variants() if s.conditional}
CUDA = torch.cuda.is_available()
FIELDS = {f.name: str(f.type) for f in dataclasses.fields(TrainConfig)}

# ----------------------------------------------------------------------------- strategies: values

TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=16)


def _parses(convert, s: str) -> bool:
    try:
        convert(s)
    except (ValueError, OverflowError):
        return False
    return True


NOT_INT = st.one_of(TEXT.filter(lambda s: not _parses(int, s)),
                    st.sampled_from(["1.5", "1e3", "0x10", "", " ", "nan", "inf", "--", "3 4", "\u0663x"]))
NOT_FLOAT = TEXT.filter(lambda s: not _parses(float, s))


def _device_ok(d: str) -> bool:
    if d == "auto":
        return True
    try:
        dev = torch.device(d)
    except (RuntimeError, TypeError, ValueError):
        return False
    if dev.type == "cpu":
        return True
    return dev.type == "cuda" and CUDA and (dev.index is None or dev.index < torch.cuda.device_count())


BAD_DEVICE = st.one_of(
    st.sampled_from(["tpu", "cuda:x", "", "meta", "mps", "xla", "cpu:x", "gpu", "CPU", "cuda:-1", "cuda:0:0",
                     "cuda:99999999999999999999", "cuda:7", "cuda"]),
    TEXT).filter(lambda d: not _device_ok(d))
KINDS = ("mnist5k", "digits", "synthetic", "folder", "npz")


def _synthetic_ok(arg: str) -> bool:
    return _parses(lambda a: int(a.strip().replace("_", "")), arg)


BAD_DATA = st.one_of(
    TEXT.filter(lambda s: s.strip().partition(":")[0].lower() not in KINDS),
    st.sampled_from(["folder:", "npz:", "folder:{IN}/nope", "npz:{IN}/nope.npz", "folder:{IN}/file.txt", "npz:{IN}",
                     "npz:{IN}/file.txt", "folder:{IN}/empty", "mnist5k:x", "digits:3", "folder", "npz"]),
    TEXT.filter(lambda a: not _synthetic_ok(a)).map(lambda a: f"synthetic:{a}"),
    st.integers(max_value=0).map(lambda n: f"synthetic:{n}"),
    st.integers(min_value=10**10, max_value=10**40).map(lambda n: f"synthetic:{n}"),   # more than any memory
)


def bad_text(valid) -> st.SearchStrategy[str]:
    return TEXT.filter(lambda s: s not in valid)


def _flag(name: str, values) -> st.SearchStrategy[list[str]]:
    return values.map(lambda v: [name, str(v)])


def _bad_train_flags() -> st.SearchStrategy[list[str]]:
    """One `train` flag with a value that must be refused (the base command is a valid tiny run)."""
    bad = [
        _flag("--steps", NOT_INT | st.integers(max_value=0)),
        _flag("--batch", NOT_INT | st.integers(max_value=0) | st.integers(min_value=1798, max_value=10**30)),
        _flag("--tick", NOT_INT | st.integers(max_value=0)),
        _flag("--eval-every", NOT_INT | st.integers(max_value=-1)),
        _flag("--resolution", NOT_INT | st.integers().filter(lambda r: r not in RESOLUTIONS)),
        _flag("--channels", NOT_INT | st.integers().filter(lambda c: c not in (1, 3))),
        _flag("--width", NOT_INT | st.integers(max_value=0) | st.integers(min_value=2**63)),
        _flag("--seed", NOT_INT | st.integers(min_value=2**63) | st.integers(max_value=-2**63 - 1)),
        _flag("--device", BAD_DEVICE),
        _flag("--mode", bad_text(MODES if CUDA else ("auto", "eager", "compile"))),
        _flag("--precision", bad_text(PRECISIONS)),
        _flag("--compile-mode", bad_text(COMPILE_MODES)),
        _flag("--variant", bad_text(VARIANTS)),
        _flag("--data", BAD_DATA),
        _flag("--out", st.sampled_from(["", "{IN}/file.txt", "{IN}/file.txt/run", "/proc/fastgan-fuzz/run"])),
        _flag("--config", st.sampled_from(["{IN}/missing.toml", "{IN}", "{IN}/file.txt"])),
        _flag("--fid-weights", st.sampled_from(["{IN}/missing.pth", "{IN}", "{IN}/file.txt"])),  # with --no-eval
        st.from_regex(r"\A--x-[a-z]{1,8}\Z").map(lambda f: [f]),
        TEXT.filter(lambda s: not s.startswith("-")).map(lambda s: [s]),
    ]
    if "--keep" in TRAIN_FLAGS:
        bad.append(_flag("--keep", NOT_INT | st.integers(max_value=0)))
    if "--on-nan" in TRAIN_FLAGS:
        bad.append(_flag("--on-nan", bad_text(("stop", "rollback"))))
    if "--nan-lr-factor" in TRAIN_FLAGS:
        bad.append(_flag("--nan-lr-factor", NOT_FLOAT | st.floats().filter(lambda f: not 0 < f < 1)))
    if RESUME:
        bad.append(_flag("--resume", st.sampled_from(["{IN}/nope", "{IN}/file.txt", "{IN}", "{IN}/empty"])))
    return st.one_of(bad)


BASE = ["train", "--data", "digits", "--debug", "--steps", "1", "--no-eval", "--out", "{OUT}"]

# ----------------------------------------------------------------------------- train flags


@fuzz(150)
@given(batch=st.integers(2, 8), mutations=st.lists(_bad_train_flags(), min_size=1, max_size=3))
@example(batch=4, mutations=[["--steps", "abc"]])                       # argparse's usage text was 10 lines
@example(batch=4, mutations=[["--seed", str(2**64)]])                    # torch.manual_seed overflow traceback
@example(batch=4, mutations=[["--device", "tpu"]])                       # torch.device RuntimeError traceback
@example(batch=4, mutations=[["--device", "meta"]])                      # crashed after making the run folder
@example(batch=4, mutations=[["--out", ""]])                             # trained into the working directory
@example(batch=4, mutations=[["--out", "{IN}/file.txt/run"]])            # NotADirectoryError traceback
@example(batch=4, mutations=[["--resolution", "100000"]])                # data resized before the model check
@example(batch=4, mutations=[["--batch", "100000000"]])                  # networks probed before the batch check
@example(batch=4, mutations=[["--data", "synthetic:99999999999999"]])    # allocator failure traceback
@example(batch=4, mutations=[["--data", "synthetic:" + str(10**30)]])   # size overflow traceback
def test_bad_train_flags_are_refused_before_the_run_folder(capfd, fuzz_root, batch, mutations):
    _count()
    case = Case(fuzz_root)
    argv = BASE + ["--batch", str(batch)] + [t for m in mutations for t in m]
    rc, _, err = case.run(capfd, argv)
    assert rc == 2, f"accepted {mutations}"
    assert not case.out.exists(), "a refused run left a run folder"


def test_an_unbuildable_resolution_is_refused_before_the_data_is_read(capfd, fuzz_root, monkeypatch):
    """Reading digits at 1024 px would allocate 7.5 GB before the model said no."""
    import fastgan.data

    _count()
    monkeypatch.setattr(fastgan.data, "load_dataset", lambda *a, **k: pytest.fail("the dataset was read"))
    rc, _, err = Case(fuzz_root).run(capfd, BASE + ["--batch", "4", "--resolution", "1024"])
    assert rc == 2 and "cannot be built at resolution 1024" in err


def test_a_batch_larger_than_the_dataset_is_refused_before_the_networks_are_built(capfd, fuzz_root, monkeypatch):
    """Probing the networks with 10^6 images would take minutes and gigabytes before the loader said no."""
    import fastgan.train.loop

    _count()
    monkeypatch.setattr(fastgan.train.loop, "build_trainer", lambda *a, **k: pytest.fail("the networks were built"))
    rc, _, err = Case(fuzz_root).run(capfd, BASE + ["--batch", "1000000"])
    assert rc == 2 and "larger than dataset" in err


@fuzz(5)
@given(variant=st.sampled_from(VARIANTS), data=st.sampled_from(["digits", "synthetic:16"]),
       resolution=st.sampled_from([16, 32]), batch=st.integers(2, 8), steps=st.integers(1, 2),
       seed=st.integers(-2**63, 2**63 - 1), channels=st.sampled_from([None, 1, 3]), tick=st.integers(1, 3),
       sample_seed=st.integers(-2**63, 2**63 - 1))
@example(variant="dcgan", data="digits", resolution=16, batch=2, steps=1, seed=2**63 - 1, channels=None, tick=1,
         sample_seed=-2**63)
def test_valid_train_flags_train_and_sample(capfd, fuzz_root, variant, data, resolution, batch, steps, seed, channels,
                                            tick, sample_seed):
    _count()
    case = Case(fuzz_root)
    argv = ["train", "--variant", variant, "--data", data, "--debug", "--resolution", str(resolution), "--batch",
            str(batch), "--steps", str(steps), "--seed", str(seed), "--tick", str(tick), "--no-eval", "--out", "{OUT}"]
    if channels is not None:
        argv += ["--channels", str(channels)]
    rc, _, err = case.run(capfd, argv)
    assert rc == 0, err
    resolved = json.loads((case.out / "config.json").read_text())
    assert resolved["train"]["seed"] == seed and resolved["train"]["steps"] == steps
    sample = ["sample", str(case.out), "--n", "4", "--seed", str(sample_seed), "--out", str(case.dir / "s.png")]
    if variant in CONDITIONAL:
        sample += ["--labels", "0"]
    rc, _, err = case.run(capfd, sample, allowed=("s.png",))
    assert rc == 0, err
    assert Image.open(case.dir / "s.png").size[0] > resolution


# ----------------------------------------------------------------------------- TOML configs


def _toml_str(s: str) -> str:
    out = []
    for c in s:
        if c in '"\\':
            out.append("\\" + c)
        elif ord(c) < 0x20 or ord(c) == 0x7F:
            out.append(f"\\u{ord(c):04x}")
        else:
            out.append(c)
    return '"' + "".join(out) + '"'


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf") if math.isinf(v) else repr(v)
    if isinstance(v, str):
        return _toml_str(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{_toml_str(k)} = {_toml_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(type(v))


def toml_text(d: dict, table: bool) -> str:
    body = "".join(f"{_toml_str(k)} = {_toml_value(v)}\n" for k, v in d.items())
    return "[train]\n" + body if table else body


def _kind(field: str) -> str:
    return next((k for k in ("bool", "int", "float", "str") if k in FIELDS[field].split(" | ")), "?")


SCALARS = st.one_of(st.integers(-3, 3), st.floats(), TEXT, st.booleans())


def _wrong_type(field: str) -> st.SearchStrategy:
    """A TOML value of another type than ``field``'s (TOML has no null)."""
    kind = _kind(field)
    lists = st.lists(SCALARS, max_size=2)
    tables = st.dictionaries(TEXT, st.integers(), max_size=2)
    if kind == "int":
        return st.one_of(st.floats(), TEXT, st.booleans(), lists, tables, st.integers(min_value=2**63, max_value=2**70),
                         st.integers(min_value=-2**70, max_value=-2**63 - 1))
    if kind == "float":
        return st.one_of(TEXT, st.booleans(), lists, tables, st.sampled_from([math.nan, math.inf, -math.inf]),
                         st.integers(min_value=2**1024, max_value=2**1030))
    if kind == "str":
        return st.one_of(st.integers(), st.floats(), st.booleans(), lists, tables)
    return st.one_of(st.integers(), st.floats(), TEXT, lists, tables)


def _bad_value(field: str) -> st.SearchStrategy | None:
    """A value of the right type that must be refused, for the fields that have such values."""
    pos = st.integers(max_value=0)
    table = {
        "batch": pos, "steps": pos, "tick": pos, "eval_images": pos, "synthetic_size": pos, "keep": pos,
        "width": pos, "z_dim": pos, "eval_every": st.integers(max_value=-1),
        "resolution": st.integers(-2**62, 2**62).filter(lambda r: r not in RESOLUTIONS),
        "channels": st.integers(-2**62, 2**62).filter(lambda c: c not in (1, 3)),
        "lr_g": st.floats(max_value=0, allow_nan=False, allow_infinity=False),
        "lr_d": st.floats(max_value=0, allow_nan=False, allow_infinity=False),
        "ema_kimg": st.floats(max_value=-1e-9, allow_infinity=False),
        "ema_rampup": st.floats(max_value=-1e-9, allow_infinity=False),
        "nan_lr_factor": st.floats(allow_nan=False, allow_infinity=False).filter(lambda f: not 0 < f < 1),
        "mode": bad_text(MODES if CUDA else ("auto", "eager", "compile")), "precision": bad_text(PRECISIONS),
        "compile_mode": bad_text(COMPILE_MODES), "variant": bad_text(VARIANTS), "data": BAD_DATA,
        "device": BAD_DEVICE, "on_nan": bad_text(("stop", "rollback")),
        "out": st.sampled_from(["", "{IN}/file.txt"]), "fid_weights": st.sampled_from(["{IN}/missing.pth", "{IN}"]),
    }
    return table.get(field) if field in FIELDS else None


def _bad_entry() -> st.SearchStrategy[tuple[str, object]]:
    fields = sorted(FIELDS)
    with_bad = [f for f in fields if _bad_value(f) is not None]
    return st.one_of(
        TEXT.filter(lambda k: k not in FIELDS and k != "train").map(lambda k: (k, 1)),
        st.sampled_from(fields).flatmap(lambda f: _wrong_type(f).map(lambda v: (f, v))),
        st.sampled_from(with_bad).flatmap(lambda f: _bad_value(f).map(lambda v: (f, v))),
    )


NEUTRAL = {"seed": st.integers(-2**63, 2**63 - 1), "tick": st.integers(1, 50), "lr_g": st.floats(1e-5, 1e-2),
           "ema_kimg": st.floats(0, 100), "ema_rampup": st.floats(0, 1), "eval_every": st.integers(0, 100),
           "channels_last": st.booleans(), "eval_images": st.integers(1, 100), "synthetic_size": st.integers(1, 100),
           "z_dim": st.integers(1, 64), "keep": st.integers(1, 5), "tensorboard": st.just(False)}


@fuzz(120)
@given(bad=st.lists(_bad_entry(), min_size=1, max_size=3),
       neutral=st.lists(st.sampled_from(sorted(k for k in NEUTRAL if k in FIELDS)).flatmap(
           lambda k: NEUTRAL[k].map(lambda v: (k, v))), max_size=3),
       table=st.booleans(), batch=st.integers(2, 8))
@example(bad=[("train", 5)], neutral=[], table=False, batch=4)                 # dict(5): TypeError traceback
@example(bad=[("seed", "x")], neutral=[], table=True, batch=4)                 # int('x'): ValueError traceback
@example(bad=[("eval_images", math.inf)], neutral=[], table=True, batch=4)     # int(inf): OverflowError traceback
@example(bad=[("z_dim", 10**9)], neutral=[], table=True, batch=4)              # allocator failure traceback
@example(bad=[("ema_kimg", math.nan)], neutral=[], table=True, batch=4)        # NaN EMA accepted
@example(bad=[("eval_every", 1.5)], neutral=[], table=True, batch=4)           # float for an int accepted
@example(bad=[("lr_g", 2**1024)], neutral=[], table=True, batch=4)             # float(int) overflow
@example(bad=[("lr_d", 0.0)], neutral=[], table=False, batch=2)                # `lr_d or default`: 0 trained at 2e-4
def test_bad_toml_configs_are_refused(capfd, fuzz_root, bad, neutral, table, batch):
    _count()
    case = Case(fuzz_root)
    d = {"data": "digits", "debug": True, "steps": 1, "batch": batch, "eval": False, "out": str(case.out)}
    d.update(dict(neutral))
    d.update({k: (case.fill([v])[0] if isinstance(v, str) else v) for k, v in bad})
    if "train" in d and not isinstance(d["train"], dict):
        table = False                                  # a top-level `train` key that is not a table
    text = toml_text(d, table)
    import tomllib

    assert tomllib.loads(text)                         # the case is valid TOML: the config is what is refused
    (case.inp / "c.toml").write_text(text)
    rc, _, err = case.run(capfd, ["train", "--config", "{IN}/c.toml"])
    assert rc == 2, f"accepted {bad} in\n{text}"
    assert not case.out.exists()


@fuzz(40)
@given(content=st.one_of(TEXT, st.binary(max_size=64).map(lambda b: b.decode("latin-1")),
                         st.sampled_from(["[train]\n[train]\n", "a = 1\na = 2\n", "[train\n", "x = \n", "[[train]]\n",
                                          "train = []\n", "steps = 1\n[train]\nbatch = 2\n", "\ufeffsteps = 1\n"])),
       raw=st.booleans())
def test_any_config_file_is_read_or_refused_in_one_line(capfd, fuzz_root, content, raw):
    """Arbitrary bytes as --config: rc 2 always, since --out names a file (a config that reads fine gets that far)."""
    _count()
    case = Case(fuzz_root)
    path = case.inp / "c.toml"
    if raw:
        path.write_bytes(content.encode("latin-1", "replace"))
    else:
        path.write_text(content, encoding="utf-8")
    rc, _, err = case.run(capfd, ["train", "--config", str(path), "--data", "digits", "--debug", "--steps", "1",
                                  "--batch", "2", "--no-eval", "--out", "{IN}/file.txt"])
    assert rc == 2


# ----------------------------------------------------------------------------- other commands' flags

SAMPLE_BAD = st.one_of(
    _flag("--n", NOT_INT | st.integers(max_value=0) | st.integers(min_value=10**12)),
    _flag("--seed", NOT_INT | st.integers(min_value=2**63) | st.integers(max_value=-2**63 - 1)),
    _flag("--scale", NOT_INT | st.integers(max_value=0) | st.integers(min_value=10**6)),
    _flag("--labels", TEXT.filter(lambda s: s.strip() and not all(_parses(int, v) for v in s.split(",") if v.strip()))),
    _flag("--labels", st.lists(st.integers(), min_size=1, max_size=3).map(lambda v: ",".join(map(str, v)))),
    _flag("--device", BAD_DEVICE),
    _flag("--out", st.sampled_from(["{IN}/file.txt", "{IN}/x.jpg", "{IN}", "{IN}/file.txt/x.png", "/proc/fuzz.png"])),
    st.from_regex(r"\A--x-[a-z]{1,8}\Z").map(lambda f: [f]),
)
EVAL_BAD = st.one_of(
    _flag("--num-images", NOT_INT | st.integers(max_value=3) | st.integers(min_value=10**12)),
    _flag("--seed", NOT_INT | st.integers(min_value=2**63) | st.integers(max_value=-2**63 - 1)),
    _flag("--device", BAD_DEVICE),
    _flag("--fid-weights", st.sampled_from(["{IN}/missing.pth", "{IN}", "{IN}/file.txt"])),
    st.from_regex(r"\A--x-[a-z]{1,8}\Z").map(lambda f: [f]),
)
BENCH_BAD = st.one_of(
    _flag("--variants", st.one_of(TEXT.filter(lambda s: "," not in s and s.strip() not in VARIANTS), st.just(","))),
    _flag("--resolutions", st.one_of(NOT_INT.filter(lambda s: "," not in s and s.strip()),
                                     st.integers().filter(lambda r: r not in RESOLUTIONS))),
    _flag("--batches", st.one_of(NOT_INT.filter(lambda s: "," not in s and s.strip()), st.integers(max_value=0))),
    _flag("--precisions", TEXT.filter(lambda s: "," not in s and s.strip()
                                      and s.strip() not in ("auto", "fp32", "bf16"))),
    _flag("--modes", st.one_of(st.just("eager-tutorial,eager-tutorial"),
                               TEXT.filter(lambda s: "," not in s and s.strip() and not s.strip().startswith(
                                   ("eager", "compile", "fastgan"))))),
    _flag("--steps", NOT_INT | st.integers(max_value=0)),
    _flag("--repeats", NOT_INT | st.integers(max_value=0)),
    _flag("--warmup", NOT_INT | st.integers(max_value=-1)),
    _flag("--width", NOT_INT | st.integers(max_value=0)),
    _flag("--device", BAD_DEVICE),
    _flag("--out", st.sampled_from(["{IN}/file.txt"])),
)
PROFILE_BAD = st.one_of(
    _flag("--steps", NOT_INT | st.integers(max_value=0)),
    _flag("--warmup", NOT_INT | st.integers(max_value=-1)),
    _flag("--batch", NOT_INT | st.integers(max_value=0)),
    _flag("--resolution", NOT_INT | st.integers().filter(lambda r: r not in RESOLUTIONS)),
    _flag("--width", NOT_INT | st.integers(max_value=0)),
    _flag("--variant", bad_text(VARIANTS)),
    _flag("--mode", bad_text(MODES if CUDA else ("auto", "eager", "compile"))),
    _flag("--compile-mode", bad_text(COMPILE_MODES)),
    _flag("--precision", bad_text(PRECISIONS)),
    _flag("--device", BAD_DEVICE),
    _flag("--data", BAD_DATA),
    _flag("--out", st.sampled_from(["{IN}/file.txt", "{IN}/file.txt/report", "/proc/fastgan-fuzz"])),
)


def _tiny_run(root: Path, variant: str) -> Path:
    out = root / f"run-{variant}"
    rc = main(["train", "--variant", variant, "--data", "digits", "--debug", "--steps", "2", "--batch", "4",
               "--tick", "1", "--no-eval", "--out", str(out)])
    assert rc == 0
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Finished tiny runs (an unconditional and a conditional variant), trained once for the module."""
    root = tmp_path_factory.mktemp("fuzz-runs")
    with contextlib.redirect_stdout(io.StringIO()):
        return {"dcgan": _tiny_run(root, "dcgan"), "cgan": _tiny_run(root, "cgan")}


@fuzz(80)
@given(command=st.sampled_from(["sample", "eval", "bench", "profile", "variants"]), data=st.data())
@example(command="sample", data=None)
@example(command="sample", data=[["--out", "/proc/fuzz.png"]])                 # OSError traceback after sampling
@example(command="sample", data=[["--out", "{IN}/file.txt/x.png"]])            # FileExistsError traceback
@example(command="bench", data=[["--device", ""]])                             # `device or "auto"`: ran the bench
def test_bad_flags_of_the_other_commands_are_refused(capfd, fuzz_root, runs, command, data):
    _count()
    case = Case(fuzz_root)
    run = case.dir / "run"
    shutil.copytree(runs["dcgan"], run)
    if data is None:                                   # torch.Generator.manual_seed overflow traceback
        argv, allowed = ["sample", str(run), "--seed", str(2**64), "--out", str(case.dir / "s.png")], ("s.png",)
    elif command == "sample":
        bad = data if isinstance(data, list) else data.draw(st.lists(SAMPLE_BAD, min_size=1, max_size=2))
        argv, allowed = ["sample", str(run), "--n", "4", "--out", str(case.dir / "s.png")] + sum(bad, []), ("s.png",)
    elif command == "eval":
        bad = data.draw(st.lists(EVAL_BAD, min_size=1, max_size=2))
        argv, allowed = ["eval", str(run), "--num-images", "8"] + sum(bad, []), ()
    elif command == "bench":
        bad = data if isinstance(data, list) else data.draw(st.lists(BENCH_BAD, min_size=1, max_size=2))
        argv = ["bench", "--debug", "--steps", "1", "--repeats", "1", "--warmup", "0", "--modes", "eager-tutorial",
                "--batches", "2", "--resolutions", "16", "--quiet", "--out", "{OUT}"] + sum(bad, [])
        allowed = ("out",)
    elif command == "profile":
        bad = data.draw(st.lists(PROFILE_BAD, min_size=1, max_size=2))
        argv = ["profile", "--debug", "--steps", "1", "--warmup", "0", "--batch", "2", "--resolution", "16",
                "--out", "{OUT}"] + sum(bad, [])
        allowed = ("out",)
    else:
        argv, allowed = ["variants", data.draw(TEXT.filter(lambda s: not s.startswith("-")))], ()
    rc, out, err = case.run(capfd, argv, allowed=allowed)
    if command == "variants":
        assert rc == 0 or "no variant matches" in err
    else:
        assert rc == 2, f"accepted {argv}"
        assert not case.out.exists() and not (case.dir / "s.png").exists()


# ----------------------------------------------------------------------------- dataset folders

FORMATS = {"PNG": (".png",), "JPEG": (".jpg", ".jpeg"), "BMP": (".bmp",), "GIF": (".gif",), "TIFF": (".tif", ".tiff"),
           "WEBP": (".webp",)}
MODES_PIL = ["1", "L", "LA", "P", "PA", "RGB", "RGBA", "CMYK", "I", "I;16", "F", "YCbCr"]


def _image_bytes(mode: str, w: int, h: int, fmt: str, seed: int, frames: int) -> bytes:
    """A valid image file of ``mode`` (or the nearest mode PIL can make) in ``fmt`` (or a format that stores it)."""
    rng = np.random.default_rng(seed)
    rgb = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")
    try:
        if mode == "I;16":
            img = Image.fromarray(rng.integers(0, 65536, (h, w), dtype=np.uint16))
        elif mode == "PA":
            img = rgb.convert("RGBA").convert("PA")
        else:
            img = rgb.convert(mode)
    except ValueError:
        img = rgb
    if mode == "P" and seed % 2:
        img.info["transparency"] = 0
    for f, im in ((fmt, img), ("TIFF", img), ("PNG", img), ("PNG", rgb)):
        try:
            buf = io.BytesIO()
            multi = frames > 1 and f in ("GIF", "TIFF", "PNG")
            extra = {"save_all": True, "append_images": [im] * (frames - 1)} if multi else {}
            im.save(buf, format=f, **extra)
            return buf.getvalue()
        except (OSError, ValueError, KeyError, TypeError):
            continue
    raise AssertionError("no format stores this image")


@st.composite
def folder_entry(draw):
    depth = draw(st.integers(0, 3))
    parts = draw(st.lists(st.sampled_from(["a", "b", "c", ".hidden", "nested", "Z z"]), min_size=depth,
                          max_size=depth))
    stem = draw(st.sampled_from(["img", "x", ".dot", "photo 1", "é"]))
    kind = draw(st.sampled_from(["image"] * 5 + ["truncated", "zero", "garbage", "bitflip", "text", "link_self",
                                                  "link_broken", "link_dir_loop", "emptydir"]))
    fmt = draw(st.sampled_from(sorted(FORMATS)))
    ext = draw(st.one_of(st.sampled_from(FORMATS[fmt]), st.sampled_from(FORMATS[fmt]).map(str.upper),
                         st.sampled_from([".txt", "", ".npz", ".png~"])))
    spec = {"kind": kind, "fmt": fmt, "mode": draw(st.sampled_from(MODES_PIL)), "w": draw(st.integers(1, 24)),
            "h": draw(st.integers(1, 24)), "seed": draw(st.integers(0, 2**16)), "frames": draw(st.integers(1, 2)),
            "cut": draw(st.floats(0.05, 0.95)), "flips": draw(st.lists(st.integers(0, 2**20), min_size=1, max_size=4)),
            "junk": draw(st.binary(max_size=32))}
    return "/".join(parts + [f"{stem}-{draw(st.integers(0, 99))}{ext}"]), spec


def write_entry(root: Path, rel: str, spec: dict) -> None:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    if p.exists() or p.is_symlink():
        return
    kind = spec["kind"]
    if kind == "emptydir":
        p.mkdir()
        return
    if kind == "link_self":
        p.symlink_to(p.name)
        return
    if kind == "link_broken":
        p.symlink_to("does-not-exist.png")
        return
    if kind == "link_dir_loop":
        p.symlink_to(os.path.relpath(root, p.parent), target_is_directory=True)
        return
    if kind == "text":
        p.write_text("not an image\n")
        return
    if kind == "zero":
        p.write_bytes(b"")
        return
    if kind == "garbage":
        p.write_bytes(spec["junk"])
        return
    data = bytearray(_image_bytes(spec["mode"], spec["w"], spec["h"], spec["fmt"], spec["seed"], spec["frames"]))
    if kind == "truncated":
        data = data[:max(1, int(len(data) * spec["cut"]))]
    elif kind == "bitflip":
        for f in spec["flips"]:
            data[f % len(data)] ^= 1 << (f % 8)
    p.write_bytes(bytes(data))


def folder_oracle(root: Path, entries: dict[str, dict]) -> tuple[str, list[str], int] | None:
    """What the documented rules say about a tree without links: ("error", ...) or ("ok", class names, image count);
    None where only the contract can be checked (links, or damaged files whose reading may or may not fail)."""
    if any(s["kind"].startswith("link") for s in entries.values()):
        return None
    visible = {rel: s for rel, s in entries.items()
               if not any(part.startswith(".") for part in rel.split("/"))
               and os.path.splitext(rel)[1].lower() in IMAGE_EXTENSIONS and s["kind"] != "emptydir"}
    if any(s["kind"] in ("zero", "text") for s in visible.values()):
        return "error", [], 0
    if any(s["kind"] in ("truncated", "garbage", "bitflip") for s in visible.values()):
        return None
    top = [r for r in visible if "/" not in r]
    classes = sorted({r.split("/")[0] for r in visible if "/" in r})
    if (top and classes) or not visible:
        return "error", [], 0
    return "ok", classes, len(visible)


@fuzz(90)
@given(entries=st.lists(folder_entry(), min_size=0, max_size=7, unique_by=lambda e: e[0].lower()),
       channels=st.sampled_from([None, 1, 3]))
@example(entries=[("img-1.png", {"kind": "link_self"}), ("a/x-1.png", {"kind": "image", "mode": "RGB", "w": 8, "h": 8,
                                                                      "fmt": "PNG", "seed": 0, "frames": 1})],
         channels=None)                                # a looping link at the top: OSError traceback
@example(entries=[("x-1.png", {"kind": "bitflip", "mode": "YCbCr", "fmt": "BMP", "w": 1, "h": 7, "seed": 271,
                               "frames": 1, "flips": [2200, 454207, 387979]})],
         channels=None)                                # PIL logged "More samples per pixel..." to stderr
def test_dataset_folders_load_or_are_refused(capfd, fuzz_root, entries, channels):
    _count()
    case = Case(fuzz_root)
    root = case.inp / "data"
    root.mkdir()
    kept = {}
    for rel, spec in entries:
        write_entry(root, rel, spec)
        kept.setdefault(rel, spec)
    expected = folder_oracle(root, kept)
    note(f"oracle: {expected}")
    argv = ["train", "--data", f"folder:{root}", "--debug", "--resolution", "16", "--steps", "1", "--batch", "1",
            "--no-eval", "--out", "{IN}/file.txt"]       # --out names a file: a dataset that loads gets no further
    if channels:
        argv += ["--channels", str(channels)]
    rc, _, err = case.run(capfd, argv)
    assert rc == 2
    loaded = "is a file" in err
    if expected is not None:
        assert loaded == (expected[0] == "ok"), (expected, err)
    if loaded and expected is not None:
        ds = load_dataset(f"folder:{root}", 16, channels)
        assert len(ds) == expected[2] and ds.class_names == expected[1]
        assert ds.channels == (channels or 3) and bool(torch.isfinite(ds.images).all())
        assert float(ds.images.min()) >= -1 and float(ds.images.max()) <= 1


def test_a_folder_of_mixed_modes_sizes_and_junk_trains(capfd, fuzz_root):
    """The documented handling, end to end: images of every mode and size in nested class folders train;
    non-image files, hidden entries and empty class folders are skipped."""
    _count()
    case = Case(fuzz_root)
    root = case.inp / "data"
    for i, mode in enumerate(MODES_PIL):
        cls = "cats" if i % 2 else "dogs"
        sub = root / cls / ("deep/er" if i % 3 == 0 else "")
        sub.mkdir(parents=True, exist_ok=True)
        fmt = sorted(FORMATS)[i % len(FORMATS)]
        (sub / f"{i}{FORMATS[fmt][0]}").write_bytes(_image_bytes(mode, 3 + 5 * i, 40 - 2 * i, fmt, i, 1 + i % 2))
    (root / "cats" / "notes.txt").write_text("skipped")
    (root / "cats" / ".hidden.png").write_bytes(b"skipped")
    (root / ".git").mkdir()
    (root / ".git" / "x.png").write_bytes(b"skipped")
    (root / "empty-class").mkdir()
    rc, out, err = case.run(capfd, ["train", "--data", f"folder:{root}", "--debug", "--resolution", "16", "--steps",
                                    "1", "--batch", "4", "--no-eval", "--out", "{OUT}"])
    assert rc == 0, err
    assert f"({len(MODES_PIL)} images, 3x16x16)" in out
    assert load_dataset(f"folder:{root}", 16).class_names == ["cats", "dogs"]


# ----------------------------------------------------------------------------- npz files

NPZ_DTYPES = ["u1", "i1", "i2", "i4", "i8", "u2", "u8", "f2", "f4", "f8", "?", "c8", "U3", "m8[s]", "M8[s]", "O"]


@st.composite
def npz_array(draw):
    dtype = np.dtype(draw(st.sampled_from(NPZ_DTYPES)))
    shape = draw(st.one_of(
        hnp.array_shapes(min_dims=0, max_dims=5, min_side=0, max_side=5),
        st.tuples(st.integers(1, 4), st.integers(1, 10), st.integers(1, 10)),
        st.tuples(st.integers(1, 4), st.integers(1, 10), st.integers(1, 10), st.sampled_from([1, 2, 3, 4])),
        st.tuples(st.integers(1, 4), st.sampled_from([1, 3, 4]), st.integers(1, 10), st.integers(1, 10))))
    if dtype.kind == "O":
        a = np.empty(shape, dtype=object)
        a.fill(None)
        return a
    return draw(hnp.arrays(dtype, shape))


@st.composite
def npz_file(draw):
    keys = draw(st.lists(st.sampled_from(["images", "x", "labels", "y", "other", "images/x", "λ"]), max_size=3,
                         unique=True))
    arrays = {k: draw(npz_array()) for k in keys}
    if draw(st.booleans()):                            # half the files: a well-formed image array, labels as drawn
        n = draw(st.integers(1, 6))
        arrays["images"] = draw(hnp.arrays(np.uint8, (n, 8, 8)))
        if draw(st.booleans()):
            arrays["labels"] = draw(st.one_of(
                hnp.arrays(np.int64, st.integers(0, 8), elements=st.integers(-3, 12)),
                hnp.arrays(np.float64, (n,)),
                hnp.arrays(np.int64, (n,), elements=st.integers(0, 2**62)),
                hnp.arrays(np.int64, (n,), elements=st.integers(0, 9))))
    damage = draw(st.sampled_from([None] * 4 + ["truncate", "garbage", "npy", "empty", "flip"]))
    return arrays, damage, draw(st.floats(0.05, 0.95)), draw(st.binary(max_size=40))


def npz_oracle(arrays: dict, damage) -> str | None:
    """ok / error where the documented rules decide it, else None."""
    if damage in ("garbage", "empty"):
        return "error"
    if damage is not None:
        return None
    if any(a.dtype.kind == "O" for a in arrays.values()):
        return "error"                                 # pickled arrays are never loaded (allow_pickle=False)
    images = arrays.get("images")
    if images is None or "x" in arrays:
        return None
    labels = arrays.get("labels", arrays.get("y"))
    if images.dtype == np.uint8 and images.ndim == 3 and images.shape[0] and min(images.shape[1:]):
        if labels is None:
            return "ok"
        if labels.ndim == 2 and labels.shape[1] == 1:
            labels = labels[:, 0]
        if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
            return "error"
        if labels.dtype.kind in "iu":
            return "ok" if labels.size and labels.min() >= 0 and labels.max() < 100_000 else "error"
    return None


@fuzz(70)
@given(spec=npz_file())
@example(spec=({"images": np.zeros((2, 8, 8), np.uint8), "labels": np.array([0, 2**40])}, None, 0.5, b""))  # hang
@example(spec=({"images": np.zeros((2, 8, 8), "m8[s]")}, None, 0.5, b""))            # timedelta: TypeError traceback
@example(spec=({"images": np.zeros((2, 8, 8), np.uint8), "labels": np.array([0, 1e300])}, None, 0.5, b""))
@example(spec=({"images": np.array([[[3.4028236e38]]])}, None, 0.5, b""))  # numpy's cast-overflow warning, a NaN claim
def test_npz_files_load_or_are_refused(capfd, fuzz_root, spec):
    _count()
    arrays, damage, cut, junk = spec
    case = Case(fuzz_root)
    path = case.inp / "d.npz"
    if damage == "npy":
        np.save(case.inp / "d.npy", next(iter(arrays.values()), np.zeros(3)))
        (case.inp / "d.npy").rename(path)
    else:
        np.savez(path, **arrays)
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[:int(len(data) * cut)])
    elif damage == "garbage":
        path.write_bytes(b"\x00not a zip" + junk)
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "flip":
        b = bytearray(data)
        b[int(len(b) * cut)] ^= 0xFF
        path.write_bytes(bytes(b))
    expected = npz_oracle(arrays, damage)
    note(f"oracle: {expected}")
    rc, _, err = case.run(capfd, ["train", "--data", f"npz:{path}", "--debug", "--resolution", "16", "--steps", "1",
                                  "--batch", "1", "--no-eval", "--out", "{IN}/file.txt"])
    assert rc == 2
    if expected is not None:
        assert ("is a file" in err) == (expected == "ok"), (expected, err)


# ----------------------------------------------------------------------------- checkpoint files of a finished run


def _json_paths(obj, path=()):
    yield path
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _json_paths(v, path + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _json_paths(v, path + (i,))


JSON_VALUES = st.one_of(st.none(), st.integers(-2, 2**40), st.floats(allow_nan=False), TEXT, st.booleans(),
                        st.lists(st.integers(), max_size=2), st.just({}))


def _edit_json(obj, draw):
    """A structural edit of a JSON document: a value replaced, or a key removed."""
    paths = list(_json_paths(obj))
    path = paths[draw(st.integers(0, len(paths) - 1))]
    if not path:
        return draw(JSON_VALUES)
    parent = obj
    for k in path[:-1]:
        parent = parent[k]
    if isinstance(parent, dict) and draw(st.booleans()):
        del parent[path[-1]]
    else:
        parent[path[-1]] = draw(JSON_VALUES)
    return obj


def _edit_file(p: Path, draw) -> None:
    """Change a file the run wrote: bytes (truncated, bit flips, zeroed, replaced, appended, emptied, removed) or, for
    JSON and safetensors metadata, its structure."""
    op = draw(st.sampled_from(["truncate", "flip", "zero", "replace", "append", "empty", "remove", "structure"]))
    note(f"{op} {p.name}")
    data = p.read_bytes()
    if op == "truncate":
        p.write_bytes(data[:draw(st.integers(0, max(0, len(data) - 1)))])
    elif op == "flip":
        b = bytearray(data) or bytearray(b"\0")
        for pos in draw(st.lists(st.integers(0, len(b) * 8 - 1), min_size=1, max_size=8)):
            b[pos // 8] ^= 1 << (pos % 8)
        p.write_bytes(bytes(b))
    elif op == "zero":
        a = draw(st.integers(0, len(data)))
        p.write_bytes(data[:a] + bytes(min(64, len(data) - a)) + data[a + 64:])
    elif op == "replace":
        p.write_bytes(draw(st.binary(max_size=256)))
    elif op == "append":
        p.write_bytes(data + draw(st.binary(min_size=1, max_size=64)))
    elif op == "empty":
        p.write_bytes(b"")
    elif op == "remove":
        p.unlink()
    elif p.suffix == ".json":
        try:
            doc = json.loads(data)
        except ValueError:
            return
        p.write_text(json.dumps(_edit_json(doc, draw)))
    elif p.suffix == ".safetensors":
        from safetensors import safe_open
        from safetensors.torch import load_file, save_file

        try:
            with safe_open(str(p), framework="pt") as f:
                md = dict(f.metadata() or {})
            tensors = load_file(str(p))
        except Exception:                              # already damaged by an earlier edit
            return
        key = draw(st.sampled_from(sorted(md) + ["<new>"]))
        if key == "<new>":
            md[draw(TEXT)] = draw(TEXT)
        elif draw(st.booleans()):
            try:
                md[key] = json.dumps(_edit_json(json.loads(md[key]), draw))
            except ValueError:
                md[key] = draw(TEXT)
        else:
            del md[key]
        save_file(tensors, str(p), metadata=md)


def _resign(run: Path, before: dict[Path, tuple[str, int]]) -> None:
    """Make the run's manifests agree with edited files (where a JSON file lists a file of its folder, or below, by
    sha256 and size), so an edit reaches the readers behind the manifest check."""
    changed = {}
    for p, (sha, size) in before.items():
        if p.is_file():
            data = p.read_bytes()
            changed[p] = (sha, size, hashlib.sha256(data).hexdigest(), len(data))
    for m in run.rglob("*.json"):
        mine = {sha: (new_sha, size, new_size) for p, (sha, size, new_sha, new_size) in changed.items()
                if m.parent in p.parents and p != m}
        try:
            doc = json.loads(m.read_text())
        except (ValueError, UnicodeDecodeError):
            continue

        def fix(o):
            if isinstance(o, list):
                return [fix(v) for v in o]
            if not isinstance(o, dict):
                return o
            hit = next((mine[v] for v in o.values() if isinstance(v, str) and v in mine), None)
            out = {}
            for k, v in o.items():
                if hit and isinstance(v, str) and v in mine:
                    out[k] = hit[0]
                elif hit and type(v) is int and v == hit[1]:
                    out[k] = hit[2]
                else:
                    out[k] = fix(v)
            return out

        fixed = fix(doc)
        if fixed != doc:
            m.write_text(json.dumps(fixed))


def _copied_run(fuzz_root, runs):
    """A fresh copy of the finished dcgan run: (case, its folder, its files, {file: (sha256, size)} before edits)."""
    case = Case(fuzz_root)
    run = case.dir / "run"
    shutil.copytree(runs["dcgan"], run)
    files = _run_files(run)
    return case, run, files, {p: (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_size) for p in files}


def _run_files(run: Path) -> list[Path]:
    """Every file the run wrote except its sample grids and plots (whatever its checkpoint format)."""
    return sorted(p for p in run.rglob("*") if p.is_file() and p.suffix != ".png")


COMMANDS = ["sample", "eval"] + (["resume"] if RESUME else [])


@fuzz(70)
@given(variant=st.sampled_from(["dcgan", "cgan"]), command=st.sampled_from(COMMANDS), data=st.data(),
       edits=st.integers(1, 3), resign=st.booleans())
@example(variant="dcgan", command="sample", data=None, edits=0, resign=False)   # the undamaged run reads fine
def test_damaged_run_files_are_read_or_refused(capfd, fuzz_root, runs, variant, command, data, edits, resign):
    _count()
    case = Case(fuzz_root)
    run = case.dir / "run"
    shutil.copytree(runs[variant], run)
    files = _run_files(run)
    before = {p: (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_size) for p in files}
    folders = sorted({p.parent for p in files if p.parent != run}, key=lambda d: d.name)
    newest = [p for p in files if folders and p.parent == folders[-1]]    # the latest checkpoint's files
    for _ in range(edits if data is not None else 0):
        pool = [p for p in (newest if newest and data.draw(st.booleans()) else files) if p.exists()]
        if not pool:
            continue
        target = pool[data.draw(st.integers(0, len(pool) - 1))]
        if data.draw(st.booleans()):                   # the same file in every checkpoint: no older one to fall back to
            for p in files:
                if p.name == target.name and p.exists():
                    _edit_file(p, data.draw)
        else:
            _edit_file(target, data.draw)
    if resign:
        _resign(run, before)
    labels = ["--labels", "0"] if variant in CONDITIONAL else []
    if command == "sample":
        argv, allowed = ["sample", str(run), "--n", "4", "--out", str(case.dir / "s.png")] + labels, ("s.png",)
    elif command == "eval":
        argv, allowed = ["eval", str(run), "--num-images", "8", "--json"], ()
    else:
        argv, allowed = ["train", "--resume", str(run), "--steps", "3"], ()
    rc, out, err = case.run(capfd, argv, allowed=allowed)
    if data is None:
        assert rc == 0, err
    if rc == 0 and command == "sample":
        assert Image.open(case.dir / "s.png").size[0] > 16


def _drop(*path):
    def edit(cfg):
        d = cfg
        for k in path[:-1]:
            d = d[k]
        del d[path[-1]]
        return cfg
    return edit


def _set(value, *path):
    def edit(cfg):
        d = cfg
        for k in path[:-1]:
            d = d[k]
        d[path[-1]] = value
        return cfg
    return edit


METADATA_EDITS = {   # each was a KeyError or TypeError traceback from sample or eval
    "config-a-list": lambda cfg: [], "no-train": _drop("train"), "train-an-int": _set(5, "train"),
    "no-variant": _drop("train", "variant"), "variant-a-list": _set(["dcgan"], "train", "variant"),
    "no-data": _drop("train", "data"), "no-seed": _drop("train", "seed"), "seed-a-string": _set("x", "train", "seed"),
    "channels-null": _set(None, "model", "channels"),
}


@pytest.mark.parametrize("command", ["sample", "eval"])
@pytest.mark.parametrize("edit", sorted(METADATA_EDITS))
def test_consistently_edited_weights_metadata_is_refused(capfd, fuzz_root, runs, command, edit):
    """The resolved config in the weights' metadata edited in every checkpoint, manifests made to agree: what the
    readers behind the manifest see. sample needs the variant and model; eval also the dataset."""
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    _count()
    case, run, files, before = _copied_run(fuzz_root, runs)
    weights = [p for p in files if p.suffix == ".safetensors"]
    for p in weights:
        with safe_open(str(p), framework="pt") as f:
            md = dict(f.metadata())
        md["config"] = json.dumps(METADATA_EDITS[edit](json.loads(md["config"])))
        save_file(load_file(str(p)), str(p), metadata=md)
    _resign(run, before)
    argv = (["sample", str(run), "--n", "4", "--out", str(case.dir / "s.png")] if command == "sample"
            else ["eval", str(run), "--num-images", "8"])
    rc, _, err = case.run(capfd, argv, allowed=("s.png",))
    dataset_only = edit in ("no-data", "no-seed", "seed-a-string")         # what sample does not read
    assert rc == (0 if command == "sample" and dataset_only else 2), err


def _rename_adam_key(state):
    for st_ in state["trainer"]["optimizers"]["G"]["state"].values():
        st_["exp_avg_sX"] = st_.pop("exp_avg_sq")


def _reshape_adam_state(state):
    for st_ in state["trainer"]["optimizers"]["D"]["state"].values():
        st_["exp_avg"] = st_["exp_avg"].reshape(-1)


STATE_EDITS = {   # each was a traceback from `train --resume` (a KeyError in Adam's first step, ...)
    "adam-key-renamed": _rename_adam_key, "adam-state-reshaped": _reshape_adam_state,
    "no-trainer": lambda state: state.pop("trainer"), "trainer-a-list": lambda state: state.update(trainer=[]),
    "no-engine": lambda state: state["trainer"].pop("engine"),
    "rng-a-string": lambda state: state["trainer"].update(rng_cpu="x"),
    "no-batch-size": lambda state: state["trainer"].pop("batch_size"),
    "numpy-rng-a-string": lambda state: state["rng"].update(numpy="x"),
    "python-rng-a-list": lambda state: state["rng"].update(python=[1]),
    "loop-a-list": lambda state: state.update(loop=[1]),
}


@pytest.mark.skipif(not RESUME, reason="train --resume is not there")
@pytest.mark.parametrize("edit", sorted(STATE_EDITS))
def test_consistently_edited_resume_state_is_refused(capfd, fuzz_root, runs, edit):
    """state.pt edited in every checkpoint, manifests made to agree (a bit flip in a pickled key name does this to
    every parameter at once: pickle stores the name once)."""
    _count()
    case, run, files, before = _copied_run(fuzz_root, runs)
    for p in files:
        if p.name == "state.pt":
            state = torch.load(p, weights_only=True)
            STATE_EDITS[edit](state)
            torch.save(state, p)
    _resign(run, before)
    rc, _, err = case.run(capfd, ["train", "--resume", str(run), "--steps", "3"], allowed=())
    assert rc == 2, err


@fuzz(20)
@given(variant=st.sampled_from(["dcgan", "cgan"]), command=st.sampled_from(COMMANDS),
       how=st.sampled_from(["remove", "empty", "truncate"]))
def test_a_run_without_any_whole_weights_is_refused(capfd, fuzz_root, runs, variant, command, how):
    """Every weights file of the run destroyed: there is nothing to read, so the answer is a one-line error."""
    _count()
    case = Case(fuzz_root)
    run = case.dir / "run"
    shutil.copytree(runs[variant], run)
    weights = [p for p in _run_files(run) if p.suffix == ".safetensors"]
    assert weights
    for p in weights:
        if how == "remove":
            p.unlink()
        else:
            p.write_bytes(b"" if how == "empty" else p.read_bytes()[:p.stat().st_size // 2])
    labels = ["--labels", "0"] if variant in CONDITIONAL else []
    argv = {"sample": ["sample", str(run), "--n", "4", "--out", str(case.dir / "s.png")] + labels,
            "eval": ["eval", str(run), "--num-images", "8"],
            "resume": ["train", "--resume", str(run), "--steps", "3"]}[command]
    rc, _, err = case.run(capfd, argv, allowed=("s.png",))
    assert rc == 2


def test_the_console_script_prints_one_line_for_a_bad_flag_value(fuzz_root):
    """Through the real entry point (fd-level stderr, argparse included): one line, exit code 2."""
    _count()
    import subprocess

    r = subprocess.run([sys.executable, "-m", "fastgan.cli", "train", "--steps", "many"], capture_output=True,
                       text=True, cwd=fuzz_root)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [r.stderr.strip()]
    assert re.match(r"error: argument --steps: invalid int value: 'many'", r.stderr)
