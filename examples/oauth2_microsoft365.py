#!/usr/bin/env python3
"""Print a Microsoft 365 (Exchange Online) access token for migrator's --src-oauth2-token-cmd.

    pip install msal

One-time setup: register an application in Microsoft Entra ID (Azure AD),
allow "public client flows", and add the delegated permission
IMAP.AccessAsUser.All (Office 365 Exchange Online). Then:

    migrator migrate imaps://alice%40contoso.com@outlook.office365.com ... \
        --src-oauth2-token-cmd 'python examples/oauth2_microsoft365.py --client-id APP_ID --tenant contoso.com --cache ~/.config/migrator/m365-alice.json'

The first run uses the device-code flow (a URL and a code are printed on
stderr, never stdout); the token cache (mode 0600) makes later runs silent.
migrator runs this command again whenever the server rejects the token, so
a long run survives the one-hour expiry. Only the token is printed on stdout.

For an administrator migrating many mailboxes, an app-only (client
credentials) token with the IMAP.AccessAsApp permission also works:
msal.ConfidentialClientApplication(...).acquire_token_for_client(
["https://outlook.office365.com/.default"]).
"""

import argparse
import os
import sys

import msal

SCOPES = ["https://outlook.office365.com/IMAP.AccessAsUser.All"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--client-id", required=True, help="application (client) id")
    ap.add_argument("--tenant", default="organizations", help="tenant id or domain")
    ap.add_argument("--cache", required=True, help="token cache file (created 0600)")
    args = ap.parse_args()
    cache_path = os.path.expanduser(args.cache)

    cache = msal.SerializableTokenCache()
    if os.path.exists(cache_path):
        with open(cache_path) as fh:
            cache.deserialize(fh.read())
    app = msal.PublicClientApplication(
        args.client_id, authority=f"https://login.microsoftonline.com/{args.tenant}", token_cache=cache
    )
    result = None
    accounts = app.get_accounts()
    if accounts:
        result = app.acquire_token_silent(SCOPES, account=accounts[0])
    if not result:
        flow = app.initiate_device_flow(scopes=SCOPES)
        if "user_code" not in flow:
            print(f"cannot start device flow: {flow.get('error_description', flow)}", file=sys.stderr)
            return 1
        print(flow["message"], file=sys.stderr)
        result = app.acquire_token_by_device_flow(flow)
    if "access_token" not in result:
        print(f"no token: {result.get('error_description', result.get('error'))}", file=sys.stderr)
        return 1
    if cache.has_state_changed:
        os.makedirs(os.path.dirname(cache_path) or ".", mode=0o700, exist_ok=True)
        fd = os.open(cache_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(cache.serialize())
    print(result["access_token"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
