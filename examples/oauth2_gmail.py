#!/usr/bin/env python3
"""Print a Gmail access token for migrator's --src-oauth2-token-cmd / --dst-oauth2-token-cmd.

    pip install google-auth-oauthlib

One-time setup: in the Google Cloud console create an OAuth client of type
"Desktop app", enable the Gmail API scope https://mail.google.com/ on the
consent screen and download the client file (client_secret.json).

    migrator migrate imaps://alice%40gmail.com@imap.gmail.com ... \
        --src-oauth2-token-cmd 'python examples/oauth2_gmail.py --client client_secret.json --cache ~/.config/migrator/gmail-alice.json'

The first run opens a browser to consent; the refresh token is cached in
--cache (mode 0600) and later runs print a fresh access token without asking.
migrator runs this command again whenever Gmail rejects the token (after about
an hour), so a long run survives expiry. Only the token is printed on stdout.
"""

import argparse
import os
import sys

from google.auth.transport.requests import Request
from google.oauth2.credentials import Credentials
from google_auth_oauthlib.flow import InstalledAppFlow

SCOPES = ["https://mail.google.com/"]  # the only scope Gmail accepts for IMAP


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--client", required=True, help="client_secret.json of a Desktop OAuth client")
    ap.add_argument("--cache", required=True, help="where to keep the refresh token (created 0600)")
    args = ap.parse_args()
    cache = os.path.expanduser(args.cache)

    creds = Credentials.from_authorized_user_file(cache, SCOPES) if os.path.exists(cache) else None
    if creds and creds.expired and creds.refresh_token:
        creds.refresh(Request())
    elif not creds or not creds.valid:
        flow = InstalledAppFlow.from_client_secrets_file(args.client, SCOPES)
        creds = flow.run_local_server(port=0, open_browser=True)  # prompts go to stderr/browser
    os.makedirs(os.path.dirname(cache) or ".", mode=0o700, exist_ok=True)
    fd = os.open(cache, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(creds.to_json())
    print(creds.token)
    return 0


if __name__ == "__main__":
    sys.exit(main())
