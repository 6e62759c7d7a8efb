"""The `vicregl` Typer application and the help texts its subcommands share; each module of
vicregl_cli.commands registers its subcommands on `app` (vicregl_cli.cli imports them all).
The command layer imports protocol code inside its command functions (this layer's one exception to imports at
the top), so that `--help` and argument errors answer without loading torch (benchmarks/bench_cli.py)."""

import typer
from typer.core import TyperCommand

app = typer.Typer(
    help="VICRegL pretraining and the downstream evaluations of the VICReg / VICRegL papers.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
WEIGHTS_HELP = "Weights file (backbone.pth, checkpoint.pth, release, torchvision) or 'random'"
BACKBONE_HELP = "Registry name; default: the name stored in the weights file"
# One word for a dataset root in every command (pretrain's config field `data`); --data-root, segment's and
# detect's former name (mmseg's and detectron2's word), stays an alias
DATA_FLAGS = ("--data", "--data-root")


def multi_value(*names: str) -> type[TyperCommand]:
    """A command class whose options `names` take every value that follows them: `--lr 0.1 0.3` is read as
    `--lr 0.1 --lr 0.3` (a click option takes one value each time it is given). Every multi-value option of
    every subcommand (--k, --lr, --milestones, --cost, --cfg-options, ...) goes through this one parser."""

    class MultiValueCommand(TyperCommand):
        def parse_args(self, ctx: typer.Context, args: list[str]) -> list[str]:
            spread, option, taken = [], None, False
            for token in args:
                if token.startswith("--"):
                    option, taken = (token if token in names else None), False
                elif option is not None and taken:
                    spread.append(option)
                else:
                    taken = True
                spread.append(token)
            return super().parse_args(ctx, spread)

    return MultiValueCommand
