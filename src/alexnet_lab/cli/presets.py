"""`alexnet-lab presets [NAME]`: the presets with their targets and measured results, or one preset as
YAML ready to edit and run with `train --config FILE`."""

from __future__ import annotations

NAME = "presets"

# What each preset was measured to do, with where the measurement is written down. Copied from the
# docs (each row there names its command, machine and load); `record --preset NAME` re-measures a rung.
MEASURED = {
    "d2l": "the book: 0.883 test acc after 10 epochs on a V100 (3941.8 examples/s); hours on a 2-core CPU",
    "fast": "0.8841 reached after 1.99 epochs (119,520 examples) at 224x224 (docs/PERFORMANCE.md)",
    "one-epoch": "0.8928 after 1 epoch, 806 s, seed 0, 2-core AMD EPYC (docs/RECORDS.md)",
    "speedrun": "0.8852 mean of 5 seeds in 1.51 s, 2-core AMD EPYC (docs/RECORDS.md)",
    "speedrun-90": "0.9016 mean of 5 seeds in 17.99 s on a 2-core AVX2 AMD EPYC (fp32), the SGD recipe it "
                   "replaced 22.75 s there, 3.71 s on an AVX-512 one (docs/RECORDS.md)",
    "speedrun-92": "0.9202 mean of 5 seeds in 55.06 s on a 2-core AVX2 AMD EPYC (fp32), the SGD recipe it "
                   "replaced 85.29 s there, 15.68 s on an AVX-512 one (docs/RECORDS.md)",
    "speedrun-94": "0.9416 mean of 5 seeds in 80.99 s, 2-core AMD EPYC (docs/RECORDS.md)",
    "speedrun-95": "not reached: 0.9491 in 502.7 s, seed 0, 2-core AMD EPYC (docs/RECORDS.md)",
    "best": "0.9530 in 1,197 s, seed 0, 2-core AMD EPYC (docs/RECORDS.md)",
}


def add_arguments(parser) -> None:
    parser.add_argument("name", nargs="?", metavar="NAME", help="a preset to print as YAML")


def preset_yaml(name: str) -> str:
    """Every setting of the preset (the book's defaults filled in), as YAML with a how-to header."""
    import yaml

    from alexnet_lab.engine.config import make_config

    settings = make_config(name).to_dict()
    values = {"preset": name, **{k: v for k, v in settings.items() if k not in ("preset", "data_dir")}}
    header = (f"# alexnet-lab preset '{name}': every setting. Edit, then run:\n"
              f"#   alexnet-lab train --config FILE      (flags given beside it override the file)\n")
    return header + yaml.safe_dump(values, sort_keys=False, default_flow_style=False)


def table() -> str:
    from alexnet_lab.engine.config import RECORD_TARGETS, make_config, preset_names

    rows = [("preset", "model", "epochs", "batch", "target", "measured")]
    for name in preset_names():
        config = make_config(name)
        target = f"{RECORD_TARGETS[name]:.3f}" if name in RECORD_TARGETS else "-"
        rows.append((name, config.model, f"{config.epochs:g}", str(config.batch_size), target,
                     MEASURED.get(name, "-")))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)) + "  " + r[-1] for r in rows]
    return "\n".join(lines) + "\n\nShow one as YAML: alexnet-lab presets NAME > my.yaml; then: " \
                              "alexnet-lab train --config my.yaml"


def run(args) -> int:
    from alexnet_lab.engine.config import PRESETS, preset_names
    from alexnet_lab.errors import UserError

    if args.name is None:
        print(table())
        return 0
    if args.name not in PRESETS:
        raise UserError(f"Unknown preset '{args.name}'. Choose one of: {', '.join(preset_names())}.")
    print(preset_yaml(args.name), end="")
    return 0
