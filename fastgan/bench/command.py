"""``fastgan bench`` options → :class:`BenchConfig` → table on stdout, JSON + PNG on disk."""
from __future__ import annotations

from pathlib import Path

from fastgan.errors import ConfigError


def parse_list(text: str | None, kind=str, flag: str = "") -> list | None:
    """``"32,64"`` → ``[32, 64]``; None stays None; a bad item is a one-line ConfigError."""
    if text is None:
        return None
    items = [t.strip() for t in str(text).split(",") if t.strip()]
    if not items:
        raise ConfigError(f"{flag} needs at least one value (comma-separated)")
    out = []
    for t in items:
        try:
            out.append(kind(t))
        except ValueError:
            raise ConfigError(f"{flag} expects comma-separated {'integers' if kind is int else 'values'}, got {t!r}") from None
    return out


def config_from_options(*, variants=None, resolutions=None, batches=None, precisions=None, modes=None, width=None,
                        steps=None, repeats=None, warmup=None, data=None, device=None, debug=False):
    """Fill unset options from the CPU or GPU defaults; returns (BenchConfig, resolved device)."""
    from fastgan.bench.harness import ALL_MODES, BenchConfig, default_settings
    from fastgan.train.trainer import resolve_device

    dev = resolve_device("auto" if device is None else device)
    d = default_settings(dev.type)
    # The CPU defaults are "small" only if the user did not ask for something else.
    cpu_defaults = d["cpu_defaults"] and resolutions is None and batches is None and width is None
    bc = BenchConfig.matrix(
        parse_list(variants, str, "--variants") or d["variants"],
        parse_list(resolutions, int, "--resolutions") or d["resolutions"],
        parse_list(batches, int, "--batches") or d["batches"],
        precisions=parse_list(precisions, str, "--precisions") or ["auto"],
        modes=parse_list(modes, str, "--modes") or list(ALL_MODES),
        width=width if width is not None else d["width"],
        steps=steps if steps is not None else d["steps"],
        repeats=repeats if repeats is not None else d["repeats"],
        warmup=warmup if warmup is not None else d["warmup"],
        data=data or "synthetic", device=str(dev), debug=bool(debug), cpu_defaults=cpu_defaults,
    )
    return bc, dev


def row_count(bc, device) -> int:
    """How many rows ``run_bench(bc)`` measures: per case, eager-tutorial once (it is fp32 by definition) and
    every other mode once per distinct resolved precision."""
    from fastgan.bench.harness import resolve_precision

    precisions = {resolve_precision(p, device) for p in bc.precisions}
    return len(bc.cases) * sum(1 if m == "eager-tutorial" else len(precisions) for m in bc.modes)


def run_command(args) -> int:
    from fastgan.bench.harness import run_bench
    from fastgan.bench.report import format_table, write_outputs
    from fastgan.progress import progress_bar

    bc, dev = config_from_options(variants=args.variants, resolutions=args.resolutions, batches=args.batches,
                                  precisions=args.precisions, modes=args.modes, width=args.width, steps=args.steps,
                                  repeats=args.repeats, warmup=args.warmup, data=args.data, device=args.device,
                                  debug=args.debug)
    out = Path(args.out or "bench-results")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {str(out)!r} is a file; pass a folder for the bench results")
    if dev.type != "cuda":
        print("fastgan bench: no GPU in use; running the CPU-sized matrix on CPU "
              "(compile rows take minutes on a small CPU; compile-ro is CUDA only)", flush=True)
    bar = progress_bar(total=row_count(bc, dev), desc="bench", unit="row")   # drawn on a terminal only
    log = (lambda s: None) if args.quiet else bar.write                     # per-row lines print above the bar
    try:
        result = run_bench(bc, log=log, on_row=lambda doc: bar.update(1))
    finally:
        bar.close()
    print(format_table(result))
    try:
        json_path, png_path = write_outputs(result, out)
    except OSError as e:
        raise ConfigError(f"cannot write the bench results into {str(out)!r} ({e.strerror or e}); the table above "
                          "holds them; pass an --out folder in a writable place") from None
    print(f"wrote {json_path} and {png_path}")
    return 0
