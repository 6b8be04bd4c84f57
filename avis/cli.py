"""The ``avis`` command: one console script, one subcommand per step of the workflow.

Each subcommand lives beside the code it drives and is imported only when it runs, so that ``avis --help``
and light commands stay fast. A subcommand module provides::

    def add_arguments(parser: argparse.ArgumentParser) -> None: ...
    def run(args: argparse.Namespace) -> int: ...      # the exit code

Errors a user can act on (:class:`avis.errors.AvisError`) are printed as one line,
``avis <command>: error: <file>: <what is wrong>``, with a non-zero exit code; ``--debug`` (anywhere on the
line: ``avis --debug score ...``, ``avis train experiment=x --debug``) shows the traceback.

A reader that stops early (``avis inspect ... | head -1``) ends the command quietly: the broken pipe is not an
error of the command, so nothing is printed and the exit code is 141 (128 + SIGPIPE, as ``grep`` or ``cat``
killed by the signal report it). The signal itself stays ignored: a socket closed under a remote shard reader
must be an error there, not a silent death of the process.

What a command prints comes partly from untrusted files (category names, media paths, messages quoting a
file). While a command runs, its stdout and stderr pass through :func:`avis.io.text.printable`, the one place
that neutralises terminal control: escape sequences, other control characters and bidirectional-text
overrides are shown as ``\x1b``-style escapes instead of reaching the terminal raw.
"""

from __future__ import annotations

import argparse
import importlib
import io
import logging
import os
import sys
import traceback

from avis import __version__
from avis.errors import AvisError
from avis.io.text import printable

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
    "stream": ("avis.engine.stream", "online inference on a live source: one JSON line per frame, latency"),
    "view": ("avis.view", "a static HTML page to browse results with their sound (masks, IoU, attention)"),
}
EXIT_BROKEN_PIPE = 128 + 13  # what a shell reports for a process ended by SIGPIPE


class _PrintableStream:
    """A text stream whose writes go through :func:`printable` (everything else is the wrapped stream's)."""

    def __init__(self, stream):
        self._stream = stream

    def write(self, text: str) -> int:
        self._stream.write(printable(text))
        return len(text)

    def writelines(self, lines) -> None:
        for line in lines:
            self.write(line)

    def __getattr__(self, name):
        return getattr(self._stream, name)


def _top_help() -> str:
    width = max(len(n) for n in COMMANDS)
    lines = [
        "usage: avis [--version] [--debug] <command> [options]   (avis <command> --help for its options)",
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
    # --debug is the CLI's, wherever it stands (before the command, among hydra overrides): taken out here
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    streams = sys.stdout, sys.stderr
    try:
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
        sys.stdout, sys.stderr = _PrintableStream(sys.stdout), _PrintableStream(sys.stderr)
        code = _run(name, rest, debug)
        sys.stdout.flush()  # a pipe closed early shows here for output still buffered
        return code
    except BrokenPipeError:
        return _broken_pipe(streams)
    finally:
        sys.stdout, sys.stderr = streams


def _broken_pipe(streams=None) -> int:
    """The reader of our output went away: send what is still buffered (and anything printed at exit) to
    /dev/null, so that Python does not report the failed flush when it exits."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    for stream in streams or (sys.stdout, sys.stderr):
        try:
            os.dup2(devnull, stream.fileno())
        except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
            pass
    os.close(devnull)
    return EXIT_BROKEN_PIPE


def _run(name: str, rest: list[str], debug: bool = False) -> int:
    logging.basicConfig(level=logging.DEBUG if debug else logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        mod = _load(name)
        parser = argparse.ArgumentParser(prog=f"avis {name}", description=COMMANDS[name][1])
        parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logging")
        mod.add_arguments(parser)
        args = parser.parse_args(rest)
        args.debug = debug or args.debug
        return int(mod.run(args) or 0)
    except AvisError as e:
        if debug:
            traceback.print_exc()
        print(f"avis {name}: error: {printable(str(e), one_line=True)}", file=sys.stderr)
        return e.exit_code
    except BrokenPipeError:  # before OSError: a closed pipe is the reader's choice, not an error to report
        return _broken_pipe()
    except OSError as e:  # the machine, not our code: a full disk, a read-only folder, a missing permission
        if debug:
            traceback.print_exc()
        where = f"{e.filename}: " if e.filename else ""
        print(f"avis {name}: error: {printable(f'{where}{e.strerror or e}', one_line=True)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"avis {name}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - last resort: one line, the traceback only on request
        if debug:
            traceback.print_exc()
        print(f"avis {name}: internal error: {printable(f'{type(e).__name__}: {e}', one_line=True)} (rerun with "
              "--debug for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
