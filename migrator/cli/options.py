"""Options shared by several commands, and building Connectors from them."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import re
from dataclasses import dataclass
from typing import Annotated

import typer

from migrator.accounts import Endpoint, parse_endpoint
from migrator.errors import UsageError
from migrator.plan import Plan
from migrator.secrets import SecretSource
from migrator.stores import Connector

SrcPwFile = Annotated[str | None, typer.Option(
    "--src-password-file", help="File holding the source password (mode 0600).")]
DstPwFile = Annotated[str | None, typer.Option(
    "--dst-password-file", help="File holding the destination password (mode 0600).")]
CaFile = Annotated[str | None, typer.Option(
    "--ca-file", help="PEM file of extra CA certificates to trust (private CA), added to the system store.")]
Insecure = Annotated[bool, typer.Option("--insecure", help="Do not verify TLS certificates (test servers only).")]
AllowPlain = Annotated[bool, typer.Option(
    "--allow-plaintext", help="Allow logging in without TLS to a non-loopback host whose server offers no STARTTLS.")]
Compress = Annotated[bool, typer.Option(
    "--compress",
    help="COMPRESS=DEFLATE on IMAP connections whose server offers it: faster on slow links (below ~50 Mbit/s), "
         "slower on a LAN.")]
GmailKeywords = Annotated[bool, typer.Option(
    "--gmail-labels-as-keywords",
    help="A Gmail source (X-GM-EXT-1): keep every label as a keyword too ($Important, $Inbox, Work, "
         "'My label' as My_label), besides its folder. Without it \\Important is dropped; \\Starred is always "
         "\\Flagged.")]
SrcAuthUser = Annotated[str | None, typer.Option(
    "--src-auth-user", help="Admin/master user to authenticate as on the source.")]
DstAuthUser = Annotated[str | None, typer.Option(
    "--dst-auth-user", help="Admin/master user to authenticate as on the destination.")]
SrcToken = Annotated[str | None, typer.Option(
    "--src-oauth2-token-cmd",
    help="Command printing an OAuth2 access token for the source (XOAUTH2/OAUTHBEARER); re-run when the token is "
         "rejected.")]
DstToken = Annotated[str | None, typer.Option(
    "--dst-oauth2-token-cmd",
    help="Command printing an OAuth2 access token for the destination; re-run when the token is rejected.")]
SrcOAuth2 = Annotated[str | None, typer.Option(
    "--src-oauth2", metavar="PROVIDER[:CLIENT_ID[:TENANT]]",
    help="Sign in to the source with OAuth2, no helper script: microsoft (a code to enter at a URL) or google (a "
         "URL to open in a browser), with your own app registration (docs/oauth2.md). The refresh token is kept in "
         "the system keyring, never in a file; later runs start from it.")]
DstOAuth2 = Annotated[str | None, typer.Option(
    "--dst-oauth2", metavar="PROVIDER[:CLIENT_ID[:TENANT]]",
    help="Sign in to the destination with OAuth2: microsoft or google (as --src-oauth2).")]
OAuth2ClientId = Annotated[str | None, typer.Option(
    "--oauth2-client-id", help="Client (application) ID of your app registration, for --src-oauth2/--dst-oauth2; "
                               "scopes: https://outlook.office365.com/IMAP.AccessAsUser.All offline_access "
                               "(Microsoft), https://mail.google.com/ (Google).")]
OAuth2Tenant = Annotated[str | None, typer.Option(
    "--oauth2-tenant", help="Microsoft: your directory (tenant ID or domain) for a single-tenant app. "
                            "Default: organizations.")]
OAuth2SecretFile = Annotated[str | None, typer.Option(
    "--oauth2-client-secret-file", help="Google: file holding your Desktop app's client secret (mode 0600).")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress, summary only on failure (for cron).")]
Debug = Annotated[bool, typer.Option("--debug", help="Log the IMAP protocol to stderr (passwords masked).")]
DryRun = Annotated[bool, typer.Option("--dry-run", "-n", help="Show what would be done; change nothing anywhere.")]
Workers = Annotated[int, typer.Option(
    "--workers", "-w", min=1, max=64, help="Parallel workers, each with its own source and destination connection.")]
State = Annotated[str | None, typer.Option(
    "--state", help="Checkpoint file (SQLite). Default: beside the plan, or ~/.local/state/migrator/.")]
ResetState = Annotated[bool, typer.Option(
    "--reset-state", help="Start the checkpoint over (the destination is still reconciled, nothing is duplicated).")]
Report = Annotated[str | None, typer.Option("--report", help="Write the run report as JSON to this file.")]
IncludeDeleted = Annotated[bool, typer.Option("--include-deleted", help="Also copy messages flagged \\Deleted.")]
NoSyncFlags = Annotated[bool, typer.Option(
    "--no-sync-flags", help="On reruns, do not update flags of messages already copied.")]
DeleteExtra = Annotated[bool, typer.Option(
    "--delete-extra", help="Mirror: delete destination messages that are not on the source. Into an archive, "
                           "every run does this without the option: they leave the latest snapshot and stay in "
                           "the earlier ones (nothing is deleted; `archive prune` and `compact` do that).")]
RetryFailed = Annotated[bool, typer.Option(
    "--retry-failed", help="Try again messages that failed permanently in an earlier run.")]
BatchMB = Annotated[float, typer.Option(
    "--batch-mb", min=0.1, help="Bytes per FETCH/APPEND batch, in MB (bounds memory).")]
MaxBps = Annotated[float | None, typer.Option(
    "--max-bytes-per-second", min=1, help="Limit the whole run to this many message bytes per second.")]
MaxMps = Annotated[float | None, typer.Option(
    "--max-messages-per-second", min=0.01, help="Limit the whole run to this many messages per second.")]
MaxBackoff = Annotated[float, typer.Option(
    "--max-backoff", min=0,
    help="When a server says it is throttling ('Suggested Backoff Time', [THROTTLED], [UNAVAILABLE]), every "
         "connection to it waits what it asked, at most this many seconds, then sends again.")]
InFlightGrace = Annotated[float, typer.Option(
    "--in-flight-grace", min=0,
    help="After a crash or a cut connection, wait until this many seconds have passed since the APPENDs then in "
         "flight before listing their folder again (a server may still commit them); a later commit is found by the "
         "next run.")]
MaxBytesDay = Annotated[str | None, typer.Option(
    "--max-bytes-per-day", metavar="SIZE",
    help="At most SIZE (e.g. 2000M; K/M/G = 1024) downloaded from the source account and uploaded to the "
         "destination account per day (in a batch: per mailbox, as providers count per user). When the next "
         "batch of messages would go over it, the run stops (exit 75) and the same command run the next day goes "
         "on. --preset gmail sets Gmail's 2500M down; to Gmail, give 500M (its upload cap).")]
MaxConns = Annotated[int, typer.Option(
    "--max-connections-per-host", min=1,
    help="Open connections per host, all workers of a run together (Gmail allows 15 per account; batch: see its "
         "--help).")]

Follow = Annotated[bool, typer.Option(
    "--follow",
    help="After copying, stay connected and copy what changes on the source (new messages, flags; new folders; "
         "expunges with --delete-extra) until SIGINT/SIGTERM or --follow-for. NOTIFY where the source offers it, "
         "else IDLE, else polling. Cut-over: see the README.")]
FollowFor = Annotated[str | None, typer.Option(
    "--follow-for", metavar="DURATION",
    help="Follow (as --follow) for this long after the first pass, then end as after SIGTERM: e.g. 90s, 30m, 2h, "
         "1h30m.")]
PollInterval = Annotated[float, typer.Option(
    "--poll-interval", min=0.05,
    help="With --follow: seconds between polls of folders that are not watched by NOTIFY or IDLE.")]

# Mapping options (planner rules; see `migrator plan --help` for their order).
MapOpt = Annotated[list[str] | None, typer.Option(
    "--map", help="Rename a folder and its subfolders: 'Old Name=New/Name' (repeatable).")]
IncludeOpt = Annotated[list[str] | None, typer.Option(
    "--include", help="Copy only folders whose '/'-joined name matches this glob (repeatable).")]
ExcludeOpt = Annotated[list[str] | None, typer.Option(
    "--exclude", help="Skip folders whose '/'-joined name matches this glob (repeatable; beats --include).")]
FolderOpt = Annotated[list[str] | None, typer.Option(
    "--folder", help="Copy only this folder; 'NAME/*' for NAME and its subtree (repeatable).")]
PresetOpt = Annotated[list[str] | None, typer.Option(
    "--preset", help="Which folders of a provider's account are copied, as the source: gmail, office365 (repeatable).")]
DstPresetOpt = Annotated[list[str] | None, typer.Option(
    "--dst-preset", help="What the destination provider refuses or changes, for the preflight, the run and verify: "
                         "office365 (its size and line limits; \\Flagged set by STORE after APPEND; $MDNSent it adds "
                         "is no difference; case-insensitive and reserved folder names; a new session before its "
                         "10th error) (repeatable).")]
EncryptTo = Annotated[list[str] | None, typer.Option(
    "--encrypt-to", metavar="age1...",
    help="Create the destination archive encrypted to this age recipient (public key; repeatable). Only public "
         "keys are stored; later backups use them (no option needed); reading needs --identity. Needs pyrage "
         "(pip install 'migrator\\[encrypt]').")]
EncryptToFile = Annotated[list[str] | None, typer.Option(
    "--encrypt-to-file", metavar="FILE", help="As --encrypt-to, one recipient per line (# comments) (repeatable).")]
Identity = Annotated[str | None, typer.Option(
    "--identity", metavar="FILE",
    help="age identity file (as age-keygen writes it) that reads an encrypted archive: restore, export, check, "
         "verify from one (verify into one compares SHA-256s without it). Never copied anywhere; keep it mode 0600.")]
SubscribeOpt = Annotated[str, typer.Option(
    "--subscribe", help="Subscribe destination folders: 'source' (as on the source), 'all' or 'none'.")]


@dataclass(frozen=True)
class ConnOptions:
    """How to reach and log in to both sides: the options every account-touching command takes."""

    src_password_file: str | None = None
    dst_password_file: str | None = None
    ca_file: str | None = None
    insecure: bool = False
    allow_plaintext: bool = False
    compress: bool = False
    gmail_labels_as_keywords: bool = False
    src_auth_user: str | None = None
    dst_auth_user: str | None = None
    src_oauth2_token_cmd: str | None = None
    dst_oauth2_token_cmd: str | None = None
    src_oauth2: str | None = None
    dst_oauth2: str | None = None
    oauth2_client_id: str | None = None
    oauth2_tenant: str | None = None
    oauth2_client_secret_file: str | None = None

    def oauth2(self, value: str | None):
        """A side's built-in sign-in (oauth2.OAuth2Config), from --src-oauth2 or a plan's `oauth2`."""
        if not value:
            return None
        from migrator.oauth2 import parse_oauth2

        return parse_oauth2(value, self.oauth2_client_id, self.oauth2_tenant, self.oauth2_client_secret_file)


_CONN_PARAMS = [  # (parameter name, option type, default), in --help order
    ("src_password_file", SrcPwFile, None), ("dst_password_file", DstPwFile, None), ("ca_file", CaFile, None),
    ("insecure", Insecure, False), ("allow_plaintext", AllowPlain, False), ("compress", Compress, False),
    ("gmail_labels_as_keywords", GmailKeywords, False), ("src_auth_user", SrcAuthUser, None),
    ("dst_auth_user", DstAuthUser, None), ("src_oauth2_token_cmd", SrcToken, None),
    ("dst_oauth2_token_cmd", DstToken, None), ("src_oauth2", SrcOAuth2, None), ("dst_oauth2", DstOAuth2, None),
    ("oauth2_client_id", OAuth2ClientId, None), ("oauth2_tenant", OAuth2Tenant, None),
    ("oauth2_client_secret_file", OAuth2SecretFile, None),
]


def _folded(name: str, cls, params):
    """A decorator giving a command a group of options without repeating them in its signature.

    The command declares a keyword-only parameter NAME of type CLS; typer sees the group's
    options instead (the wrapper's signature), and the wrapper folds them back into one CLS."""

    def decorate(fn):
        sig = inspect.signature(fn, eval_str=True)
        own = [p for p in sig.parameters.values() if p.name != name]
        added = [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=kind)
                 for n, kind, default in params]

        @functools.wraps(fn)
        def command(*args, **kwargs):
            group = cls(**{n: kwargs.pop(n) for n, _kind, _default in params})
            return fn(*args, **{name: group}, **kwargs)

        del command.__wrapped__  # typer must read the signature below, not the function's own
        command.__signature__ = sig.replace(parameters=own + added)
        command.__annotations__ = {p.name: p.annotation for p in own + added}
        return command

    return decorate


