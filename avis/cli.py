"""The ``avis`` command: one console script, one subcommand per step of the workflow.

Each subcommand lives beside the code it drives and is imported only when it runs, so that ``avis --help``
and light commands stay fast. A subcommand module provides::

    def add_arguments(parser: argparse.ArgumentParser) -> None: ...
    def run(args: argparse.Namespace) -> int: ...      # the exit code

Errors a user can act on (:class:`avis.errors.AvisError`) are printed as one line,
``avis <command>: error: <file>: <what is wrong>``, with a non-zero exit code; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import traceback

from avis import __version__
from avis.errors import AvisError

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "synth": ("data_tools.synth", "write the synthetic audio-visual dataset (mp4 + YTVIS JSON)"),
    "build": ("data_tools.build", "raw videos (+ YTVIS JSON) -> synchronized WebDataset shards"),
    "inspect": ("avis.data.inspect", "one JSON line per video in the given shards"),
    "train": ("avis.engine.train", "train a model (hydra overrides, e.g. experiment=rcf_av_tiny)"),
    "eval": ("avis.engine.evaluate", "run a checkpoint online over shards -> results + metrics"),
    "infer": ("avis.engine.infer", "run a checkpoint on raw video files -> results + overlays"),
    "score": ("avis.evaluation.score", "YouTube-VIS metrics of a results JSON against ground truth"),
    "ttest": ("avis.evaluation.ttest", "significance of the difference between two result sets"),
    "export": ("data_tools.export", "export predictions as YTVIS / COCO / PNG / CVAT / overlay video"),
    "demo": ("avis.demo", "the whole workflow on the embedded synthetic dataset"),
    "view": ("avis.view", "a static HTML page to browse results with their sound (masks, IoU, attention)"),
}


def _top_help() -> str:
    width = max(len(n) for n in COMMANDS)
    lines = [
        "usage: avis [--version] <command> [options]   (avis <command> --help for its options)",
        "",
        "audio-visual video instance segmentation toolkit",
        "",
        "commands:",
    ]
    for name, (_, text) in COMMANDS.items():
        lines.append(f"  {name:<{width}}  {text}")
    return "\n".join(lines)


def _load(name: str):
    return importlib.import_module(COMMANDS[name][0])


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_top_help())
        return 0 if argv else 2
    if argv[0] == "--version":
        print(f"avis {__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"avis: error: unknown command '{name}' (choose from {', '.join(COMMANDS)})", file=sys.stderr)
        return 2
    debug = "--debug" in rest
    logging.basicConfig(level=logging.DEBUG if debug else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        mod = _load(name)
        parser = argparse.ArgumentParser(prog=f"avis {name}", description=COMMANDS[name][1])
        parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logging")
        mod.add_arguments(parser)
        args = parser.parse_args(rest)
        return int(mod.run(args) or 0)
    except AvisError as e:
        if debug:
            traceback.print_exc()
        print(f"avis {name}: error: {e}", file=sys.stderr)
        return e.exit_code
    except OSError as e:  # the machine, not our code: a full disk, a read-only folder, a missing permission
        if debug:
            traceback.print_exc()
        where = f"{e.filename}: " if e.filename else ""
        print(f"avis {name}: error: {where}{e.strerror or e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"avis {name}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - last resort: one line, the traceback only on request
        if debug:
            traceback.print_exc()
        print(f"avis {name}: internal error: {type(e).__name__}: {e} (rerun with --debug for the traceback)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
