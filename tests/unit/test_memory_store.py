"""The memory store's own hooks (migrator/stores/memory.py): each fault does what its doc says.
What it promises as a Store is tests/stores/test_memory.py (the contract)."""
from __future__ import annotations

import pytest

from migrator.errors import FolderError, MessageRejected, TransientError
from migrator.stores.base import AppendItem
from migrator.stores.memory import MemoryServer, munge8bit

BOX = ("Box",)
DATE = "01-Jan-2020 00:00:00 +0000"


def item(n: int, flags=()) -> AppendItem:
    return AppendItem(f"Subject: {n}\r\n\r\nbody {n}\r\n".encode(), flags, DATE)


@pytest.fixture
def server():
    server = MemoryServer()
    server.create(BOX)
    return server


def bodies(server) -> list[bytes]:
    return [body for body, _f, _d in server.contents(BOX).values()]


def test_refused_by_predicate_or_count_stores_nothing_of_the_command(server):
    store = server.connect()
    server.refuse_appends(match=lambda b: b"body 2" in b)
    with pytest.raises(MessageRejected):
        store.append(BOX, [item(1), item(2)])
    server.clear_faults()
    server.refuse_appends(times=1)
    with pytest.raises(MessageRejected):
        store.append(BOX, [item(3)])
    assert store.append(BOX, [item(4)]) == [1] and bodies(server) == [item(4).body]


def test_a_dropped_connection_stays_dropped_and_commit_says_whether_the_call_took_effect(server):
    first, second = server.connect(), server.connect()
    server.drop_connection("append", nth=2, commit=True)
    assert first.append(BOX, [item(1)]) == [1]
    with pytest.raises(TransientError):
        second.append(BOX, [item(2)])  # the second APPEND on the server: stored, its answer lost
    with pytest.raises(TransientError):
        second.status(BOX)
    assert first.status(BOX).messages == 2 and server.connect().append(BOX, [item(3)]) == [3]


def test_lost_appends_answer_ok_and_use_up_their_uid(server):
    server.lose_appends(match=lambda b: b"body 1" in b)
    assert server.connect().append(BOX, [item(1), item(2)]) == [1, 2]
    assert list(server.contents(BOX)) == [2]


def test_held_appends_land_when_told_and_survive_a_copy(server):
    store = server.connect()
    server.hold_appends(times=1)
    with pytest.raises(TransientError):
        store.append(BOX, [item(1)])
    after_kill = server.copy()
    assert bodies(server) == [] and server.land() == 1 and bodies(server) == [item(1).body]
    assert after_kill.land() == 1 and bodies(after_kill) == [item(1).body]


def test_munge8bit_keeps_the_size_and_the_body(server):
    server.rewrite(munge8bit)
    sent = "Subject: café\r\n\r\ncafé\r\n".encode()
    server.connect().append(BOX, [AppendItem(sent, (), DATE)])
    assert bodies(server) == ["Subject: cafXX\r\n\r\ncafé\r\n".encode()] and len(bodies(server)[0]) == len(sent)


def test_keywords_refused_and_read_only_selection_and_uidvalidity_never_reused():
    server = MemoryServer(keywords=False, uidplus=False)
    store = server.connect()
    store.create_folder(BOX)
    with pytest.raises(MessageRejected):
        store.append(BOX, [item(1, ("$Label1",))])
    assert store.append(BOX, [item(1, ("\\Seen",))]) == [None]
    store.select(BOX)
    with pytest.raises(FolderError):
        store.set_flags(1, ["\\Flagged"], [])  # selected read-only
    validity = store.status(BOX).uidvalidity
    server.delete_folder(BOX)
    with pytest.raises(FolderError):
        store.list_messages()  # the selected folder is gone
    store.create_folder(BOX)
    assert store.status(BOX).uidvalidity > validity
