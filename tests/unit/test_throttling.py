"""Throttling (issue 16): a server asking to back off is waited for, per host, and never turns a
message into a failure; the retry after it sends exactly the messages that were not stored.

The engine runs on memory stores (migrator/stores/memory.py) whose APPENDs are answered with the
throttle wordings of Microsoft 365 and RFC 5530; tests/e2e/test_provider_m365.py does the same
against Dovecot behind a stand-in for Microsoft 365."""

from __future__ import annotations

import re
import threading
import time
from collections import Counter

import pytest

from migrator.governor import Governor, Governors
from migrator.naming import INBOX
from migrator.stores.memory import MemoryServer
from migrator.throttle import is_throttle, suggested_wait
from tests.unit.test_engine_memory import World

BARE = "APPEND Request is throttled. Suggested Backoff Time: 100 ms"
WORDINGS = [BARE, "APPEND [THROTTLED] Request is throttled. Suggested Backoff Time: 100 milliseconds",
            "APPEND [UNAVAILABLE] try again later"]


def body(i: int) -> bytes:
    return f"Message-ID: <{i}@throttle.example>\r\nSubject: m{i}\r\n\r\nbody {i}\r\n".encode()


def test_throttle_answers_are_read_with_their_wait():
    assert suggested_wait("NO Request is throttled. Suggested Backoff Time: 299609 ms") == pytest.approx(299.609)
    assert suggested_wait("NO [THROTTLED] Suggested Backoff Time: 1500 milliseconds") == 1.5
    assert suggested_wait("NO [UNAVAILABLE] later") is None
    for text in (*WORDINGS, "* BYE Request is throttled", "NO [LIMIT] too many sessions"):
        assert is_throttle(text), text
    for text in ("NO [OVERQUOTA] full", "NO [LIMIT] Mail size is larger than the maximum size allowed",
                 "NO [PARSE] bad header"):
        assert not is_throttle(text), text


@pytest.mark.parametrize("multiappend", [True, False])
@pytest.mark.parametrize("said", WORDINGS)
def test_a_throttled_append_is_sent_again_after_the_wait_never_failed(tmp_path, multiappend, said):
    """Without MULTIAPPEND a batch goes one APPEND at a time: those before the throttled one are
    stored, and must be neither sent again (a duplicate) nor taken for the throttled ones."""
    src, dst = MemoryServer(), MemoryServer(multiappend=multiappend)
    for i in range(120):
        src.deliver(INBOX, body(i))
    refused: list[bytes] = []
    dst.refuse_appends(lambda b: refused.append(b) or len(refused) % 7 == 0, times=6, text=said)
    governors = Governors(max_backoff=0.3)  # [UNAVAILABLE] suggests no time: 2 s, capped here
    stats = World(src, dst, str(tmp_path / "state.sqlite")).run(workers=4, batch_count=10, chunk_messages=30,
                                                                 governors=governors)
    assert not stats.failures and not stats.folder_errors, (stats.failures, stats.folder_errors)
    held = Counter(m[0] for m in dst.contents(INBOX).values())
    assert held == Counter(body(i) for i in range(120))  # each once: none lost, none twice
    assert governors.waits() and all(w.side == "destination" for w in governors.waits())


def test_every_session_to_the_host_waits_then_fewer_send_at_once():
    gov = Governor("destination", "mail.example", ceiling=4)
    stop = threading.Event()
    started: list[float] = []

    def worker() -> None:
        with gov.turn(stop):
            started.append(time.monotonic())

    t0 = time.monotonic()
    assert gov.throttled("NO Request is throttled. Suggested Backoff Time: 300 ms") == pytest.approx(0.3, abs=0.05)
    gov.throttled("NO Request is throttled. Suggested Backoff Time: 250 ms")  # in flight: the same pause
    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    assert len(started) == 4 and min(started) - t0 >= 0.29  # nobody went during the wait
    assert len(gov.waits) == 1 and gov.allowed == 2  # one pause, said once; half the sessions
    for _ in range(2):
        gov.succeeded()
    assert gov.allowed == 3  # grows back by one per round of calls that went through


def test_a_pause_is_told_to_the_other_processes_and_one_told_is_kept_and_said_once():
    """cluster.share_throttles' two halves, without a cluster: `relay` hears of this process's own
    pauses only (a told one is not told again), `heard` pauses this process's sessions to the host,
    and a run that joins during a pause hears of it as it joins."""
    told: list = []
    here = Governors(relay=told.append)
    said: list = []
    with here.joined({"destination": "mx.example"}, 2, said.append):
        here.get("destination", "mx.example", 0).throttled("NO [THROTTLED] slow down")
        here.heard("source", "imap.example", 0.4, "NO Request is throttled. Suggested Backoff Time: 400 ms")
    assert [(w.side, w.relayed) for w in told] == [("destination", False)]  # the told pause not told back
    gov = here.get("source", "imap.example", 0)
    assert gov.waits and gov.waits[-1].relayed and "another worker of the batch" in gov.waits[-1].line()
    t0 = time.monotonic()
    late: list = []
    with here.joined({"source": "imap.example"}, 1, late.append):  # a run starting during the pause
        with gov.turn():
            waited = time.monotonic() - t0
    assert 0.25 <= waited < 1.5  # the told pause held this process's sessions
    assert len(late) == 1 and late[0].relayed and 0 < late[0].seconds <= 0.4  # ... and was said to the run


