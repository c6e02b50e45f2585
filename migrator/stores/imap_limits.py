"""What an IMAP destination says it will refuse or change (Store.limits, for the preflight), asked
without writing anything: APPENDLIMIT (RFC 7889) from CAPABILITY, and per folder from STATUS where
the server advertises APPENDLIMIT without a number; PERMANENTFLAGS from an EXAMINE of INBOX; the
STORAGE quota of INBOX's quota root (GETQUOTAROOT, RFC 9208 / 2087) where QUOTA is offered.

EXAMINE is read-only, and RFC 3501 lets a server answer it with the PERMANENTFLAGS of a read-only
folder: none (Dovecot does). An empty list is therefore "unknown", never "keywords dropped".
Through ImapStore's own calls (a lost connection is a TransientError, a refusal means "not told").
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

from migrator.errors import FolderError
from migrator.naming import INBOX, Folder
from migrator.stores.base import Limits

if TYPE_CHECKING:
    from migrator.stores.imap import ImapStore


def destination_limits(store: ImapStore, folders: Sequence[Folder]) -> Limits:
    caps = store.raw_capabilities
    per_folder = {}
    if "APPENDLIMIT" in caps:  # a limit per mailbox, told by STATUS (RFC 7889 3.2)
        for name in folders:
            try:
                answer = store._call("STATUS", store.client.folder_status, store.server_name(name), ["APPENDLIMIT"])
            except FolderError:
                continue  # not there yet, or the server will not say
            value = answer.get(b"APPENDLIMIT")
            if isinstance(value, int):
                per_folder[name] = value
    permanent = None
    try:
        store.select(INBOX, readonly=True)
        permanent = store.permanent_flags or None
    except FolderError:
        pass
    return Limits(store.capabilities.max_append_size, per_folder, permanent, _quota(store) if "QUOTA" in caps else None)


_STORAGE = re.compile(rb"\(.*?\bSTORAGE\s+(\d+)\s+(\d+)", re.I)


def _quota(store: ImapStore) -> tuple[int, int] | None:
    """(used, allowed) bytes of STORAGE in INBOX's quota root ('"User quota" (STORAGE 10 1024)');
    None when there is no such root or resource."""
    try:
        lines = store._call("GETQUOTAROOT", store.wire.quota_lines, store.wire.mailbox("INBOX"))
    except FolderError:
        return None
    for line in lines:
        m = _STORAGE.search(line)
        if m:
            return int(m.group(1)) * 1024, int(m.group(2)) * 1024  # RFC 9208: units of 1024 octets
    return None