with_connection_options = _folded("conn", ConnOptions, _CONN_PARAMS)


@dataclass(frozen=True)
class MappingOptions:
    """Which source folders are copied and where they go: what the planner is told."""

    map_: list[str] | None = None
    include: list[str] | None = None
    exclude: list[str] | None = None
    folder: list[str] | None = None
    preset: list[str] | None = None
    subscribe: str = "source"
    dst_preset: list[str] | None = None

    @property
    def given(self) -> bool:
        """Any folder-choosing option given (--map, --include, --exclude, --folder, --preset, --dst-preset)."""
        return bool(self.map_ or self.include or self.exclude or self.folder or self.preset or self.dst_preset)

    def planning(self):
        from migrator.planner import planning_options

        return planning_options(self.map_ or (), self.include or (), self.exclude or (), self.folder or (),
                                self.preset or (), self.subscribe, self.dst_preset or ())


_FOLDER_CHOICE_PARAMS = [
    ("map_", MapOpt, None), ("include", IncludeOpt, None), ("exclude", ExcludeOpt, None),
    ("folder", FolderOpt, None), ("preset", PresetOpt, None), ("dst_preset", DstPresetOpt, None),
]
# migrate and plan: the folder choice and --subscribe; verify and batch: the folder choice only.
with_mapping_options = _folded("mapping", MappingOptions, _FOLDER_CHOICE_PARAMS + [
    ("subscribe", SubscribeOpt, "source")])
