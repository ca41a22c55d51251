"""The ``fastgan`` command line: train, sample, eval, variants."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from fastgan.errors import ConfigError

EPILOG = """examples:
  fastgan train                                   # DCGAN on the embedded MNIST digits, ~5 min on a 2-core CPU
  fastgan train --variant wgan-gp --steps 2000 --out runs/wgp
  fastgan train --data folder:~/pictures --resolution 64 --channels 3
  fastgan sample runs/wgp --n 64 --out grid.png
  fastgan eval runs/wgp
  fastgan variants
  fastgan bench                                   # img/s vs eager PyTorch and torch.compile (small matrix on CPU)
  fastgan profile --variant wgan-gp --out prof    # per-phase time, kernels, GPU busy %, report.html
"""


def _add_compile_mode_arg(p, default: str | None = None) -> None:
    """``--compile-mode``, shared by train and profile (validated by the Trainer: a bad value is a one-line error)."""
    p.add_argument("--compile-mode", dest="compile_mode", default=default,
                   help="torch.compile mode of the compiled phases: default | reduce-overhead (with --mode compile) | "
                        "max-autotune | max-autotune-no-cudagraphs | none (with --mode graphs: eager phases in the "
                        "CUDA graph, no torch.compile) [default]")


def _add_channels_last_arg(p) -> None:
    """``--channels-last/--no-channels-last``, shared by train and profile (None: the Trainer's default)."""
    p.add_argument("--channels-last", dest="channels_last", action=argparse.BooleanOptionalAction, default=None,
                   help="channels_last memory format [on for eager steps on CUDA; compiled and graphed steps use "
                        "NCHW and let Inductor pick conv layouts (torch 2.11 stride bug); off on CPU]")


def _add_fid_weights_arg(p) -> None:
    """``--fid-weights``, shared by train and eval."""
    p.add_argument("--fid-weights", dest="fid_weights",
                   help="FID Inception weights file on disk (torch-fidelity's weights-inception-2015-12-05-6726825d.pth): "
                        "adds an Inception FID comparable with published ones; needs pip install \"fastgan[inception]\"")


def _train_parser(sub) -> None:
    p = sub.add_parser("train", help="train a GAN variant on a dataset",
                       description="Train a GAN. Flags override --config FILE.toml, which overrides the defaults.")
    p.add_argument("--variant", help="registered variant (see `fastgan variants`) [dcgan]")
    p.add_argument("--data", help="mnist5k | digits | folder:PATH | npz:PATH | synthetic[:N] [mnist5k]")
    p.add_argument("--resolution", type=int, help="image size in pixels [32]")
    p.add_argument("--channels", type=int, help="image channels (default: the dataset's own)")
    p.add_argument("--steps", type=int, help="generator steps [1500]")
    p.add_argument("--batch", type=int, help="batch size [64]")
    p.add_argument("--out", help="run folder to create (must not hold a run) [runs/<variant>-<data>-<time>]")
    p.add_argument("--device", help="auto | cpu | cuda | cuda:N [auto]")
    p.add_argument("--seed", type=int, help="random seed [0]")
    p.add_argument("--mode", help="step engine: auto | eager | compile | graphs [auto]")
    _add_compile_mode_arg(p)
    p.add_argument("--precision", help="auto | fp32 | bf16 | fp16 [auto: bf16 on CUDA, fp32 on CPU; fp16 adds a loss scaler per optimizer]")
    _add_channels_last_arg(p)
    p.add_argument("--width", type=int, help="model width: feature maps at full resolution (the paper's ngf is 64) [32]")
    p.add_argument("--tick", type=int, help="steps between status lines and sample grids [100]")
    p.add_argument("--eval-every", dest="eval_every", type=int, help="steps between domain-FID evaluations [500]")
    p.add_argument("--no-eval", dest="eval", action="store_const", const=False, help="skip domain-FID evaluation")
    p.add_argument("--debug", action="store_const", const=True, help="the variant's tiny CPU-sized flavour (fixes its own width)")
    p.add_argument("--tensorboard", action="store_const", const=True,
                   help='also log losses, throughput, FID/KID/P/R and sample grids to RUN/tensorboard '
                        '(needs pip install "fastgan[tensorboard]")')
    _add_fid_weights_arg(p)
    p.add_argument("--keep", type=int, help="newest checkpoints kept in RUN/checkpoints/ [3]")
    p.add_argument("--resume", metavar="RUN_DIR",
                   help="continue the run in RUN_DIR from its latest valid checkpoint, exactly, with its saved "
                        "settings (--steps N trains it to step N; --keep, --on-nan, --nan-lr-factor may change too)")
    p.add_argument("--on-nan", dest="on_nan",
                   help="non-finite losses or weights: stop (exit 1, naming the last good checkpoint) | rollback (reload "
                        "it with the learning rates x --nan-lr-factor and go on) [stop]")
    p.add_argument("--nan-lr-factor", dest="nan_lr_factor", type=float,
                   help="learning-rate factor of each rollback, between 0 and 1 [0.5]")
    p.add_argument("--config", help="TOML file with any of these settings (top level or a [train] table)")


def cmd_train(args) -> int:
    from fastgan.train.config import TrainConfig, load_toml
    from fastgan.train.distributed import from_env, shutdown
    from fastgan.train.loop import resume_config, run_training

    d = load_toml(args.config) if args.config else {}
    for k, v in vars(args).items():
        if k not in ("cmd", "config", "func", "resume") and v is not None:
            d[k] = v
    dist = from_env()           # under torchrun: this process's rank (the process group is set up here)
    finished = False
    try:
        if args.resume is not None:
            run_training(resume_config(args.resume, d), resume=args.resume, dist=dist)
        else:
            run_training(TrainConfig.from_dict(d), dist=dist)
        finished = True
    finally:
        shutdown(dist, clean=finished)
    return 0


def _load_run(run_dir: str):
    """(task, its generator with the run's EMA weights, resolved config, checkpoint metadata) of a run folder: its
    latest valid checkpoint (a run written before checkpoints/ existed: its checkpoint.safetensors)."""
    from fastgan.errors import CheckpointError
    from fastgan.train.checkpoint import list_checkpoints, load_checkpoint, require_checkpoint
    from fastgan.variants import get_variant

    run = Path(run_dir)
    if not run.is_dir():
        raise CheckpointError(f"run folder {run_dir!r} does not exist; pass a folder written by `fastgan train`")
    if not list_checkpoints(run) and (run / "checkpoint.safetensors").is_file():
        parts, md = load_checkpoint(run / "checkpoint.safetensors")
    else:
        ck, skipped = require_checkpoint(run, "fastgan sample/eval")
        for why in skipped:
            print(f"note: skipping {why}; reading {ck.name}", file=sys.stderr)
        parts, md = ck.weights()
    resolved = md.get("config")
    if not isinstance(resolved, dict) or not isinstance(resolved.get("train"), dict) \
            or not isinstance(resolved["train"].get("variant"), str):
        raise CheckpointError(f"checkpoint in {run_dir!r} has damaged metadata (its config names no variant); it was "
                              "edited or written by another program: restore the run folder from a backup")
    spec = get_variant(resolved["train"]["variant"])
    from fastgan.models import FAMILIES

    try:
        task, _ = spec.make_task(FAMILIES[spec.family].Config(**resolved["model"]))
        G = task.nets[task.generator]
        G.load_state_dict(parts[f"{task.generator}_ema"])
    except (RuntimeError, KeyError, TypeError) as e:
        raise CheckpointError(f"checkpoint in {run_dir!r} does not match its config ({str(e).splitlines()[0]}); "
                              "it was written by another fastgan version or edited") from None
    return task, G.eval(), resolved, md


def int64(text: str) -> int:
    """An argparse type: an integer within 64 bits (what seeds the random generators)."""
    v = int(text)
    if not -2**63 <= v < 2**63:
        raise argparse.ArgumentTypeError(f"{text} does not fit in 64 bits")
    return v


def _check_images_fit(n: int, resolved: dict, what: str, scale: int = 1) -> None:
    """Refuse ``n`` generated images (a grid upscaled ``scale`` times) that would not fit in memory: a one-line
    error before anything is generated."""
    from fastgan.data.datasets import _memory_bytes

    r = resolved.get("model", {}).get("resolution") if isinstance(resolved.get("model"), dict) else None
    r, have = (r if isinstance(r, int) and r > 0 else 32), _memory_bytes()
    need = n * 3 * (r + 2) ** 2 * 4 * scale ** 2
    if have is not None and need > have:
        raise ConfigError(f"{what}: {n} images of {r}x{r} px need {need / 2**30:.3g} GiB, more than this machine's "
                          f"{have / 2**30:.3g} GiB of memory; ask for fewer")


def _labels_arg(text: str | None):
    """``--labels 3`` or ``--labels 0,2,5`` as a list of ints (None when not given)."""
    if text is None:
        return None
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"--labels takes class numbers such as 3 or 0,2,5 (got {text!r})") from None


