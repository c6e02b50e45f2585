"""Logging that never writes a secret: protocol lines that carry credentials are masked.

imapclient logs every command at DEBUG (LOGIN user password, AUTHENTICATE
continuations carrying base64 credentials). The filter below rewrites those
records before any handler sees them.
"""

from __future__ import annotations

import logging
import re
import sys

# Lookbehind: the LOGIN command, not "Pre-login capabilities" in a server greeting.
_LOGIN = re.compile(r"(?<![\w-])(LOGIN\s+\S+\s+)(\"(?:[^\"\\]|\\.)*\"|\S+)", re.I)
_AUTH = re.compile(r"(?<![\w-])(AUTHENTICATE\s+\S+)(\s+\S+)?", re.I)
_B64_LINE = re.compile(r"^(?:>\s*)?b?['\"]?[A-Za-z0-9+/=]{16,}['\"]?$")


class SecretMaskFilter(logging.Filter):
    """Masks LOGIN passwords, AUTHENTICATE initial responses and bare base64 continuation lines."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            text = record.getMessage()
        except Exception:
            return True
        masked = _LOGIN.sub(r"\1***", text)
        masked = _AUTH.sub(lambda m: m.group(1) + (" ***" if m.group(2) else ""), masked)
        if _B64_LINE.match(masked.strip()):
            masked = "*** (authentication data)"
        if masked != text:
            record.msg, record.args = masked, ()
        return True


class _LowerLevelFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        record.levelname = record.levelname.lower()
        return super().format(record)


def configure_logging(debug: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    # Without --debug only warnings show: make them read like our other messages.
    fmt = "%(asctime)s %(threadName)s %(name)s: %(message)s" if debug else "migrator: %(levelname)s: %(message)s"
    handler.setFormatter(_LowerLevelFormatter(fmt))
    handler.addFilter(SecretMaskFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if debug else logging.WARNING)
    for name in ("imapclient", "imapclient.imaplib"):
        logging.getLogger(name).setLevel(logging.DEBUG if debug else logging.WARNING)
