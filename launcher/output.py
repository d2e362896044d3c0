"""Streaming worker output: `[rank N]` prefixes, per-rank logs, rank 0's progress bar, tails.

Why: N processes writing to one terminal are unreadable unless every line says
where it came from, and a progress bar (tqdm redraws one line with ``\\r``) from
several ranks would fight over the cursor.  The scheme:

* every worker's stdout+stderr go through one pipe; lines are split on ``\\n``;
  segments ending in ``\\r`` are *progress updates*;
* each line goes to ``RUN_DIR/logs/rank{N}.log`` and (``output.console: all``, or for
  rank 0) to the console as ``[rank N] line``;
* progress updates are shown for rank 0 only: on a terminal they redraw the bottom
  line in place (normal lines are printed above it), elsewhere (pipes, CI, mpiexec)
  at most one every ``progress_interval`` seconds as a normal line; logs get them
  at the same throttled rate;
* the last lines of every rank are kept so a failure can be shown with context.
"""
from __future__ import annotations

import collections
import os
import sys
import threading
import time
from typing import IO

__all__ = ["Console", "RankStream", "RecentLines", "split_segments"]


class RecentLines:
    """The last lines shown on the console, so a failure report need not print a rank's last
    lines a second time when they are right above (a multi-line error from every rank would
    otherwise appear once per rank and once more in the report)."""

    def __init__(self, keep: int = 200):
        self._lines: collections.deque[str] = collections.deque(maxlen=keep)
        self._lock = threading.Lock()

    def add(self, line: str) -> None:
        with self._lock:
            self._lines.append(line.rstrip("\r\n"))

    def shows(self, rank: int, lines: list[str]) -> bool:
        """True when every one of `lines` was shown as `[rank N] line` among the recent lines."""
        with self._lock:
            recent = set(self._lines)
        return bool(lines) and all(f"[rank {rank}] {line}" in recent for line in lines)


class Console:
    """Serialises writes from reader threads and keeps one live progress line on a TTY."""

    def __init__(self, stream: IO[str] | None = None, tty: bool | None = None, progress_interval: float = 10.0):
        self.stream = stream or sys.stdout
        self.tty = self.stream.isatty() if tty is None else tty
        self.progress_interval = progress_interval
        self._lock = threading.Lock()
        self._progress: str | None = None
        self._last_progress_line = 0.0
        self.recent = RecentLines()

    def _clear(self) -> None:
        if self.tty and self._progress is not None:
            self.stream.write("\r\x1b[K")

    def _redraw(self) -> None:
        if self.tty and self._progress is not None:
            self.stream.write("\r" + self._progress)

    def line(self, text: str) -> None:
        with self._lock:
            try:
                self._clear()
                self.recent.add(text)
                self.stream.write(text + "\n")
                self._redraw()
                self.stream.flush()
            except (OSError, ValueError):
                pass  # console gone (closed pipe); logs still have everything

    def progress(self, text: str) -> None:
        with self._lock:
            try:
                if self.tty:
                    self._progress = text
                    self.stream.write("\r\x1b[K" + text)
                    self.stream.flush()
                    return
                now = time.monotonic()
                if now - self._last_progress_line >= self.progress_interval:
                    self._last_progress_line = now
                    self.stream.write(text + "\n")
                    self.stream.flush()
            except (OSError, ValueError):
                pass

    def end_progress(self) -> None:
        """Drop the live progress line (its final state arrives as a normal line from tqdm's close)."""
        with self._lock:
            if self.tty and self._progress is not None:
                try:
                    self.stream.write("\r\x1b[K")
                    self.stream.flush()
                except (OSError, ValueError):
                    pass
            self._progress = None


def split_segments(buf: bytes) -> tuple[list[tuple[str, bytes]], bytes]:
    """Split a byte buffer into ('line'|'progress', text) segments; returns (segments, unfinished rest).

    ``\\r\\n`` counts as a line end; a lone ``\\r`` ends a progress update.
    """
    out: list[tuple[str, bytes]] = []
    start = 0
    n = len(buf)
    i = 0
    while i < n:
        c = buf[i]
        if c == 0x0A:  # \n
            out.append(("line", buf[start:i]))
            start = i + 1
        elif c == 0x0D:  # \r
            if i + 1 < n and buf[i + 1] == 0x0A:
                out.append(("line", buf[start:i]))
                i += 1
                start = i + 1
            elif i + 1 == n:
                break  # cannot tell yet whether \n follows
            else:
                out.append(("progress", buf[start:i]))
                start = i + 1
        i += 1
    return out, buf[start:]


class RankStream:
    """Reads one worker's merged output pipe in a thread: console, log file, tail."""

    def __init__(self, rank: int, fd_or_file, console: Console | None, log_path: str | None, *,
                 show_lines: bool = True, show_progress: bool = False, tail_lines: int = 20,
                 prefix: str | None = None, log_progress_interval: float = 10.0):
        self.rank = rank
        self._file = None if isinstance(fd_or_file, int) else fd_or_file
        self.fd = fd_or_file if isinstance(fd_or_file, int) else fd_or_file.fileno()
        self.console = console
        self.show_lines = show_lines
        self.show_progress = show_progress
        self.prefix = f"[rank {rank}] " if prefix is None else prefix
        self.tail: collections.deque[str] = collections.deque(maxlen=tail_lines)
        self.log = open(log_path, "a", encoding="utf-8", errors="replace") if log_path else None
        self.log_progress_interval = log_progress_interval
        self._last_log_progress = 0.0
        self._had_progress = False
        self.thread = threading.Thread(target=self._pump, name=f"dptrain-rank{rank}-output", daemon=True)

    def start(self) -> "RankStream":
        self.thread.start()
        return self

    def join(self, timeout: float = 5.0) -> None:
        self.thread.join(timeout)

    def _emit(self, kind: str, raw: bytes) -> None:
        text = raw.decode("utf-8", errors="replace").rstrip("\r")
        if kind == "progress":
            if not text.strip():
                return
            self._had_progress = True
            if self.console is not None and self.show_progress:
                self.console.progress(self.prefix + text)
            now = time.monotonic()
            if self.log and now - self._last_log_progress >= self.log_progress_interval:
                self._last_log_progress = now
                self._write_log(text.strip())
            return
        if self._had_progress:
            self._had_progress = False
            if self.console is not None and self.show_progress:
                self.console.end_progress()
        self.tail.append(text)
        self._write_log(text)
        if self.console is not None and self.show_lines:
            self.console.line(self.prefix + text)

    def _write_log(self, text: str) -> None:
        if self.log:
            try:
                self.log.write(text + "\n")
                self.log.flush()
            except (OSError, ValueError):
                pass

    def _pump(self) -> None:
        buf = b""
        try:
            while True:
                try:
                    chunk = os.read(self.fd, 65536)
                except InterruptedError:
                    continue
                except OSError:
                    break
                if not chunk:
                    break
                buf += chunk
                segments, buf = split_segments(buf)
                for kind, raw in segments:
                    self._emit(kind, raw)
            if buf:
                self._emit("line", buf)
        finally:
            try:
                if self._file is not None:
                    self._file.close()
                else:
                    os.close(self.fd)
            except OSError:
                pass
            if self.log:
                self.log.close()
                self.log = None

    def write_marker(self, text: str) -> None:
        """A line in the log only (e.g. '===== attempt 1 =====')."""
        self._write_log(text)