with_folder_choice = _folded("mapping", MappingOptions, _FOLDER_CHOICE_PARAMS)


SinceOpt = Annotated[str | None, typer.Option(
    "--since", metavar="DAY",
    help="Copy only messages whose INTERNALDATE is on or after DAY (YYYY-MM-DD), as IMAP SEARCH SINCE: the day "
         "written in the date, in the zone the source server gives it, time of day disregarded.")]
BeforeOpt = Annotated[str | None, typer.Option(
    "--before", metavar="DAY",
    help="Copy only messages whose INTERNALDATE is before DAY (YYYY-MM-DD; DAY itself excluded), as IMAP SEARCH "
         "BEFORE.")]
MinSizeOpt = Annotated[str | None, typer.Option(
    "--min-size", metavar="SIZE", help="Copy only messages of at least SIZE (RFC822.SIZE; e.g. 100K; K/M/G = 1024).")]
MaxSizeOpt = Annotated[str | None, typer.Option(
    "--max-size", metavar="SIZE", help="Copy only messages of at most SIZE (RFC822.SIZE; e.g. 25M; K/M/G = 1024).")]


@dataclass(frozen=True)
class FilterOptions:
    """Which messages are copied; written into the plan, skipped messages reported with the reason."""

    since: str | None = None
    before: str | None = None
    min_size: str | None = None
    max_size: str | None = None

    def parsed(self):
        from migrator.filters import Filters

        return Filters.parse(self.since, self.before, self.min_size, self.max_size)


