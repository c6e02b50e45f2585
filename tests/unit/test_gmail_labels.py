"""Gmail's X-GM-EXT-1 items read from a listing, and labels mapped to folders and keywords (stores/gmail.py)."""

from migrator.stores.base import FolderInfo
from migrator.stores.gmail import GmailCapableStore, keyword_of
from migrator.stores.imap_parse import parse_meta


def test_listing_line_gives_msgid_and_labels_quoted_or_not():
    line = (b'1 (UID 7 RFC822.SIZE 36 FLAGS (\\Seen) INTERNALDATE "14-Sep-2013 21:22:28 -0300" '
            b'X-GM-MSGID 1278455344230334865 X-GM-LABELS (\\Inbox Work "My \\"x\\" label"))')
    (m,) = parse_meta([line], None)
    assert m.uid == 7 and m.identity == "1278455344230334865"
    assert m.also_in == (("\\Inbox",), ("Work",), ('My "x" label',))
    (plain,) = parse_meta([b'1 (UID 7 RFC822.SIZE 36 FLAGS () INTERNALDATE "14-Sep-2013 21:22:28 -0300")'], None)
    assert plain.identity is None and plain.also_in == ()


def test_labels_name_folders_by_special_use_and_name():
    listed = [FolderInfo(("INBOX",), "INBOX"), FolderInfo(("Work",), "Work"),
              FolderInfo(("[Gmail]", "Sent Mail"), "[Gmail]/Sent Mail", special_use="\\Sent"),
              FolderInfo(("[Gmail]", "Starred"), "[Gmail]/Starred", special_use="\\Flagged")]
    folders = GmailCapableStore._label_folders(listed)
    assert folders["\\Inbox"] == ("INBOX",) and folders["Work"] == ("Work",)
    assert folders["\\Sent"] == ("[Gmail]", "Sent Mail") and folders["\\Starred"] == ("[Gmail]", "Starred")


def test_keywords_are_atoms():
    assert keyword_of("\\Important") == "$Important" and keyword_of("My label (old)") == "My_label__old_"
