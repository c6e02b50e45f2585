"""Options shared by several commands, and building Connectors from them."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from migrator.accounts import parse_endpoint
from migrator.secrets import SecretSource
from migrator.stores import Connector

SrcPwFile = Annotated[Optional[str], typer.Option("--src-password-file", help="File holding the source password (mode 0600).")]
DstPwFile = Annotated[Optional[str], typer.Option("--dst-password-file", help="File holding the destination password (mode 0600).")]
CaFile = Annotated[Optional[str], typer.Option("--ca-file", help="PEM file of CA certificates to trust (private CA).")]
Insecure = Annotated[bool, typer.Option("--insecure", help="Do not verify TLS certificates (test servers only).")]
AllowPlain = Annotated[bool, typer.Option("--allow-plaintext", help="Allow logging in without TLS to a non-loopback host.")]
SrcAuthUser = Annotated[Optional[str], typer.Option("--src-auth-user", help="Admin/master user to authenticate as on the source.")]
DstAuthUser = Annotated[Optional[str], typer.Option("--dst-auth-user", help="Admin/master user to authenticate as on the destination.")]
SrcToken = Annotated[Optional[str], typer.Option("--src-oauth2-token-cmd", help="Command printing an OAuth2 access token for the source.")]
DstToken = Annotated[Optional[str], typer.Option("--dst-oauth2-token-cmd", help="Command printing an OAuth2 access token for the destination.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress, summary only on failure (for cron).")]
Debug = Annotated[bool, typer.Option("--debug", help="Log the IMAP protocol to stderr (passwords masked).")]
DryRun = Annotated[bool, typer.Option("--dry-run", "-n", help="Show what would be done; change nothing anywhere.")]
Workers = Annotated[int, typer.Option("--workers", "-w", min=1, max=64, help="Parallel workers, each with its own source and destination connection.")]
State = Annotated[Optional[str], typer.Option("--state", help="Checkpoint file (SQLite). Default: beside the plan, or ~/.local/state/migrator/.")]
ResetState = Annotated[bool, typer.Option("--reset-state", help="Start the checkpoint over (the destination is still reconciled, nothing is duplicated).")]
Report = Annotated[Optional[str], typer.Option("--report", help="Write the run report as JSON to this file.")]
IncludeDeleted = Annotated[bool, typer.Option("--include-deleted", help="Also copy messages flagged \\Deleted.")]
NoSyncFlags = Annotated[bool, typer.Option("--no-sync-flags", help="On reruns, do not update flags of messages already copied.")]
DeleteExtra = Annotated[bool, typer.Option("--delete-extra", help="Mirror: delete destination messages that are not on the source.")]
RetryFailed = Annotated[bool, typer.Option("--retry-failed", help="Try again messages that failed permanently in an earlier run.")]
BatchMB = Annotated[float, typer.Option("--batch-mb", min=0.1, help="Bytes per FETCH/APPEND batch, in MB (bounds memory).")]


def connectors(src_url: str, dst_url: str, *, src_password_file, dst_password_file, ca_file, insecure,
               allow_plaintext, src_auth_user, dst_auth_user, src_token_cmd, dst_token_cmd) -> tuple[Connector, Connector]:
    src_ep, dst_ep = parse_endpoint(src_url), parse_endpoint(dst_url)
    common = dict(ca_file=ca_file, insecure=insecure, allow_plaintext=allow_plaintext)
    src = Connector(src_ep, SecretSource("src", src_password_file, src_token_cmd), auth_user=src_auth_user, **common)
    dst = Connector(dst_ep, SecretSource("dst", dst_password_file, dst_token_cmd), auth_user=dst_auth_user, **common)
    if insecure:
        typer.echo("warning: --insecure: TLS certificates are NOT verified", err=True)
    return src, dst


def setup_logging(debug: bool) -> None:
    from migrator.logsafe import configure_logging

    configure_logging(debug)


