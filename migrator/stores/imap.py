"""IMAP store: the Store calls (and the Pipelined ones) in IMAP terms.

It stands on three modules and touches no private part of imaplib or imapclient itself:
- imap_connect: opening a connection, TLS, login, COMPRESS, the namespace (asked once per account);
- imap_wire: every private imaplib/imapclient use (pipelining, raw APPEND, the FETCH readers),
  and ReadAhead, the bodies one round trip read before fetch() asked for them;
- imap_parse: reading answers, no I/O; imap_limits: Store.limits. docs/stores.md has the split.
"""

from __future__ import annotations

import imaplib
import logging
from collections.abc import Iterable, Iterator, Sequence

from imapclient import exceptions as imapexc

from migrator.accounts import Endpoint
from migrator.errors import FolderError, MessageRejected, Throttled, TransientError
from migrator.naming import Folder, to_server
from migrator.stores.base import AppendItem, Checked, FolderInfo, FolderStatus, Message, MessageMeta, Opened
from migrator.stores.calls import check_then_open_in_turn
from migrator.stores.connection import ConnectOptions, Credentials, connection_lost, make_ssl_context, server_text
from migrator.stores.imap_connect import connect, namespace, start_compression
from migrator.stores.imap_limits import destination_limits
from migrator.stores.imap_parse import (
    BINARY_ITEMS,
    FOLDER,
    MESSAGE_ITEMS,
    META_ITEMS,
    TRANSIENT,
    Fetched,
    binaries_from_fetch,
    capabilities_of,
    checked_fetches,
    classify,
    dec,
    folder_infos,
    messages_from_any_fetch,
    messages_from_fetch,
    meta_of,
    nul_suspects,
    parse_appenduid,
    parse_meta,
    restore_nul,
    selected_status,
    status_of,
    statuses_by_name,
    text,
    uid_set,
)
from migrator.stores.imap_watch import watch as watch_folders
from migrator.stores.imap_wire import ReadAhead, Refused
from migrator.throttle import is_throttle

__all__ = ["ConnectOptions", "Credentials", "ImapStore", "make_ssl_context"]  # stores.connection's, for cli/

META_FETCH_CHUNK = 5000  # UIDs per metadata FETCH: bounds the size of one response
# What a lost connection raises from imaplib, imapclient and the socket.
_LOST = (imaplib.IMAP4.abort, imapexc.IMAPClientAbortError, OSError, EOFError)


