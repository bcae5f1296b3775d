"""Counted ids: unique within a process, and a forked child never repeats its parent's."""

from __future__ import annotations

import os

from uploader.kit.ids import CountedIds


def test_ids_are_unique_and_a_forked_child_draws_its_own_random_bits() -> None:
    ids = CountedIds()
    mine = [ids() for _ in range(1000)]
    assert len(set(mine)) == 1000
    assert all(len(each) == 28 and each[:16] == mine[0][:16] for each in mine)
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # the child: its next id, to the parent
        os.write(write, ids().encode())
        os._exit(0)
    os.close(write)
    os.waitpid(child, 0)
    theirs = os.read(read, 100).decode()
    os.close(read)
    assert theirs[:16] != mine[0][:16]  # its own random bits, so never one of ours
    assert ids()[:16] == mine[0][:16]  # the parent's stay
