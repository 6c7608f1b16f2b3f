"""Pieces every ``bilevel-rl`` sub-command shares: errors, argument types, progress."""

from __future__ import annotations

import argparse
import math
import os
import sys
import time


class UsageError(Exception):
    """A user error: reported on one line, exit status 2."""


# ------------------------------------------------------------ argument types


def int_at_least(minimum: int):
    """argparse type: an integer ``>= minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected an integer, got {text!r}"
            ) from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        return value

    return parse


positive_int = int_at_least(1)
nonnegative_int = int_at_least(0)


def float_in(low: float, high: float, *, closed_high: bool = False):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected a number, got {text!r}"
            ) from None
        ok = low <= value <= high if closed_high else low <= value < high
        if not (math.isfinite(value) and ok):
            bracket = "]" if closed_high else ")"
            raise argparse.ArgumentTypeError(
                f"must lie in [{low:g}, {high:g}{bracket}, got {text}"
            )
        return value

    return parse


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def check_writable(option: str, path: str) -> None:
    """Raises :class:`UsageError` unless the file ``path`` can be written."""
    folder = os.path.dirname(os.path.abspath(path)) or "."
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as err:
        raise UsageError(
            f"{option}: cannot create folder {folder!r} ({err.strerror})"
        ) from None
    if not os.access(folder, os.W_OK) or os.path.isdir(path):
        raise UsageError(f"{option}: cannot write {path!r}")


# ------------------------------------------------------------------ progress


class Reporter:
    """Progress that behaves: a tqdm bar on a terminal, plain lines otherwise.

    Not on a terminal (a log file, CI), an update prints one line at most every
    ``interval`` seconds (and always the last one); ``quiet`` prints nothing.
    Messages (e.g. the compile time) go to the same stream (stderr).
    """

    def __init__(
        self,
        total: int,
        unit: str,
        *,
        quiet: bool = False,
        stream=None,
        interval: float = 5.0,
    ):
        self.total, self.unit, self.quiet = total, unit, quiet
        self.stream = sys.stderr if stream is None else stream
        self.interval, self.done = interval, 0
        self.last_line = -math.inf
        self.bar = None
        if not quiet and self.stream.isatty():
            from tqdm import tqdm

            self.bar = tqdm(
                total=total, unit=unit, file=self.stream, dynamic_ncols=True
            )

    def update(self, done: int, **fields) -> None:
        """Moves to ``done`` of ``total``; ``fields`` are shown beside the count."""
        self.done = done
        if self.quiet:
            return
        if self.bar is not None:
            self.bar.update(done - self.bar.n)
            self.bar.set_postfix(fields, refresh=True)
            return
        now = time.monotonic()
        if done >= self.total or now - self.last_line >= self.interval:
            self.last_line = now
            text = "  ".join(f"{k}={v}" for k, v in fields.items())
            pct = 100.0 * done / max(self.total, 1)
            print(
                f"[{done}/{self.total} {self.unit} {pct:5.1f}%] {text}",
                file=self.stream,
                flush=True,
            )

    def message(self, text: str) -> None:
        if self.quiet:
            return
        if self.bar is not None:
            self.bar.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def print_table(rows: list[tuple[str, object]]) -> None:
    """Two aligned columns on stdout."""
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