def test_the_wait_is_capped_and_a_stop_ends_it():
    gov = Governor("source", "mail.example", ceiling=2, max_backoff=60)
    assert gov.throttled("NO Request is throttled. Suggested Backoff Time: 299609 ms") == pytest.approx(60, abs=1)
    stop = threading.Event()
    stop.set()
    t0 = time.monotonic()
    with gov.turn(stop):
        pass
    assert time.monotonic() - t0 < 0.5


def test_gmail_bandwidth_answers_are_throttles_not_refusals():
    from migrator.stores.imap_parse import TRANSIENT, classify

    for text in ("NO [OVERQUOTA] Account exceeded command or bandwidth limits. (Failure)",
                 "* BYE [ALERT] Account exceeded command or bandwidth limits.",
                 "* BYE Session expired, please login again."):
        assert is_throttle(text) and classify(text) == TRANSIENT, text
    assert not is_throttle("NO [OVERQUOTA] Quota exceeded (mailbox for user is full)")


@pytest.mark.parametrize("side", ["source", "destination"])
def test_a_spent_byte_budget_stops_the_run_and_the_next_day_goes_on(tmp_path, side):
    """--max-bytes-per-day: the run stops (BudgetSpent, exit 75) before a batch that would go over
    it, with nothing in flight; the same command run the next day copies the rest, each message once."""
    from migrator.errors import EXIT_BUDGET, BudgetSpent

    src, dst = MemoryServer(), MemoryServer()
    for i in range(60):
        src.deliver(INBOX, body(i))
    size = len(body(10))
    world = World(src, dst, str(tmp_path / "state.sqlite"))
    governors = Governors(budgets={side: 25 * size})
    with pytest.raises(BudgetSpent, match="byte budget .* is spent") as e:
        world.run(workers=2, batch_count=5, chunk_messages=20, governors=governors)
    assert e.value.exit_code == EXIT_BUDGET
    account = ("source", "src.example", "a") if side == "source" else ("destination", "dst.example", "b")
    spent = governors.budget(*account).spent
    assert 0 < spent <= 25 * size
    assert f"byte budget for {account[2]}@{account[1]} is spent" in str(e.value)
    copied = Counter(m[0] for m in dst.contents(INBOX).values()) if INBOX in dst.names() else Counter()
    assert 0 < sum(copied.values()) <= 25 and set(copied.values()) == {1}
    stats = world.run(workers=2, batch_count=5, chunk_messages=20, governors=Governors(budgets={side: 60 * size}))
    assert not stats.failures and not stats.folder_errors
    assert Counter(m[0] for m in dst.contents(INBOX).values()) == Counter(body(i) for i in range(60))


def test_the_byte_budget_is_each_accounts_not_the_hosts():
    """Gmail's caps (2,500 MB a day down, 500 MB up) are per user: two mailboxes of a batch on one
    host each have the whole budget; a second run of the same account in the process shares it."""
    from migrator.errors import BudgetSpent

    governors = Governors(budgets={"destination": 1000})
    alice, bob = governors.budget("destination", "imap.gmail.com", "alice"), governors.budget(
        "destination", "IMAP.gmail.com", "bob")
    alice.spend(900)
    bob.spend(900)  # not refused: bob's own budget
    assert governors.budget("destination", "imap.gmail.com", "alice") is alice
    with pytest.raises(BudgetSpent, match="alice@imap.gmail.com"):
        alice.spend(200)
    governors.limit_budget("destination", 500)  # a preset's lower cap reaches the accounts already known
    with pytest.raises(BudgetSpent):
        governors.budget("destination", "imap.gmail.com", "carol").spend(600)


def test_the_progress_line_says_while_a_host_is_waited_for_and_why():
    import io

    from migrator.governor import Wait
    from migrator.progress import Progress
    from migrator.stats import Stats

    stats, out = Stats(), io.StringIO()
    with Progress(stats, interval=0.1, stream=out):
        stats.waited(Wait("destination", "mail.example", 0.0, 30.0, "Suggested Backoff Time: 30000 ms"))
        time.sleep(0.7)
    lines = out.getvalue().splitlines()
    assert lines[0] == "destination throttled: waiting 30.0 s as the server asked (mail.example)"  # as it starts
    progress = [line for line in lines if line.startswith("progress:")]
    assert progress and all(re.search(r", waiting (29|30) s: destination mail.example throttled$", line)
                            for line in progress), lines
    stats._waiting_until = 0.0  # the pause is over: the line no longer says it
    assert Progress(stats)._waiting() == ""
