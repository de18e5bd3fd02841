"""`alexnet-lab presets [NAME]`: the presets with their targets, or one preset as YAML ready to edit and run
with `train --config FILE`. What each was measured to do is in docs/RECORDS.md."""

from __future__ import annotations

NAME = "presets"


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
    from alexnet_lab.engine.config import PRESETS, make_config, preset_names

    rows = [("preset", "model", "epochs", "batch", "target")]
    for name in preset_names():
        config, target = make_config(name), PRESETS[name].get("target")
        rows.append((name, config.model, f"{config.epochs:g}", str(config.batch_size),
                     f"{target:.3f}" if target else "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join(lines) + ("\n\ntarget: the mean test accuracy `alexnet-lab record --preset NAME` times a rung "
                               "of the speed ladder to. Measured times and accuracies: docs/RECORDS.md.\n"
                               "Show one as YAML: alexnet-lab presets NAME > my.yaml; then: "
                               "alexnet-lab train --config my.yaml")


def run(args) -> int:
    if args.name is None:
        print(table())
    else:
        print(preset_yaml(args.name), end="")  # an unknown name: make_config's one error
    return 0
