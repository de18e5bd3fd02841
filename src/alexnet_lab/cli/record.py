"""`alexnet-lab record`: a preset's time to its target accuracy over several seeds (airbench style):
per seed time and accuracy, then mean/min/max, the fraction of seeds that reached it, the training
images and FLOPs to it (units that travel between machines), the machine.
With --candidate, several recipes (PRESET:key=value,...) in turn, then a table of them.
"""

from __future__ import annotations

import json
import sys

from alexnet_lab.analysis.machine import format_machine
from alexnet_lab.analysis.record import candidate_config, json_line, run_candidates, run_record, target_of
from alexnet_lab.cli.options import add_training, config_from_args, positive_int, training_overrides
from alexnet_lab.engine.config import RECORD_TARGETS, TrainConfig, field_range
from alexnet_lab.engine.config_file import read_config_file
from alexnet_lab.errors import UserError

NAME = "record"


def add_arguments(parser) -> None:
    add_training(parser, "speedrun", "the fastest rung")
    parser.description = (f"{parser.description}. The ladder: " + ", ".join(f"{p} ({t})" for p, t in RECORD_TARGETS.items())
                          + ". Other presets need --target-accuracy (then the run evaluates 5 times per "
                            "epoch and stops at the target). Flags override the preset, as in `train`.")
    parser.add_argument("--seeds", type=positive_int, default=5,
                        help="runs with seeds --seed, --seed+1, ... after one untimed warm-up")
    parser.add_argument("--candidate", action="append", metavar="PRESET:KEY=VALUE,...",
                        help="time this recipe instead of --preset: a preset with settings over it, e.g. "
                             "'speedrun-94:epochs=6.5,label_smoothing=0.2' (keys: the flags' names with "
                             "underscores); repeat it to compare several in one process, each with its own "
                             "warm-up and seeds and judged against its preset's target; the flags given apply "
                             "to every candidate, its own settings win over them")
    parser.add_argument("--json", action="store_true",
                        help="print one JSON object as the last line (with --candidate: one per candidate)")


def format_row(row: dict) -> str:
    reached = f"{row['time_to_target_s']:8.2f} s" if row["reached"] else "  not reached"
    return f"seed {row['seed']:>3}  test acc {row['test_acc']:.4f}  time to target {reached}  " \
           f"(run {row['wall_seconds']:.2f} s, {row['images']:,} training images, {row['flops']:.3g} FLOPs)"


def format_summary(result: dict) -> str:
    return "\n".join([
        f"{result['preset']}: target {result['target']} on {result['test_examples']:,} test images, "
        f"{result['seeds']} seeds ({result['train_examples']:,} training images)",
        f"  test acc   mean {result['mean_acc']:.4f}  min {result['min_acc']:.4f}  max {result['max_acc']:.4f}"
        f"  (std {result['std_acc']:.4f})",
        f"  time (s)   mean {result['mean_time_s']:.2f}  min {result['min_time_s']:.2f}  "
        f"max {result['max_time_s']:.2f}   (seeds that missed the target count their whole run)",
        f"  reached    {result['reached']:.0%} of seeds; mean accuracy "
        f"{'meets' if result['mean_acc'] >= result['target'] else 'MISSES'} the target",
        f"  images     mean {result['mean_images']:,.0f} training images to the target (as the time: a seed that "
        "missed it counts its whole run)",
        f"  FLOPs      mean {result['mean_flops']:.3g} training FLOPs to the target (the images x "
        f"{result['flops_per_image'] / 1e6:,.2f} MFLOP per image: forward + backward, as `profile` counts)",
        f"  data       {result['data_source']}",
        f"  warm-up    {result['warmup_s']:.2f} s untimed" + (" (includes torch.compile)" if result["compile"] else ""),
        f"  machine    {format_machine(result['machine'])}"])


def format_candidates(results: list[dict]) -> str:
    """One line per candidate: mean/min test accuracy, share of seeds at the target, mean seconds."""
    first = results[0]
    lines = [f"candidates: {first['seeds']} seeds each, times in seconds, training images and FLOPs per run to "
             f"the target (seeds that missed it count their whole run)",
             f"  {'mean acc':>8}  {'min acc':>7}  {'target':>6}  {'reached':>7}  {'mean time':>9}  "
             f"{'images':>10}  {'FLOPs':>9}  candidate"]
    lines += [f"  {r['mean_acc']:8.4f}  {r['min_acc']:7.4f}  {r['target']:6g}  {r['reached']:7.0%}  "
              f"{r['mean_time_s']:9.2f}  {r['mean_images']:10,.0f}  {r['mean_flops']:9.3g}  {r['candidate']}"
              for r in results]
    sources = dict.fromkeys(r["data_source"] for r in results)  # one, unless candidates change the data
    lines += [f"  data       {'; '.join(sources)}", f"  machine    {format_machine(first['machine'])}"]
    return "\n".join(lines)


def describe(config: TrainConfig) -> str:
    return f"{config.model}, {config.epochs:g} epochs, batch {config.batch_size}"


def check_seeds(config: TrainConfig, seeds: int) -> None:
    """The seeds --seed .. --seed + --seeds - 1 are all seeds (TrainConfig's range), checked before any trains."""
    last = field_range("seed")[1]
    if config.seed + seeds - 1 > last:
        raise UserError(f"--seeds {seeds:,} from --seed {config.seed:,} goes past the largest seed, {last:,}: "
                        f"give at most {last - config.seed + 1:,} seeds, or a smaller --seed.")


def candidates_from_args(args) -> list[tuple[str, TrainConfig]]:
    """Every --candidate's config, all built before anything trains (a typo fails at once)."""
    if args.preset:
        raise UserError("--preset and --candidate both name the recipe: give the preset inside each "
                        "candidate (--candidate PRESET:key=value,...).")
    file_values = read_config_file(args.config) if args.config else None
    flags = training_overrides(args)
    candidates = [(text, candidate_config(text, flags, file_values)) for text in args.candidate]
    for _, config in candidates:
        target_of(config)  # a preset off the ladder needs --target-accuracy
        check_seeds(config, args.seeds)
    return candidates


def run_candidate_list(args) -> int:
    candidates = candidates_from_args(args)
    print(f"record: {len(candidates)} candidate{'s' * (len(candidates) != 1)}, {args.seeds} seeds each after "
          f"its own warm-up", flush=True)
    results = run_candidates(
        candidates, args.seeds,
        on_start=lambda text, config: print(f"candidate {text} ({describe(config)})", flush=True),
        on_seed=lambda row: print("  " + format_row(row), flush=True))
    print(format_candidates(results), flush=True)
    if args.json:
        for result in results:
            print(json.dumps({"candidate": result["candidate"], **json_line(result)}))
    sys.stdout.flush()
    return 0


def run(args) -> int:
    if args.candidate:
        return run_candidate_list(args)
    config = config_from_args(args, default_preset="speedrun")
    check_seeds(config, args.seeds)
    print(f"record: {config.preset} ({describe(config)}), "
          f"{args.seeds} seeds after one warm-up", flush=True)
    result = run_record(config, args.seeds, on_seed=lambda row: print(format_row(row), flush=True))
    print(format_summary(result), flush=True)
    if args.json:
        print(json.dumps(json_line(result)))
    sys.stdout.flush()
    return 0
