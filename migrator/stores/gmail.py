"""The IMAP store with COPY, and Gmail's labels when the server offers X-GM-EXT-1.

Gmail shows each label as a folder, and one message under three labels in three folders with the
same X-GM-MSGID (All Mail, \\All, shows every message once). A listing here gives that identity
(MessageMeta.identity) and the folders of the message's other labels (MessageMeta.also_in), so the
engine downloads each message once and copies it within the destination for its other folders
(docs/engine.md, "Messages in several folders"). Flags follow Gmail's meaning: the \\Starred label is
\\Flagged; \\Important is dropped, or kept as the keyword $Important with labels_as_keywords, which
keeps every label as a keyword ($Inbox, $Sent, Work, ...).

For any other server this is ImapStore plus copy().
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence

from migrator.naming import Folder
from migrator.stores.base import Checked, FolderInfo, FolderStatus, MessageMeta, Opened, normalize_flags
from migrator.stores.connection import ConnectOptions, Credentials
from migrator.stores.imap import ImapStore
from migrator.stores.imap_parse import META_ITEMS, parse_appenduid, text, uid_set

GMAIL_ITEMS = META_ITEMS[:-1] + " X-GM-MSGID X-GM-LABELS)"
# Gmail's system labels and the special-use of the folder that shows each (RFC 6154)
SYSTEM_LABELS = {"\\Sent": "\\Sent", "\\Draft": "\\Drafts", "\\Important": "\\Important",
                 "\\Starred": "\\Flagged", "\\Trash": "\\Trash", "\\Spam": "\\Junk"}
NOT_LABELS = {"\\All"}  # a stand-in server may list the folder's own \All; Gmail does not
_COPYUID = re.compile(r"\[COPYUID (\d+) ([\d:,]+) ([\d:,]+)\]", re.I)
_NOT_ATOM = re.compile(r"[\s(){%*\"\\\]]")


def keyword_of(label: str) -> str:
    """A label as an IMAP keyword (an atom): system labels as $Name, others with _ for what an atom
    cannot hold ("My label" -> My_label)."""
    if label.startswith("\\"):
        return "$" + label[1:]
    return _NOT_ATOM.sub("_", label) or "_"


class GmailCapableStore(ImapStore):
    def __init__(self, ep, creds: Credentials, opts: ConnectOptions | None = None):
        super().__init__(ep, creds, opts)
        self._labels_as_keywords = bool(opts and opts.labels_as_keywords)
        self._folders: dict[str, Folder] | None = None  # label -> folder, read from LIST when first needed
        # COPY gives the copies' UIDs only with UIDPLUS (COPYUID); without them a copy could only be
        # found again by its bytes, which a copy within the destination never had in hand.
        self.capabilities.copy = self.capabilities.uidplus
        if "X-GM-EXT-1" in self.raw_capabilities:
            self.capabilities.identities = True
            self.capabilities.labels = True  # a destination: copy() adds a label (STORE X-GM-LABELS)
            self.meta_items = GMAIL_ITEMS

    # -- labels -------------------------------------------------------------------------------

    def list_folders(self) -> list[FolderInfo]:
        listed = super().list_folders()
        self._folders = self._label_folders(listed)
        return listed

    @staticmethod
    def _label_folders(listed: list[FolderInfo]) -> dict[str, Folder]:
        by_use = {f.special_use.lower(): f.name for f in listed if f.special_use}
        out = {label: by_use[use.lower()] for label, use in SYSTEM_LABELS.items() if use.lower() in by_use}
        out["\\Inbox"] = ("INBOX",)
        for f in listed:
            if f.selectable and not f.special_use:
                out.setdefault(f.server_name, f.name)
        return out

    def _labelled(self, metas: list[MessageMeta]) -> list[MessageMeta]:
        """The listing with Gmail's meaning: labels -> flags and the folders that also show it."""
        if not self.capabilities.identities or not metas:
            return metas
        if self._folders is None:
            self.list_folders()
        assert self._folders is not None
        return [self._one(m, self._folders) for m in metas]

    def _one(self, m: MessageMeta, folders: dict[str, Folder]) -> MessageMeta:
        labels = [c[0] for c in m.also_in if c and c[0] not in NOT_LABELS]
        flags = set(m.flags)
        if "\\Starred" in labels:
            flags.add("\\Flagged")
        if self._labels_as_keywords:
            flags.update(keyword_of(lab) for lab in labels if lab != "\\Starred")
        also = tuple(dict.fromkeys(f for lab in labels if (f := folders.get(lab)) is not None
                                   and f != self._selected))
        return dataclasses.replace(m, flags=normalize_flags(flags), also_in=also)

    def list_messages(self, uids: Sequence[int] | None = None) -> list[MessageMeta]:
        return self._labelled(super().list_messages(uids))

    def select_and_list(self, name: Folder, readonly: bool = True, expect: int | None = None,
                        bodies: bool = False) -> tuple[FolderStatus, list[MessageMeta]]:
        st, metas = super().select_and_list(name, readonly, expect, bodies)
        return st, self._labelled(metas)

    def list_with_status(self, name: Folder, uids: Sequence[int], read_back: Sequence[int] = ()) -> Checked:
        checked = super().list_with_status(name, uids, read_back)
        return dataclasses.replace(checked, metas=self._labelled(checked.metas))

    def check_then_open(self, done: Folder, uids: Sequence[int], name: Folder, readonly: bool = True,
                        expect: int | None = None, read_back: Sequence[int] = ()) -> tuple[Checked, Opened]:
        checked, opened = super().check_then_open(done, uids, name, readonly, expect, read_back)
        if isinstance(opened, tuple):
            opened = (opened[0], self._labelled(opened[1]))
        return dataclasses.replace(checked, metas=self._labelled(checked.metas)), opened

    # -- COPY ---------------------------------------------------------------------------------

    def copy(self, source: Folder, uidvalidity: int, uids: Sequence[int], to: Folder) -> dict[int, int | None] | None:
        """UID COPY from `source` (EXAMINEd) to `to`; the new UIDs from COPYUID (UIDPLUS). On Gmail
        (labels) a label STORE instead: the message is not uploaded or copied, it gains a folder."""
        if self.capabilities.labels:
            return self._label(source, uidvalidity, uids, to)
        if self.select(source, readonly=True).uidvalidity != uidvalidity:
            return None
        ((typ, data, _untagged),) = self._pipeline([("UID", ("COPY", uid_set(uids), self._mailbox(to)))])
        said = text(data)  # the tagged answer: COPYUID is its response code
        if typ != "OK":
            raise self._refused("UID COPY", said)
        m = _COPYUID.search(said)
        if m is None:
            return {u: None for u in uids}
        pairs = zip(parse_appenduid(f"[APPENDUID 0 {m.group(2)}]"), parse_appenduid(f"[APPENDUID 0 {m.group(3)}]"),
                    strict=False)
        return {s: d for s, d in pairs}

    # -- labels on a Gmail destination ----------------------------------------------------------

    def _label(self, source: Folder, uidvalidity: int, uids: Sequence[int], to: Folder) -> dict[int, int | None] | None:
        """UID STORE +X-GM-LABELS (to) on the messages `uids` of `source`; their UIDs in `to` found
        by X-GM-MSGID (a label STORE answers with none)."""
        if self.select(source, readonly=False).uidvalidity != uidvalidity:
            return None
        label = self._label_of(to)
        self._call("STORE X-GM-LABELS", self.client.add_gmail_labels, list(uids), [label])
        ids = self._call("FETCH X-GM-MSGID", self.client.fetch, list(uids), ["X-GM-MSGID"])
        self.select(to, readonly=True)
        out: dict[int, int | None] = {}
        for uid, data in ids.items():
            found = self._call("SEARCH X-GM-MSGID", self.client.search, ["X-GM-MSGID", data[b"X-GM-MSGID"]])
            out[uid] = max(found) if found else None
        return out

    def _label_of(self, folder: Folder) -> str:
        """The label that shows a message in `folder`: a system label for INBOX and the special-use
        folders (\\Inbox, \\Sent, \\Starred, ...), else the folder's name."""
        if self._folders is None:
            self.list_folders()
        assert self._folders is not None
        system = [label for label, f in self._folders.items() if f == folder and label.startswith("\\")]
        return system[0] if system else self.server_name(folder)