with_filter_options = _folded("filters", FilterOptions, [
    ("since", SinceOpt, None), ("before", BeforeOpt, None), ("min_size", MinSizeOpt, None),
    ("max_size", MaxSizeOpt, None),
])


@dataclass(frozen=True)
class RunOptions:
    """What a run does and how hard it pushes: the options migrate and run share."""

    dry_run: bool = False
    workers: int = 4
    state: str | None = None
    reset_state: bool = False
    report: str | None = None
    include_deleted: bool = False
    no_sync_flags: bool = False
    delete_extra: bool = False
    retry_failed: bool = False
    batch_mb: float = 8.0
    max_bytes_per_second: float | None = None
    max_messages_per_second: float | None = None
    max_connections_per_host: int | None = 10
    in_flight_grace: float = 5.0
    max_backoff: float = 300.0
    follow: bool = False
    follow_for: str | None = None
    poll_interval: float = 30.0
    max_bytes_per_day: str | None = None

    def governors(self):
        """The run's throttle governors (governor.py): --max-backoff, --max-bytes-per-day."""
        from migrator.filters import parse_size
        from migrator.governor import Governors

        day = parse_size(self.max_bytes_per_day, "--max-bytes-per-day") if self.max_bytes_per_day else None
        return Governors(max_backoff=self.max_backoff,
                         budgets={} if day is None else {"source": day, "destination": day})