def cmd_sample(args) -> int:
    import torch

    from fastgan.train.report import save_grid
    from fastgan.train.sampling import sample_images
    from fastgan.train.trainer import resolve_device

    if args.n < 1:
        raise ConfigError(f"--n must be at least 1 (got {args.n})")
    if args.scale < 1:
        raise ConfigError(f"--scale must be at least 1 (got {args.scale}); it upscales the grid by a whole factor")
    out = Path(args.out) if args.out else Path(args.run) / f"sample-seed{args.seed}.png"
    if out.suffix.lower() != ".png":
        raise ConfigError(f"--out {str(out)!r}: samples are written as PNG; give a file name ending in .png")
    if out.exists():
        raise ConfigError(f"--out {str(out)!r} already exists; pass another file name (nothing is overwritten)")
    task, G, resolved, _ = _load_run(args.run)
    _check_images_fit(args.n, resolved, "--n and --scale", args.scale)
    labels = _labels_arg(args.labels)
    if labels is not None and not task.num_classes:
        raise ConfigError(f"run {args.run!r} is unconditional; --labels applies to conditional runs (drop it)")
    if task.conditional and labels is None:
        raise ConfigError(f"run {args.run!r} is conditional ({task.num_classes} classes): pass --labels K (or "
                          "--labels 0,1,2 for a row per class)")
    n, cond = args.n, {}
    if labels is not None and len(labels) == 1:
        cond = {"labels": labels[0]}
    elif labels is not None:                        # a row of samples per requested class
        per_row = max(1, args.n // len(labels))
        n, cond = per_row * len(labels), {"labels": torch.tensor(labels).repeat_interleave(per_row)}
    device = resolve_device(args.device)
    G.to(device)
    imgs = sample_images(task, G, n, seed=args.seed, device=device, **cond)
    try:
        save_grid(imgs, out, scale=args.scale)
    except OSError as e:
        raise ConfigError(f"cannot write {str(out)!r} ({e.strerror or e}); pass an --out path in a writable "
                          "folder") from None
    print(f"wrote {n} samples from G_ema to {out}")
    return 0


def cmd_eval(args) -> int:
    from fastgan.data import load_dataset
    from fastgan.errors import CheckpointError
    from fastgan.metrics import DomainEvaluator
    from fastgan.train.sampling import generate_images
    from fastgan.train.trainer import resolve_device

    if args.num_images < 4:
        raise ConfigError(f"--num-images must be at least 4 (got {args.num_images}): KID and precision/recall need "
                          "several samples; 5000 is the default")
    device = resolve_device(args.device)
    inception = None
    if args.fid_weights:   # checked (one-line errors) before the run is read and images are generated
        from fastgan.metrics import load_inception

        inception = load_inception(args.fid_weights, device=device)
    task, G, resolved, md = _load_run(args.run)
    _check_images_fit(args.num_images, resolved, "--num-images")
    t = resolved["train"]
    data = [t.get("data"), t.get("resolution"), resolved["model"].get("channels"), t.get("synthetic_size"),
            t.get("seed")]
    if not isinstance(data[0], str) or not all(type(v) is int for v in data[1:]):
        raise CheckpointError(f"checkpoint in {args.run!r} has damaged metadata (its config does not name the "
                              "dataset: data, resolution, channels, synthetic_size, seed); restore the run folder "
                              "from a backup")
    G.to(device)
    ds = load_dataset(data[0], data[1], data[2], synthetic_size=data[3], seed=data[4])
    images = generate_images(task, G, args.num_images, seed=args.seed, device=device)
    m = DomainEvaluator(ds, device=device, inception=inception).evaluate_images(images)
    if args.json:
        print(json.dumps({**m, "step": md.get("step")}, indent=2))
        return 0
    print(f"run {args.run} | variant {t['variant']} | data {ds.name} | step {md.get('step')} | {args.num_images} generated images (G_ema)")
    print(f"  domain-FID  {m['fid']:.3f}")
    print(f"  KID         {m['kid']:.5f} ± {m['kid_std']:.5f}")
    print(f"  precision   {m['precision']:.3f}")
    print(f"  recall      {m['recall']:.3f}")
    if "fid_inception" in m:
        print(f"  Inception-FID {m['fid_inception']:.3f}   (paper-comparable: FID Inception-v3 from {args.fid_weights})")
    print(f"  feature space: {m['feature_space']}")
    print("  note: these are domain-feature FIDs, not Inception FIDs; compare them only across fastgan runs on this dataset.")
    return 0


def cmd_variants(args) -> int:
    from fastgan.variants import list_variants
    from fastgan.variants.registry import markdown_table, table_rows

    specs = list_variants(args.pattern)
    if not specs:
        raise ConfigError(f"no variant matches {args.pattern!r}; `fastgan variants` lists them all")
    if args.markdown:
        print(markdown_table(specs), end="")
        return 0
    rows = [("name", "family", "loss", "penalty", "n_critic", "notes")] + table_rows(specs)
    w = [max(len(r[i]) for r in rows) for i in range(5)]
    for i, r in enumerate(rows):
        print("  ".join(c.ljust(w[j]) for j, c in enumerate(r[:5])) + "  " + r[5])
        if i == 0:
            print("  ".join("-" * x for x in w) + "  " + "-" * 11)
    return 0


def _bench_parser(sub) -> None:
    p = sub.add_parser(
        "bench", help="training throughput against eager PyTorch and torch.compile (img/s, s/kimg, %% of peak)",
        description="Measure training throughput for a matrix of variant x resolution x batch x precision x mode, "
                    "with the baselines (eager-tutorial, eager-best, compile, compile-max, compile-ro) measured in the "
                    "same run. Prints a table and writes DIR/bench-<device>-<date>.json and .png. Unset options take "
                    "GPU defaults on CUDA, or a small CPU matrix (dcgan 32px, batch 16,32, width 16) without a GPU.")
    p.add_argument("--variants", help="comma-separated registered variants [dcgan]")
    p.add_argument("--resolutions", help="comma-separated image sizes [GPU: 32,64; CPU: 32]")
    p.add_argument("--batches", help="comma-separated batch sizes [GPU: 64,256; CPU: 16,32]")
    p.add_argument("--precisions", help="comma-separated: auto | fp32 | bf16 [auto: bf16 on CUDA, fp32 on CPU]")
    p.add_argument("--modes", help="comma-separated: eager-tutorial, eager-best, compile, compile-max, compile-ro, "
                                   "fastgan, fastgan:fuse, or one of fastgan:auto|eager|compile|graphs|compile-ro|"
                                   "graphs-max|graphs-eager|graphs-eagerpen|fuse-trainer [the first seven]")
    p.add_argument("--width", type=int, help="model width (DCGAN ngf/ndf) [GPU: the variant's own, 64; CPU: 16]")
    p.add_argument("--steps", type=int, help="iterations per timed window [GPU: 50; CPU: 5]")
    p.add_argument("--repeats", type=int, help="timed windows; median, p20, p80 over them [GPU: 5; CPU: 3]")
    p.add_argument("--warmup", type=int, help="max warm-up iterations (until three timings agree within 10%%) [GPU: 200; CPU: 8]")
    p.add_argument("--data", help="synthetic (batches pre-generated on the device) or a dataset spec read through "
                                  "the real loader, e.g. mnist5k [synthetic]")
    p.add_argument("--device", help="auto | cpu | cuda | cuda:N [auto]")
    p.add_argument("--debug", action="store_true", help="the variants' tiny CPU-sized widths")
    p.add_argument("--out", help="folder for the JSON and PNG [./bench-results]")
    p.add_argument("--quiet", action="store_true", help="no per-row progress lines")


def cmd_bench(args) -> int:
    from fastgan.bench.command import run_command

    return run_command(args)


def _profile_parser(sub) -> None:
    p = sub.add_parser(
        "profile", help="where a training step's time goes: phases, kernels, GPU busy %%, clocks, power",
        description="Profile a short window of a training configuration (torch.profiler + NVML sampling) and write "
                    "report.html (self-contained), report.json and trace.json (Perfetto/Chrome) into --out. Per-phase "
                    "time over data and the ranges the task's schedule names (DCGAN family: G_forward, D_forward, "
                    "D_backward, D_penalty, D_step, G_loss, G_backward, G_step, G_ema; in graphs mode, GPU time "
                    "attributed from the warm-up iteration's kernels). The stock CUDA-graph alternative: --mode compile "
                    "--compile-mode reduce-overhead.")
    p.add_argument("--variant", default="dcgan", help="registered variant [dcgan]")
    p.add_argument("--data", default="synthetic", help="dataset spec, read through the real loader [synthetic]")
    p.add_argument("--resolution", type=int, default=32, help="image size [32]")
    p.add_argument("--batch", type=int, default=64, help="batch size [64]")
    p.add_argument("--width", type=int, help="model width [the variant's own]")
    p.add_argument("--steps", type=int, default=20, help="profiled iterations [20]")
    p.add_argument("--warmup", type=int, default=5,
                   help="iterations before the profiled window: compilation, graph recording [5]")
    p.add_argument("--mode", default="auto", help="step engine: auto | eager | compile | graphs [auto]")
    _add_compile_mode_arg(p, default="default")
    p.add_argument("--precision", default="auto", help="auto | fp32 | bf16 | fp16 [auto: bf16 on CUDA, fp32 on CPU]")
    _add_channels_last_arg(p)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N [auto]")
    p.add_argument("--debug", action="store_true", help="the variant's tiny CPU-sized flavour")
    p.add_argument("--out", help="report folder [profile-results/<variant>-<device>-<time>]")


def cmd_profile(args) -> int:
    from fastgan.profile.runner import run_command

    return run_command(args)


class _Parser(argparse.ArgumentParser):
    """argparse whose usage errors (a bad flag value, an unknown flag) are one-line ConfigErrors; subcommand
    parsers are of the same class."""

    def error(self, message):
        raise ConfigError(f"{message}; see `{self.prog} --help`")


def _one_line(e: BaseException) -> str:
    """An error's message on one line (line breaks in quoted user input become spaces)."""
    return " ".join(str(e).splitlines())


def _out_of_memory(e: BaseException) -> str | None:
    """The one-line message for a failed allocation (host or GPU), None for any other error."""
    import re

    text = str(e)
    if not (isinstance(e, MemoryError) or "can't allocate memory" in text or "out of memory" in text.lower()):
        return None
    m = re.search(r"allocate (\d+) bytes", text)
    lines = text.strip().splitlines() or ["no detail"]
    what = f"could not allocate {int(m.group(1)) / 2**30:.1f} GiB" if m else lines[0]
    return f"out of memory ({what}); lower --batch, --resolution, --width or the dataset size"


def build_parser() -> argparse.ArgumentParser:
    from fastgan import __version__

    parser = _Parser(
        prog="fastgan",
        description="fastgan: a fast GAN training engine for PyTorch (fused Triton kernels, compiled steps).",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"fastgan {__version__}")
    sub = parser.add_subparsers(dest="cmd", metavar="COMMAND")
    _train_parser(sub)
    p = sub.add_parser("sample", help="write a grid of samples from a run's G_ema")
    p.add_argument("run", help="run folder written by `fastgan train`")
    p.add_argument("--n", type=int, default=64, help="number of images (default 64)")
    p.add_argument("--seed", type=int64, default=0, help="latent seed (default 0)")
    p.add_argument("--out", help="PNG path (default RUN/sample-seedS.png)")
    p.add_argument("--labels", help="class(es) to sample for a conditional run: 3, or 0,2,5 for a row per class")
    p.add_argument("--scale", type=int, default=1, help="nearest-neighbour upscale of the grid (default 1)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (default auto)")
    p = sub.add_parser("eval", help="domain-FID, KID, precision and recall of a run's G_ema")
    p.add_argument("run", help="run folder written by `fastgan train`")
    p.add_argument("--num-images", dest="num_images", type=int, default=5000, help="generated images (default 5000)")
    p.add_argument("--seed", type=int64, default=0, help="latent seed (default 0)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda (default auto)")
    p.add_argument("--json", action="store_true", help="print JSON")
    _add_fid_weights_arg(p)
    p = sub.add_parser("variants", help="list registered GAN variants")
    p.add_argument("pattern", nargs="?", default="*", help="glob, e.g. 'wgan*'")
    p.add_argument("--markdown", action="store_true", help="the README's variant table (generated from the registry)")
    _bench_parser(sub)
    _profile_parser(sub)
    return parser


COMMANDS = {"train": cmd_train, "sample": cmd_sample, "eval": cmd_eval, "variants": cmd_variants,
            "bench": cmd_bench, "profile": cmd_profile}


def main(argv: list[str] | None = None) -> int:
    from fastgan.errors import FastganError

    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except FastganError as e:
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return 2
    if args.cmd is None:
        parser.print_help()
        return 0
    try:
        return COMMANDS[args.cmd](args)
    except FastganError as e:
        print(f"error: {_one_line(e)}", file=sys.stderr)
        return e.exit_code                    # 2; 1 for a run that diverged (TrainingDiverged)
    except (MemoryError, RuntimeError) as e:
        msg = _out_of_memory(e)
        if msg is None:
            raise
        print(f"error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as e:            # RunStopped: SIGTERM 143, SIGINT 130, after a checkpoint
        print(_one_line(e) or "interrupted", file=sys.stderr)
        return getattr(e, "exit_code", 130)
    except BrokenPipeError:                   # the reader left (`fastgan variants | head`): stop quietly, as
        import os                             # a SIGPIPE'd tool would; stdout to devnull so exit's flush is quiet

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
