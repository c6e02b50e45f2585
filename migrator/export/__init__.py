"""`migrator archive export`: an archive written out as mbox (mboxrd), Maildir or .eml files.

formats.py holds the three writers and exactly what each one changes (docs/archive-format.md,
"Export"); run.py walks the archive through the Store contract, as a restore reads it.
"""
