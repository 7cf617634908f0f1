"""Command line: `python -m dimr COMMAND ...` (`dimr COMMAND ...` once `pip install .`); COMMANDS lists them."""

import argparse
import importlib
import sys

# command -> (module, one-line help); each module defines add_cli_arguments(parser) and cli_main(args).
COMMANDS = {
    "convert": ("dimr.network.convert_cli", "convert an official .pth checkpoint to safetensors"),
    "sample": ("dimr.sampling.sample_cli", "generate images (and per-branch predictions) to PNG files"),
    "train": ("dimr.lab.train", "train a small pixel-space DiMR on the shapes dataset"),
    "distortion": ("dimr.lab.distortion", "measure the distortion rate of a model's samples"),
    "reproduce": ("dimr.lab.reproduce", "train both lab models from scratch side by side, measure them (and install)"),
    "evaluate": ("dimr.evaluation.evaluate", "sample N images across processes/GPUs (torchrun) into one file and score it"),
    "fid": ("dimr.evaluation.fid", "Inception FID of a sample file against a reference"),
}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    prog = "python -m dimr" if sys.argv[0].endswith("__main__.py") else "dimr"
    parser = argparse.ArgumentParser(prog=prog, description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    chosen = argv[0] if argv and argv[0] in COMMANDS else None
    for name, (module, help_text) in COMMANDS.items():
        command_parser = sub.add_parser(name, help=help_text)
        # Import only the chosen command's module: the others may pull in heavy dependencies.
        if name == chosen:
            importlib.import_module(module).add_cli_arguments(command_parser)
    args = parser.parse_args(argv)
    try:
        return importlib.import_module(COMMANDS[args.command][0]).cli_main(args) or 0
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