_RUN_PARAMS = [(f.name, kind, f.default) for f, kind in zip(
    dataclasses.fields(RunOptions),
    [DryRun, Workers, State, ResetState, Report, IncludeDeleted, NoSyncFlags, DeleteExtra, RetryFailed, BatchMB,
     MaxBps, MaxMps, MaxConns, InFlightGrace, MaxBackoff, Follow, FollowFor, PollInterval, MaxBytesDay],
    strict=True,
)]
with_run_options = _folded("run", RunOptions, _RUN_PARAMS)


def _check_ca_file(conn: ConnOptions) -> None:
    """A bad --ca-file is a usage error at once, even when no connection of the run uses TLS."""
    if conn.ca_file:
        from migrator.stores.imap import ConnectOptions, make_ssl_context

        make_ssl_context(ConnectOptions(ca_file=conn.ca_file))


def _warn_insecure(conn: ConnOptions) -> None:
    if conn.insecure:
        typer.echo("warning: --insecure: TLS certificates are NOT verified", err=True)


def connectors(src_url: str, dst_url: str, conn: ConnOptions) -> tuple[Connector, Connector]:
    """Connectors for the accounts named on the command line."""
    return _connector_pair(parse_endpoint(src_url), parse_endpoint(dst_url), {}, {}, conn)


def plan_connectors(plan: Plan, conn: ConnOptions) -> tuple[Connector, Connector]:
    """Connectors for a plan read from a file: its secret sources, unless the command line names others."""
    return _connector_pair(plan.source, plan.destination, plan.source_secret, plan.destination_secret, conn)


def _connector_pair(src_ep: Endpoint, dst_ep: Endpoint, src_saved: dict[str, str], dst_saved: dict[str, str],
                    conn: ConnOptions) -> tuple[Connector, Connector]:
    """Both sides' Connectors. A side's password file, token command or sign-in given on the command
    line wins over the saved one (a plan file's); else the saved one is used, if any."""
    def connector(role: str, ep: Endpoint, saved: dict[str, str], pw_file: str | None, token_cmd: str | None,
                  oauth2: str | None, auth_user: str | None) -> Connector:
        if sum(map(bool, (pw_file, token_cmd, oauth2))) > 1:
            raise UsageError(f"--{role}-password-file, --{role}-oauth2-token-cmd and --{role}-oauth2 name three "
                             "ways to log in: give one")
        if not (pw_file or token_cmd or oauth2):
            pw_file, token_cmd, oauth2 = (saved.get("password_file"), saved.get("oauth2_token_cmd"),
                                          saved.get("oauth2"))
        return Connector(ep, SecretSource(role, pw_file, token_cmd, conn.oauth2(oauth2)), auth_user=auth_user,
                         ca_file=conn.ca_file, insecure=conn.insecure, allow_plaintext=conn.allow_plaintext,
                         compress=conn.compress, labels_as_keywords=conn.gmail_labels_as_keywords and role == "src")

    src = connector("src", src_ep, src_saved, conn.src_password_file, conn.src_oauth2_token_cmd, conn.src_oauth2,
                    conn.src_auth_user)
    dst = connector("dst", dst_ep, dst_saved, conn.dst_password_file, conn.dst_oauth2_token_cmd, conn.dst_oauth2,
                    conn.dst_auth_user)
    _check_ca_file(conn)
    _warn_insecure(conn)
    return src, dst


def setup_logging(debug: bool) -> None:
    from migrator.logsafe import configure_logging

    configure_logging(debug)


