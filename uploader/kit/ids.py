"""Ids unique across processes without a system call each: 64 random bits drawn once
per process (again in a forked child, so forked workers never share them), then a
counter. Drawing fresh random bytes for every id cost more than the request, the row or
the command it named, on the hot path. Request ids, webhook delivery ids and lock lease
tokens are made so."""

from __future__ import annotations

import itertools
import os
import secrets


class CountedIds:
    def __init__(self, counter_digits: int = 12) -> None:
        self._format = f"{{}}{{:0{counter_digits}x}}"
        self._draw()
        os.register_at_fork(after_in_child=self._draw)

    def _draw(self) -> None:
        self._prefix = secrets.token_hex(8)
        self._counter = itertools.count()

    def __call__(self) -> str:
        """The next id: 16 hex digits of the process's random bits, then the count."""
        return self._format.format(self._prefix, next(self._counter))