class ImapStore:
    """One IMAP connection. Not thread-safe: each worker opens its own."""
    meta_items = META_ITEMS  # what a listing FETCHes (stores/gmail.py adds Gmail's)
    def __init__(self, ep: Endpoint, creds: Credentials, opts: ConnectOptions | None = None):
        self.endpoint = ep
        self._opts = opts or ConnectOptions()
        self.wire = connect(ep, creds, self._opts)
        self.client = self.wire.client  # imapclient, used through its public API only
        self.wire.trace(logging.getLogger("imapclient.imaplib").isEnabledFor(logging.DEBUG))
        self._selected: Folder | None = None
        self._exists = 0  # EXISTS of the selected folder, as SELECT answered
        self.permanent_flags: tuple[str, ...] = ()  # PERMANENTFLAGS, as SELECT/EXAMINE answered
        self._read_ahead = ReadAhead()
        caps = {dec(c).upper() for c in self.client.capabilities()}
        self.raw_capabilities = caps
        self.capabilities = capabilities_of(caps)
        self.compressed = bool(self._opts.compress and "COMPRESS=DEFLATE" in caps and start_compression(self.wire, ep))
        self.separator, self.prefix = namespace(ep, self._opts, self._ask_namespace)

    # -- helpers -------------------------------------------------------------------------

    def _call(self, what: str, fn, *args, **kwargs):
        """Run one imapclient call, turning library/socket errors into our classes."""
        try:
            return fn(*args, **kwargs)
        except _LOST as e:
            raise connection_lost(self.endpoint.host, what, e) from None
        except (imaplib.IMAP4.error, imapexc.IMAPClientError) as e:
            raise self._refused(what, server_text(e)) from None

    def _refused(self, what: str, text: str) -> Exception:
        """A NO/BAD to a command other than APPEND: try again later, or this folder fails."""
        if classify(text) == TRANSIENT:
            return (Throttled if is_throttle(text) else TransientError)(f"{what} on {self.endpoint.host}: {text}")
        return FolderError(f"{what} failed on {self.endpoint.host}: {text}")

    def _ask_namespace(self) -> tuple[str | None, str]:
        """(separator, prefix) of the personal namespace, asked (imap_connect.namespace keeps it)."""
        if self.client.has_capability("NAMESPACE"):
            ns = self._call("NAMESPACE", self.client.namespace)
            if ns.personal:
                prefix, sep = ns.personal[0]
                return (dec(sep) if sep else None), dec(prefix or "")
        listed = self._call("LIST", self.client.list_folders, "", "")
        sep = listed[0][1] if listed else None
        return (dec(sep) if sep else None), ""

    def server_name(self, name: Folder) -> str:
        return to_server(name, self.separator, self.prefix)

    def _mailbox(self, name: Folder) -> bytes:
        return self.wire.mailbox(self.server_name(name))

    def _pipeline(self, commands: Sequence[tuple[str, tuple]]) -> list[tuple[str, list, list]]:
        """Wire.pipeline: a lost connection raises TransientError, BAD answers are the caller's."""
        try:
            return self.wire.pipeline(commands)
        except _LOST as e:
            what = " ".join(dict.fromkeys(name.upper() for name, _args in commands))
            raise connection_lost(self.endpoint.host, what, e) from None

    def _pipelined(self, command: str, arglist: Sequence[tuple]) -> list[tuple[str, list, list]]:
        """One command many times, sent without waiting for each answer."""
        return self._pipeline([(command, args) for args in arglist])

    # -- folders -------------------------------------------------------------------------

    def list_folders(self) -> list[FolderInfo]:
        pattern = (self.wire.mailbox(""), self.wire.mailbox("*"))
        answers = self._pipeline([("LIST", pattern), ("LSUB", pattern)])  # one round trip for both
        for (typ, data, _untagged), what in zip(answers, ("LIST", "LSUB"), strict=True):
            if typ != "OK":
                raise self._refused(what, text(data))
        subscribed = {n for _, _, n in self.wire.folder_list(answers[1][2])}
        return folder_infos(self.wire.folder_list(answers[0][2]), subscribed, self.separator, self.prefix)

    def create_folder(self, name: Folder, special_use: str | None = None) -> None:
        error = self.create_folders([(name, special_use)])[name]
        if error:
            raise FolderError(error)

    def create_folders(self, folders: Sequence[tuple[Folder, str | None]]) -> dict[Folder, str | None]:
        # special_use is not sent: the planner maps special folders onto the destination's own.
        names = [name for name, _special_use in folders]
        out: dict[Folder, str | None] = {}
        answers = self._pipelined("CREATE", [(self._mailbox(n),) for n in names])
        for name, (typ, data, _untagged) in zip(names, answers, strict=True):
            said = text(data)
            if typ == "OK" or "ALREADYEXISTS" in said.upper() or "already exists" in said.lower() \
                    or self._folder_exists(self.server_name(name)):  # Courier: "NO Cannot create this folder."
                out[name] = None
            else:
                out[name] = f"cannot create folder '{self.server_name(name)}' on {self.endpoint.host}: {said}"
        return out

    def subscribe(self, name: Folder) -> None:
        error = self.subscribe_folders([name])[name]
        if error:
            raise FolderError(error)

    def subscribe_folders(self, names: Sequence[Folder]) -> dict[Folder, str | None]:
        answers = self._pipelined("SUBSCRIBE", [(self._mailbox(n),) for n in names])
        return {name: None if typ == "OK" else f"SUBSCRIBE failed on {self.endpoint.host}: {text(data)}"
                for name, (typ, data, _untagged) in zip(names, answers, strict=True)}

    def _status_items(self) -> str:
        items = ["MESSAGES", "UIDNEXT", "UIDVALIDITY"]
        if self.capabilities.condstore:
            items.append("HIGHESTMODSEQ")
        if "STATUS=SIZE" in self.raw_capabilities:
            items.append("SIZE")
        return "(" + " ".join(items) + ")"

    def status(self, name: Folder) -> FolderStatus:
        typ, data, untagged = self._pipelined("STATUS", [(self._mailbox(name), self._status_items())])[0]
        st = status_of(statuses_by_name(untagged), self.server_name(name), alone=True) if typ == "OK" else None
        if st is None:
            raise self._refused(f"STATUS {self.server_name(name)}",
                                text(data) if typ != "OK" else "no STATUS data in the answer")
        return st

    def statuses(self, names: Sequence[Folder]) -> dict[Folder, FolderStatus]:
        """Answers are matched by the mailbox name they carry, not by order: a server may answer
        pipelined commands' untagged data before an earlier one's completion (Dovecot does)."""
        items = self._status_items()
        answers = self._pipelined("STATUS", [(self._mailbox(n), items) for n in names])
        by_name = statuses_by_name([line for _typ, _data, untagged in answers for line in untagged])
        out = {}
        for name, (typ, _data, _untagged) in zip(names, answers, strict=True):
            st = status_of(by_name, self.server_name(name)) if typ == "OK" else None
            if st is not None:
                out[name] = st
        return out

    # -- opening a folder ------------------------------------------------------------------

    def select(self, name: Folder, readonly: bool = True) -> FolderStatus:
        server = self.server_name(name)
        self._read_ahead.drop()
        try:
            info = self.client.select_folder(server, readonly=readonly)
        except _LOST as e:
            raise TransientError(f"connection lost selecting '{server}': {server_text(e)}") from None
        except (imaplib.IMAP4.error, imapexc.IMAPClientError) as e:
            raise FolderError(f"folder '{server}' cannot be opened on {self.endpoint.host}: {server_text(e)}") from None
        return self._selected_now(name, info)

    def select_and_list(self, name: Folder, readonly: bool = True, expect: int | None = None,
                        bodies: bool = False) -> tuple[FolderStatus, list[MessageMeta]]:
        """select() and list_messages() in one round trip: SELECT and UID FETCH 1:* sent together,
        when STATUS said (expect) the folder is small enough for one metadata answer. If SELECT
        fails, no folder is selected (RFC 3501 6.3.1), so the FETCH fails too: nothing is read
        from the folder selected before.

        bodies: the caller knows the whole folder fits in one batch and will copy all of it: the
        messages are fetched in the same round trip and kept for the next fetch() (ReadAhead: a
        round trip less per small folder on a first run)."""
        if expect is None or not 0 < expect <= META_FETCH_CHUNK:
            st = self.select(name, readonly)
            return st, self.list_messages()
        opened = self._open(name, readonly, expect, bodies)[0]
        if isinstance(opened, FolderError):
            raise opened
        return opened

    def check_then_open(self, done: Folder, uids: Sequence[int], name: Folder, readonly: bool = True,
                        expect: int | None = None, read_back: Sequence[int] = ()) -> tuple[Checked, Opened]:
        """list_with_status(done, uids) and select_and_list(name, expect) in one round trip: the size
        check of one folder rides with the opening of the next. Without `expect` the folder is
        listed after its SELECT (no round trip if it is empty: a folder this run created)."""
        if len(uids) > META_FETCH_CHUNK:  # a big answer is read in bounded pieces (list_with_status)
            return check_then_open_in_turn(self, done, uids, name, readonly, expect, read_back)
        if read_back:
            self.wire.read_literals_in_place()
        opened, answers = self._open(name, readonly, expect, False, self._check_commands(done, uids, read_back), done)
        try:
            checked = self._checked(done, uids, answers, read_back)
        except FolderError as e:
            checked = Checked([], None, str(e))
        return checked, opened

    def _open(self, name: Folder, readonly: bool, expect: int | None, bodies: bool,
              before: Sequence[tuple[str, tuple]] = (), done: Folder | None = None) -> tuple[Opened, list]:
        """SELECT (EXAMINE) `name` pipelined after the commands `before` (run in the folder selected
        now) and before UID FETCH 1:* of its metadata when expect says it is small enough for one
        answer (and of its messages with `bodies`). Returns (status, listing), or the FolderError
        that kept the folder from opening, and the answers to `before` as _pipeline's.
        done: the folder `before` is about, for messages."""
        server = self.server_name(name)
        self._read_ahead.drop()
        listing = expect is not None and 0 < expect <= META_FETCH_CHUNK
        fetches = ([self.meta_items] + ([MESSAGE_ITEMS] if bodies else [])) if listing else []
        if bodies and listing:
            self.wire.read_literals_in_place()
        try:
            o = self.wire.open_folder(before, "EXAMINE" if readonly else "SELECT", self._mailbox(name), fetches)
        except _LOST as e:
            self._selected = None
            doing = f"checking '{self.server_name(done)}' and selecting" if done else "selecting"
            raise TransientError(f"connection lost {doing} '{server}': {server_text(e)}") from None
        if o.info is None:
            self._selected = None
            return FolderError(f"folder '{server}' cannot be opened on {self.endpoint.host}: {text(o.data)}"), o.before
        if not readonly and o.read_only:
            return FolderError(f"folder '{server}' opens read-only on {self.endpoint.host}: "
                               "nothing can be stored in it"), o.before
        if before and not {b"EXISTS", b"UIDVALIDITY"} <= o.info.keys():
            # Part of the SELECT's answer was taken for the commands before it: never guess a
            # folder's size (an empty listing of a full folder would copy it twice). Ask again.
            return (self.select(name, readonly), self.list_messages()), o.before
        st = self._selected_now(name, o.info)
        if not fetches or o.fetched is None:
            return (st, self.list_messages()), o.before
        return (st, self._listed(name, st, o.fetched, bodies)), o.before

    def _listed(self, name: Folder, st: FolderStatus, fetched: list, bodies: bool) -> list[MessageMeta]:
        """The listing from the FETCH data read with the SELECT (lines without RFC822.SIZE, flag
        changes, are left out by parse_meta); with `bodies` the messages go to ReadAhead."""
        if not bodies:
            metas = parse_meta(fetched, None)
            return metas if metas is not None else self.list_messages()
        # Both answers share untagged FETCH data, in whatever order the server sent them: the
        # metadata are the one-line answers with RFC822.SIZE, the messages the ones with a literal.
        metas = parse_meta([x for x in fetched if isinstance(x, bytes) and b"RFC822.SIZE" in x], None)
        if metas is None or len(metas) != st.messages:  # not the plain form: ask the usual way
            return self.list_messages()
        got = messages_from_fetch([x for x in fetched if isinstance(x, tuple)])
        if got is not None and set(got) == {m.uid for m in metas}:
            self._read_ahead.keep(name, got)
        return metas

    def _selected_now(self, name: Folder, info: dict) -> FolderStatus:
        self._selected = name
        self._exists = int(info.get(b"EXISTS", 0))
        self.permanent_flags = tuple(dec(f) for f in info.get(b"PERMANENTFLAGS", ()))
        return selected_status(info)

    # -- listing and checking ---------------------------------------------------------------

    def list_with_status(self, name: Folder, uids: Sequence[int], read_back: Sequence[int] = ()) -> Checked:
        """list_messages(uids) of the selected folder `name`, its STATUS and the bodies of read_back,
        in one round trip. A NOOP goes first, so messages other sessions added since SELECT are in
        view (RFC 3501 6.1.2); a UID still not in view is missing from the answer, and the caller
        selects again."""
        if len(uids) > META_FETCH_CHUNK:  # a big answer is read in bounded pieces; a round trip is little here
            metas = self.list_messages(uids)
            later = self.list_with_status(name, [], read_back)
            return Checked(metas, later.status, bodies=later.bodies)
        if read_back:
            self.wire.read_literals_in_place()
        return self._checked(name, uids, self._pipeline(self._check_commands(name, uids, read_back)), read_back)

    def _check_commands(self, name: Folder, uids: Sequence[int],
                        read_back: Sequence[int] = ()) -> list[tuple[str, tuple]]:
        commands = [("NOOP", ()), ("UID", ("FETCH", uid_set(uids), self.meta_items))] if uids else []
        if read_back:
            commands.append(("UID", ("FETCH", uid_set(read_back), MESSAGE_ITEMS)))
        return commands + [("STATUS", (self._mailbox(name), self._status_items()))]

    def _checked(self, name: Folder, uids: Sequence[int], answers: list, read_back: Sequence[int] = ()) -> Checked:
        """list_with_status's result from the answers to _check_commands."""
        typ, _data, status_lines = answers[-1]
        status = status_of(statuses_by_name(status_lines), self.server_name(name), alone=True) if typ == "OK" else None
        fetches = answers[:-1][-(bool(uids) + bool(read_back)):] if (uids or read_back) else []
        for ftyp, fdata, _untagged in fetches:
            if ftyp != "OK":
                raise self._refused("UID FETCH", text(fdata))
        metas, bodies = checked_fetches([x for _t, _d, untagged in fetches for x in (untagged or [])], uids, read_back)
        return Checked(metas, status, bodies=bodies)

    def list_messages(self, uids: Sequence[int] | None = None) -> list[MessageMeta]:
        if uids is None:
            if self._exists == 0:
                return []  # SELECT said empty: no round trip (a message arriving now is for the next run)
            if self._exists <= META_FETCH_CHUNK:
                # One FETCH of 1:* instead of UID SEARCH ALL + FETCH: a round trip less per folder.
                fast = self._call("UID FETCH", self._fetch_meta_raw, None)
                if fast is not None:
                    return fast
            uids = sorted(self._call("UID SEARCH", self.client.search, "ALL"))
        out: list[MessageMeta] = []
        for i in range(0, len(uids), META_FETCH_CHUNK):
            chunk = list(uids[i : i + META_FETCH_CHUNK])
            fast = self._call("UID FETCH", self._fetch_meta_raw, chunk)
            if fast is not None:
                out.extend(fast)
                continue
            resp = self._call("UID FETCH", self.client.fetch, chunk, self.meta_items.strip("()").split()[1:])
            out.extend(meta_of(uid, resp[uid]) for uid in chunk if uid in resp)  # else expunged meanwhile
        return out

    def _fetch_meta_raw(self, uids: list[int] | None) -> list[MessageMeta] | None:
        """The metadata FETCH, parsed by one regular expression per line instead of imapclient's
        general parser (which took half of migrator's CPU on big folders). Returns None, and the
        caller uses imapclient, if any answer is not in the plain one-line form."""
        return parse_meta(self.wire.uid_fetch("1:*" if uids is None else uid_set(uids), self.meta_items), uids)

    # -- messages ---------------------------------------------------------------------------

    def fetch(self, uids: Sequence[int]) -> Iterator[Message]:
        """Each message with its complete metadata, asked in the same UID FETCH as its bytes
        (MESSAGE_ITEMS), or taken from ReadAhead when the folder's opening read them already."""
        if not uids:
            return iter(())
        fetched = self._read_ahead.take(self._selected, uids)
        if fetched is None:
            self.wire.read_literals_in_place()
            fetched = self._call("UID FETCH BODY.PEEK[]", self._fetch_messages, list(uids))
        bodies = {uid: body for uid, (_meta, body) in fetched.items()}
        with_nul, notes = self._restore_nul(bodies)
        return self._messages(uids, fetched, bodies, with_nul, notes)

    def _fetch_messages(self, uids: list[int]) -> Fetched:
        """The usual answer read by messages_from_fetch, anything else by imapclient's general
        parser (which cost a tenth of migrator's CPU when used for every message)."""
        data = self.wire.uid_fetch(uid_set(uids), MESSAGE_ITEMS)
        fast = messages_from_fetch(data)
        return fast if fast is not None else messages_from_any_fetch(data)

    @staticmethod
    def _messages(uids, fetched: Fetched, bodies: dict[int, bytes], with_nul: set[int],
                  notes: dict[int, str]) -> Iterator[Message]:
        for uid in uids:
            body = bodies.pop(uid, None)
            if body is not None:
                yield Message(fetched.pop(uid)[0], body, nul_free=uid not in with_nul, note=notes.get(uid))

    def _restore_nul(self, bodies: dict[int, bytes]) -> tuple[set[int], dict[int, str]]:
        """Put back the NUL octets a server served as 0x80 in BODY[] (imap_parse.restore_nul): the
        bodies that may hold one are asked again as BINARY[] (RFC 3516), when the server has it.
        Returns the UIDs whose body now holds NUL, and the notes for the report."""
        if "BINARY" not in self.raw_capabilities:  # nothing to ask: BODY[] is all there is
            return set(), {}
        suspects = nul_suspects(bodies)
        if not suspects:
            return set(), {}
        try:
            binary = self._call("UID FETCH BINARY.PEEK[]", self._fetch_binary, suspects)
        except FolderError:  # refused: nothing to compare with, BODY[] is all there is
            return set(), {}
        return restore_nul(bodies, binary)

    def _fetch_binary(self, uids: list[int]) -> dict[int, bytes]:
        return binaries_from_fetch(self.wire.uid_fetch(uid_set(uids), BINARY_ITEMS))

    def set_flags(self, uid: int, add: Iterable[str], remove: Iterable[str]) -> None:
        add, remove = list(add), list(remove)
        if add:
            self._call("UID STORE +FLAGS", self.client.add_flags, [uid], add, silent=True)
        if remove:
            self._call("UID STORE -FLAGS", self.client.remove_flags, [uid], remove, silent=True)

    def expunge_uids(self, uids: Sequence[int]) -> None:
        """Mark \\Deleted and expunge exactly these UIDs (UID EXPUNGE when available). Without
        UIDPLUS, EXPUNGE removes every \\Deleted message: refused (FolderError, nothing changed)
        when the folder has others."""
        if not uids:
            return
        if not self.capabilities.uidplus:
            others = set(self._call("UID SEARCH DELETED", self.client.search, ["DELETED"])) - set(uids)
            if others:
                raise FolderError(f"cannot expunge {len(uids)} message(s) alone on {self.endpoint.host} (no UIDPLUS): "
                                  f"{len(others)} other message(s) of the folder are flagged \\Deleted")
        self._call("UID STORE +FLAGS \\Deleted", self.client.add_flags, list(uids), ["\\Deleted"], silent=True)
        if self.capabilities.uidplus:
            self._call("UID EXPUNGE", self.client.uid_expunge, list(uids))
        else:
            self._call("EXPUNGE", self.client.expunge)

    def append(self, name: Folder, items: Sequence[AppendItem]) -> list[int | None]:
        """APPEND items to a folder; MULTIAPPEND (one atomic command) when offered.

        Raises MessageRejected when the server refuses (for a MULTIAPPEND batch:
        the whole batch, nothing stored, as RFC 3502 requires; without MULTIAPPEND,
        one APPEND a message: its `stored` lists what those before it got), TransientError
        when the connection fails or the server says try later.
        """
        if not items:
            return []
        if len(items) > 1 and not self.capabilities.multiappend:
            out: list[int | None] = []
            for item in items:
                try:
                    out.extend(self.append(name, [item]))
                except (MessageRejected, Throttled) as e:
                    e.stored = out  # the messages before this one are on the server
                    raise
            return out
        said = self._send_append(self.server_name(name), items)
        uids = parse_appenduid(said)
        if len(uids) != len(items):
            return [None] * len(items)
        return list(uids)

    def _send_append(self, server_name: str, items: Sequence[AppendItem]) -> str:
        caps = self.raw_capabilities
        try:
            typ, data = self.wire.append(self.wire.mailbox(server_name), items, "LITERAL+" in caps, "BINARY" in caps)
        except imaplib.IMAP4.abort as e:
            raise TransientError(f"connection lost during APPEND to '{server_name}': {server_text(e)}") from None
        except OSError as e:
            raise TransientError(f"connection lost during APPEND to '{server_name}': {e}") from None
        except (imaplib.IMAP4.error, Refused) as e:
            raise self._append_error(server_name, server_text(e)) from None
        said = dec(data[0]) if data and data[0] is not None else ""
        if typ != "OK":
            raise self._append_error(server_name, said)
        return said

    def _append_error(self, server_name: str, said: str) -> Exception:
        kind = classify(said)
        if kind == TRANSIENT:  # a throttle answer among them (Throttled)
            return self._refused(f"APPEND to '{server_name}'", said)
        if kind == FOLDER and not self._folder_exists(server_name):
            return FolderError(f"destination folder '{server_name}' does not exist: {said}")
        return MessageRejected(f"{said}")

    def _folder_exists(self, server_name: str) -> bool:
        """Whether a folder exists although an APPEND was answered [TRYCREATE] (imap4d, for a message it
        cannot parse) or a CREATE refused. INBOX always does, the one selected here too; another is asked."""
        if server_name.upper() == "INBOX":
            return True
        if self._selected is not None and self.server_name(self._selected) == server_name:
            return True
        try:
            self._call("STATUS", self.client.folder_status, server_name, ["MESSAGES"])
        except FolderError:
            return False
        return True

    limits = destination_limits  # Store.limits: CAPABILITY, STATUS, EXAMINE, GETQUOTAROOT (imap_limits.py)
    session_errors = property(lambda self: self.wire.refusals)  # Store.session_errors: NO/BAD, counted by Wire
    watch = watch_folders  # Watchable.watch(names): NOTIFY or IDLE on this connection (imap_watch.py)

    def close(self) -> None:
        """LOGOUT, and close without waiting for the server's BYE (Wire.logout_now)."""
        self._read_ahead.drop()
        self.wire.logout_now()
