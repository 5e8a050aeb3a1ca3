"""``convolab`` command line: ``convolab <command> [options]``.

Each command lives in its own module and exposes ``main(argv) -> int``; this file
only dispatches, so a command's imports (matplotlib, tqdm, ...) load only when used.
"""

from __future__ import annotations

import importlib
import os
import select
import sys

COMMANDS = {
    "demo": ("convolab.demo", "train a CNN in pure NumPy (MNIST-1D or digits)"),
    "explain": ("convolab.explain", "shapes, padding, FLOPs and receptive field of a conv"),
    "draw": ("convolab.draw", "animate a convolution in the style of the arithmetic guide"),
    "bench": ("convolab.bench", "benchmark convolab against PyTorch"),
}


# optional package -> the extra of pyproject.toml that installs it
EXTRAS = {
    "mnist1d": "demo", "sklearn": "demo", "tqdm": "demo", "threadpoolctl": "fast",
    "matplotlib": "viz", "PIL": "viz", "scipy": "fft", "torch": "test",
}


# a command -> the extra that installs everything it needs, and what each extra holds
COMMAND_EXTRAS = {"demo": "demo", "draw": "viz"}
_EXTRA_PACKAGES = {"demo": ("mnist1d", "sklearn", "tqdm", "matplotlib", "threadpoolctl"),
                   "viz": ("matplotlib", "PIL")}


def _usage() -> str:
    lines = ["usage: convolab <command> [options]", "", "commands:"]
    lines += [f"  {name:<8} {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "Run 'convolab <command> --help' for a command's options."]
    return "\n".join(lines)


def _stdout_reader_gone() -> bool:
    """Whether stdout is a pipe whose reader has closed it (its write end polls as an
    error), as opposed to another pipe of the command's own."""
    try:
        poll = select.poll()
        poll.register(sys.stdout.fileno(), select.POLLOUT)
        return any(ev & (select.POLLERR | select.POLLHUP) for _, ev in poll.poll(0))
    except (AttributeError, OSError, ValueError):  # no poll (Windows), no descriptor
        return False


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    cmd, rest = argv[0], argv[1:]
    if cmd not in COMMANDS:
        print(f"convolab: unknown command {cmd!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    try:
        module = importlib.import_module(COMMANDS[cmd][0])
        return int(module.main(rest) or 0)
    except BrokenPipeError:
        # `convolab draw --list-presets | head`: stdout's reader left.  Stop quietly, as
        # Unix tools do (exit 141, as one killed by SIGPIPE); any other broken pipe is
        # an error of the command's own and is raised
        if not _stdout_reader_gone():
            raise
        try:  # Python would flush stdout again at exit, and fail there
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)
        except (OSError, ValueError):  # pragma: no cover - no file descriptor
            pass
        return 141
    except ModuleNotFoundError as exc:
        # the commands import their optional packages when they need them
        top = (exc.name or "").partition(".")[0]
        if top.startswith("convolab") or not top:
            raise
        # the command's own extra where it has one (demo's holds matplotlib too)
        extra = COMMAND_EXTRAS.get(cmd) if top in _EXTRA_PACKAGES.get(
            COMMAND_EXTRAS.get(cmd), ()) else EXTRAS.get(top)
        how = f"pip install 'convolab[{extra}]'" if extra else f"pip install {top}"
        print(f"convolab {cmd}: needs the optional package {top!r}; install it with {how}",
              file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