def engine_options(src: Connector, dst: Connector, run: RunOptions):
    """Engine options from the run options, in one place (dry-run included)."""
    from migrator import throttle
    from migrator.engine.copy import EngineOptions

    limiter = throttle.Throttle(run.max_bytes_per_second, run.max_messages_per_second)
    active = limiter if limiter.limited else None
    opts = EngineOptions(
        workers=throttle.connection_limits(src, dst, run.workers, run.max_connections_per_host),
        dry_run=run.dry_run, include_deleted=run.include_deleted, sync_flags=not run.no_sync_flags,
        delete_extra=run.delete_extra, retry_failed=run.retry_failed, batch_bytes=int(run.batch_mb * 1e6),
        throttle=active, in_flight_grace=run.in_flight_grace, governors=run.governors(),
    )
    opts.batch_bytes, opts.batch_count = throttle.batch_limits(active, opts.batch_bytes, opts.batch_count)
    if run.follow or run.follow_for:
        opts.follow = follow_options(src, dst, run, opts)
    return opts


def follow_options(src: Connector, dst: Connector, run: RunOptions, opts):
    """--follow: how long, how often, and how many source connections may watch (what the cap
    leaves beside the workers'; a worker less if none is left)."""
    from migrator import throttle
    from migrator.engine.jobs import FollowOptions
    from migrator.errors import UsageError
    from migrator.stores import advertised

    if run.dry_run:
        raise UsageError("--follow cannot be used with --dry-run")
    if not advertised(src.endpoint).live:
        raise UsageError(f"--follow: {src.endpoint.url()} shows no mail that arrives after a session begins "
                         "(a POP3 maildrop is fixed for the session; an archive is read as one snapshot)",
                         hint="run the same command again (from cron, or a systemd timer) instead: each rerun "
                              "copies only what is new")
    seconds = parse_duration(run.follow_for) if run.follow_for else None
    opts.workers, watchers = throttle.follow_limits(src, dst, opts.workers, run.max_connections_per_host)
    return FollowOptions(seconds=seconds, poll_interval=run.poll_interval, watch_connections=watchers)


_DURATION = re.compile(r"(\d+(?:\.\d+)?)([smhd]?)")
_UNIT = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str) -> float:
    """'90', '90s', '30m', '2h', '1h30m' -> seconds; a usage error otherwise."""
    from migrator.errors import UsageError

    spec = text.strip().lower()
    parts = _DURATION.findall(spec)
    if not spec or "".join(n + u for n, u in parts) != spec or not parts:
        raise UsageError(f"--follow-for {text!r}: not a duration (e.g. 90s, 30m, 2h, 1h30m)")
    return sum(float(n) * _UNIT[u] for n, u in parts)


def run_settings(src: Connector, dst: Connector, run: RunOptions, quiet: bool):
    """The settings of a run; from here on, a destination that keeps snapshots records this run as
    one (not a dry run)."""
    from migrator.runner import RunSettings

    dst.snapshot = not run.dry_run
    return RunSettings(engine_options(src, dst, run), state_path=run.state, reset_state=run.reset_state,
                       report_path=run.report, quiet=quiet)


def with_encryption(src: Connector, dst: Connector, encrypt_to: list[str] | None, encrypt_to_file: list[str] | None,
                    identity: str | None, both: bool = False) -> None:
    """--encrypt-to/--encrypt-to-file for the destination; --identity for the source (a restore:
    writing never needs it), and for the destination too if `both` are read (verify: the file may
    hold the keys of both)."""
    from migrator.stores import check_readable, encrypts_at_rest
    from migrator.stores.archive_crypt import parse_recipients

    if encrypt_to or encrypt_to_file:
        if not encrypts_at_rest(dst.endpoint):
            raise UsageError("--encrypt-to: only an archive:// destination is encrypted at rest")
        dst.encrypt_to = parse_recipients(encrypt_to or (), encrypt_to_file or ())
    if identity is not None:
        if not (encrypts_at_rest(src.endpoint) or encrypts_at_rest(dst.endpoint)):
            raise UsageError("--identity reads an encrypted archive: neither side is an archive://")
        src.identity = identity
        dst.identity = identity if both else None
    check_readable(src.endpoint, identity)
