"""``locallearn bench memory``, ``speed``, ``accuracy`` and ``pipeline``: parse the options, run, write the outputs.

Grid values arrive as comma-separated strings (``--num-modules 1,2,4``) and are all validated — names,
numbers, the device — before any network is built.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Any

import torch

from locallearn.bench.grid import GridSpec, parse_list
from locallearn.bench.report import write_results
from locallearn.bench.runner import RunOptions, Stopped, environment, run_memory, run_speed
from locallearn.training.interrupt import Interrupted, sigterm_raises, stopped_how
from locallearn.training.rundir import RunDir
from locallearn.validate import Int


def grid_from_strings(
    *, models: str, methods: str, num_modules: str, splits: str | None, contexts: str | None, batch_sizes: str,
    image_size: int | None = None, feature_decoders: str | None = None, aux_heads: str | None = None,
    compile: bool = False,
) -> GridSpec:
    """The grid of ``bench memory`` / ``speed`` from its flags; a flag left out (None) takes GridSpec's default,
    and one given that no method of the grid would use is refused (``_check_used``), as ``bench accuracy``
    refuses it: the table would look as if it had been applied."""
    given = {"splits": splits, "contexts": contexts, "feature_decoders": feature_decoders, "aux_heads": aux_heads}
    spec = GridSpec(
        models=parse_list(models, "--models"),
        methods=parse_list(methods, "--methods"),
        num_modules=parse_list(num_modules, "--num-modules", int),
        **({"splits": parse_list(splits, "--splits")} if splits else {}),
        **({"contexts": parse_list(contexts, "--contexts")} if contexts else {}),
        **({"feature_decoders": parse_list(feature_decoders, "--feature-decoders")} if feature_decoders else {}),
        aux_heads=parse_list(aux_heads, "--aux-heads") if aux_heads else (None,),
        batch_sizes=parse_list(batch_sizes, "--batch-sizes", int),
        image_size=image_size,
        compiled=(False, True) if compile else (False,),
    )
    _check_used(spec, [name for name, value in given.items() if value])
    return spec


def _check_used(spec: GridSpec, given: list[str]) -> None:
    """Refuse a grid axis the user gave that no method of the grid has (contexts without a context method, ...)."""
    from locallearn.methods import METHODS

    def methods_where(has) -> list[str]:
        return [name for name in METHODS.names() if has(METHODS.get(name))]

    local = lambda m: not m.single_module  # noqa: E731
    rules = {  # axis → (the methods it applies to, what they do)
        "splits": (local, "trains local modules"),
        "aux_heads": (local, "trains local modules"),
        "contexts": (lambda m: m.varies_context, "supplies context"),
        "feature_decoders": (lambda m: m.varies_feature_decoder, "reconstructs features"),
    }
    for axis in given:
        applies, what = rules[axis]
        flag = "--" + axis.replace("_", "-")
        if max(spec.num_modules) < 2:  # every method then runs as one module (local ones are left out)
            raise ValueError(f"{flag}: the grid's only K is 1, where no method trains local modules, so they would "
                             f"change nothing; drop them, or add a K of 2 or more to --num-modules.")
        if not any(applies(METHODS.get(name)) for name in spec.methods):
            raise ValueError(f"{flag}: no method of the grid {what}, so they would change nothing; drop them, or add "
                             f"a method that uses them "
                             f"({', '.join(methods_where(applies))}).")


def _run(kind: str, out: Path, command: str | None, grid: dict, options: dict, quiet: bool) -> int:
    """Measure the grid and write its tables into ``out``, held by this process alone (``RunDir.lock``: a
    second command into the same --out, or an --out that is a file, is refused before anything is measured).
    A Ctrl-C writes the rows measured so far, marked as such, and exits as an interrupt."""
    spec = grid_from_strings(**grid)
    run_options = RunOptions(**options)
    log = None if quiet else (lambda line: print(line, flush=True))
    for note in spec.not_run():  # the grid's rules, said rather than silently applied
        print(note, flush=True)
    runner = run_memory if kind == "memory" else run_speed
    with RunDir(out).lock():
        stopped = None
        try:
            with sigterm_raises():  # a scheduler's stop keeps the rows measured, as Ctrl-C does
                rows = runner(spec, run_options, log=log)
        except Stopped as err:
            rows, stopped = err.rows, err
        meta = environment(run_options, command or _command())
        meta["grid"] = {k: list(v) if isinstance(v, tuple) else v for k, v in vars(spec).items()}
        sections = ()
        if stopped is not None:
            meta["interrupted"] = stopped.describe(stopped_how())
            sections = (f"**Interrupted** ({meta['interrupted']}): the table holds the rows measured before it"
                        + (" (a speed group's over the rounds all of its configurations completed)"
                           if kind == "speed" else "") + "; the same command measures the whole grid.\n",)
        # an interrupted grid's rows go beside a complete table of an earlier command, not over it
        name = f"{kind}-interrupted" if stopped is not None else kind
        paths = write_results(out, kind, rows, meta, sections=sections, name=name) if rows or stopped is None else {}
        if stopped is None:  # the whole grid: a table of an earlier, interrupted command is stale
            for ext in ("json", "csv", "md", "png"):
                (Path(out) / f"{kind}-interrupted.{ext}").unlink(missing_ok=True)
    if stopped is not None:
        kept = f"the {len(rows)} measured are written to {paths['md']}" if paths else "nothing was written"
        raise Interrupted(f"{meta['interrupted']}: {kept}; the same command measures the whole grid.")
    print(f"wrote {', '.join(str(p) for p in paths.values())}")
    return 0


def _command() -> str:
    return "locallearn " + " ".join(shlex.quote(a) for a in sys.argv[1:])


def bench_memory(
    *, models: str, methods: str, num_modules: str, splits: str, contexts: str, batch_sizes: str,
    image_size: int | None, device: str, warmup: int, threads: int | None, seed: int, out: Path,
    feature_decoders: str | None = None, aux_heads: str | None = None, quiet: bool = False, command: str | None = None,
) -> int:
    """Peak activation bytes (meter a) and, on CUDA, peak allocated bytes (meter b) of one step each."""
    grid = dict(models=models, methods=methods, num_modules=num_modules, splits=splits, contexts=contexts,
                batch_sizes=batch_sizes, image_size=image_size, feature_decoders=feature_decoders, aux_heads=aux_heads)
    return _run("memory", out, command, grid, dict(device=device, warmup=warmup, threads=threads, seed=seed), quiet)


def bench_speed(
    *, models: str, methods: str, num_modules: str, splits: str, contexts: str, batch_sizes: str,
    image_size: int | None, device: str, warmup: int, rounds: int, threads: int | None, seed: int, out: Path,
    feature_decoders: str | None = None, aux_heads: str | None = None, compile: bool = False, quiet: bool = False,
    command: str | None = None,
) -> int:
    """Median step time and its ratio to e2e's, over interleaved rounds (every network compiled, with
    ``compile``), beside the multiply-adds of each configuration."""
    grid = dict(models=models, methods=methods, num_modules=num_modules, splits=splits, contexts=contexts,
                batch_sizes=batch_sizes, image_size=image_size, feature_decoders=feature_decoders, aux_heads=aux_heads,
                compile=compile)
    options = dict(device=device, warmup=warmup, rounds=rounds, threads=threads, seed=seed)
    return _run("speed", out, command, grid, options, quiet)


# options of a run that bench accuracy sets per cell, and the flag that does
_AXES = {"model": "--models", "method": "--methods", "num_modules": "--num-modules", "context": "--contexts",
         "local_loss": "--local-losses", "seed": "--seeds", "out": "--out"}


def bench_accuracy(
    *, models: str, methods: str, num_modules: str, contexts: str | None, local_losses: str | None, seeds: str,
    config: str | None, option: list[str] | None, threads: int | None, out: Path, quiet: bool = False,
    shard: str | None = None, collect: bool = False, command: str | None = None, **recipe,
) -> int:
    """Test error of every method against K: a grid of real training runs (``bench.accuracy``)."""
    from locallearn.bench.accuracy import AccuracyGrid, run_accuracy
    from locallearn.training.config import NET_FIELDS, check_keys, load_yaml, requested_options
    from locallearn.training.runner import resolve_device

    flags = {k: v for k, v in recipe.items() if v is not None}
    given: dict[str, Any] = {}
    for item in option or []:  # --option KEY=VALUE: any option of `locallearn train`, for the cells that use it
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep:
            raise ValueError(f"--option: expected KEY=VALUE, got {item!r}.")
        if key in _AXES:
            raise ValueError(f"--option {item}: {_set_by(key)}; use that instead.")
        if key in flags or key in given:
            twice = f"--{key.replace('_', '-')}" if key in flags else "another --option"
            raise ValueError(f"--option {item}: {key} is also given by {twice}; give it once.")
        given[key] = load_yaml(value, f"--option {item}")
    check_keys(given, "--option")
    # the --config file's options, and the flags and --option over them (as `locallearn train` lays its flags
    # over a file: another optimizer than the file's replaces the file's rates)
    options, preset = requested_options(config, {**flags, **given})
    if preset is not None and not Path(str(config)).is_file():  # a preset names one run: its recipe is taken
        # the grid sets the axes and each method its own options; what belongs to the preset's model (its
        # model_kwargs, e.g. a ViT's patch size) stays where the grid trains that model only
        own_model = list(parse_list(models, "--models")) == [options.get("model")]
        dropped = [key for key in options if key not in {**flags, **given} and (
            key in _AXES or (key in NET_FIELDS and not (own_model and key in ("model_kwargs", "image_size"))))]
        options = {key: value for key, value in options.items() if key not in dropped}
        if not quiet and dropped:
            print(f"bench accuracy: the recipe of preset {config}; its {', '.join(dropped)} are set by the grid "
                  f"(its axes, and each method's own options), not by the preset")
    for key in options:  # the flags and --option set no axis: these come from the --config file
        if key in _AXES:
            raise ValueError(f"--config {config}: {_set_by(key)}; drop it from the file.")
    if "device" in options:  # every cell would fail on a device this machine lacks: refused before any
        resolve_device(str(options["device"]))
    if threads is not None:
        torch.set_num_threads(Int(1)("threads", threads))
    grid = AccuracyGrid(
        models=parse_list(models, "--models"),
        methods=parse_list(methods, "--methods"),
        num_modules=parse_list(num_modules, "--num-modules", int),
        contexts=parse_list(contexts, "--contexts") if contexts else None,
        local_losses=parse_list(local_losses, "--local-losses") if local_losses else None,
        seeds=parse_list(seeds, "--seeds", int),
        recipe=options,
        from_file=frozenset(options) - set(flags) - set(given),
    )
    index, count = _shard(shard)
    result = run_accuracy(grid, out, log=None if quiet else (lambda line: print(line, flush=True)),
                          command=command or _command(), train=not collect, shard=(index, count))
    counts = "".join(f"; {n} cell(s) {s}" for s in ("failed", "not run")
                     if (n := sum(r["status"] == s for r in result["rows"])))
    if count > 1:
        print(f"shard {shard}: {len(result['rows'])} cell(s) in {out}/cells{counts}; write the table with --collect")
    else:
        print(f"wrote {out}/accuracy.{{json,csv,md,png}}{counts}")
    return 1 if any(r["status"] == "failed" for r in result["rows"]) else 0  # its reasons are in the table


def _set_by(key: str) -> str:
    what = "each cell's run directory (OUT/cells/NAME)" if key == "out" else "an axis of the grid"
    return f"{key} is {what}, set by {_AXES[key]}"


def _shard(text: str | None) -> tuple[int, int]:
    if text is None:
        return (1, 1)
    index, sep, count = text.partition("/")
    if not (sep and index.isdigit() and count.isdigit() and 1 <= int(index) <= int(count)):
        raise ValueError(f"--shard: expected I/N with 1 <= I <= N (e.g. 2/4), got {text!r}.")
    return int(index), int(count)


def bench_pipeline(
    *, model: str, method: str, num_modules: int, context: str, split: str, ranks: int, batch_size: int,
    batches: int, warmup: int, repeats: int, max_rounds: int, variants: str, idle: float, clean: float,
    run_timeout: float, out: Path, quiet: bool = False, command: str | None = None,
) -> int:
    """The module-parallel pipeline against one process (one thread, N threads) and DDP over the same N ranks,
    in interleaved rounds (``bench.pipeline``). Exit status 1 when a variant failed in every run."""
    from locallearn.bench.pipeline import PipelineBench, run_pipeline_bench

    bench = PipelineBench(
        model=model, method=method, num_modules=num_modules, context=context, split=split, ranks=ranks,
        batch_size=batch_size, batches=batches, warmup=warmup, repeats=repeats, max_rounds=max_rounds,
        variants=parse_list(variants, "--variants"), idle=idle, clean=clean, run_timeout=run_timeout,
    )
    with RunDir(out).lock():  # an --out that is a file, or one another command writes, is refused first
        report = run_pipeline_bench(bench, out, command=command or _command(),
                                    log=None if quiet else (lambda line: print(line, flush=True)))
    medians = {name: v["median_steady_images_per_s"] for name, v in report["variants"].items()}
    print("steady-state images/s (medians): " + ", ".join(
        f"{name} {'failed' if x is None else format(x, '.1f')}" for name, x in medians.items()))
    print(f"verdict: {report['comparison']['verdict']}")
    print(f"wrote {Path(out) / 'pipeline.json'}, {Path(out) / 'pipeline.md'}")
    return 1 if report["comparison"]["failed"] else 0
