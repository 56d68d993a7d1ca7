"""``bastion pki``: create a CA and server certificate, issue client certificates, revoke them.

Thin on purpose: the work is in ``bastion.security.pki``; this module parses options and
prints each file written with its mode, subject, SANs and expiry.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from pathlib import Path

import click
from cryptography import x509

from bastion.errors import ConfigError
from bastion.security import pki

__all__ = ["pki_group"]

EXIT_CONFIG_ERROR = 2
PKI_DIR_ENV = "BASTION_PKI_DIR"
DEFAULT_PKI_DIR = "pki"

_REASONS = {
    "unspecified": x509.ReasonFlags.unspecified,
    "key-compromise": x509.ReasonFlags.key_compromise,
    "ca-compromise": x509.ReasonFlags.ca_compromise,
    "affiliation-changed": x509.ReasonFlags.affiliation_changed,
    "superseded": x509.ReasonFlags.superseded,
    "cessation-of-operation": x509.ReasonFlags.cessation_of_operation,
    "privilege-withdrawn": x509.ReasonFlags.privilege_withdrawn,
}

_dir_option = click.option(
    "--dir",
    "ca_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=DEFAULT_PKI_DIR,
    show_default=True,
    envvar=PKI_DIR_ENV,
    show_envvar=True,
    help="Directory holding ca.crt and ca.key (as made by `bastion pki init`).",
)
_san_option = click.option(
    "--san",
    "sans",
    metavar="NAME",
    multiple=True,
    help="Extra subjectAltName, repeatable: DNS:name, IP:addr, email:x@y, URI:...; a bare "
    "value is an IP address if it parses as one, else a DNS name.",
)
_key_type_option = click.option(
    "--key-type",
    type=click.Choice(["ec", "rsa"]),
    default="ec",
    show_default=True,
    help="ec: ECDSA P-256; rsa: RSA 3072.",
)
_force_option = click.option(
    "--force", is_flag=True, help="Replace existing files (they are refused otherwise)."
)


@click.group(name="pki")
def pki_group() -> None:
    """Certificates for TLS: a local CA, server and client certificates, revocation.

    Private keys are written with mode 0600, certificates with 0644. Commands other than
    `init` find the CA in --dir (default ./pki, or $BASTION_PKI_DIR).
    """


@pki_group.command(name="init")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@_san_option
@click.option(
    "--days",
    type=int,
    default=3650,
    show_default=True,
    help="Validity of the CA, in days.",
)
@click.option(
    "--server-days",
    type=int,
    default=825,
    show_default=True,
    help="Validity of the server certificate, in days (never beyond the CA's).",
)
@click.option(
    "--cn",
    "common_name",
    default="Bastion Dev CA",
    show_default=True,
    help="Common name of the CA.",
)
@_key_type_option
@_force_option
@click.pass_context
def init_command(
    ctx: click.Context,
    *,
    directory: Path,
    sans: tuple[str, ...],
    days: int,
    server_days: int,
    common_name: str,
    key_type: pki.KeyType,
    force: bool,
) -> None:
    """Create a CA (ca.crt, ca.key) and a server certificate (server.crt, server.key) in DIRECTORY.

    The server certificate is valid for localhost, 127.0.0.1 and ::1 plus every --san.
    """
    try:
        result = pki.init_ca(
            directory,
            common_name=common_name,
            days=days,
            key_type=key_type,
            sans=sans,
            server_days=server_days,
            force=force,
        )
    except ConfigError as error:
        _fail(ctx, error)
        return
    click.echo(f"Created a certificate authority and a server certificate in {directory}:")
    width = _width(result.files)
    _show(
        result.ca,
        "CA private key: keep it secret, it signs every certificate",
        "CA certificate: clients trust the broker through it",
        width,
    )
    _show(result.server, "server private key", "server certificate", width)
    hint = "" if directory == Path(DEFAULT_PKI_DIR) else f" --dir {directory}"
    click.echo(f"Next: issue client certificates with `bastion pki client NAME{hint}`.")


@pki_group.command(name="client")
@click.argument("name")
@_dir_option
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory to write NAME.crt and NAME.key to [default: the CA directory].",
)
@click.option("--days", type=int, default=825, show_default=True, help="Validity, in days.")
@_san_option
@_key_type_option
@_force_option
@click.pass_context
def client_command(
    ctx: click.Context,
    *,
    name: str,
    ca_dir: Path,
    out_dir: Path | None,
    days: int,
    sans: tuple[str, ...],
    key_type: pki.KeyType,
    force: bool,
) -> None:
    """Issue a client certificate NAME.crt / NAME.key with CN=NAME (clientAuth).

    NAME is 1-64 letters, digits, '_', '.', '@' or '-'; with use_identity_as_username = "cn"
    it becomes the client's MQTT username.
    """
    try:
        info = pki.issue_client(
            ca_dir, name, days=days, out_dir=out_dir, sans=sans, key_type=key_type, force=force
        )
    except ConfigError as error:
        _fail(ctx, error)
        return
    click.echo(f"Issued a client certificate for {name!r}, signed by the CA in {ca_dir}:")
    _show(info, "client private key: install it on the device only", "client certificate")


@pki_group.command(name="server")
@_dir_option
@_san_option
@click.option(
    "--name",
    default="server",
    show_default=True,
    help="File stem: writes NAME.crt and NAME.key.",
)
@click.option("--cn", "common_name", help="Common name [default: the first DNS name].")
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory to write to [default: the CA directory].",
)
@click.option("--days", type=int, default=825, show_default=True, help="Validity, in days.")
@_key_type_option
@_force_option
@click.pass_context
def server_command(
    ctx: click.Context,
    *,
    ca_dir: Path,
    sans: tuple[str, ...],
    name: str,
    common_name: str | None,
    out_dir: Path | None,
    days: int,
    key_type: pki.KeyType,
    force: bool,
) -> None:
    """(Re-)issue a server certificate for localhost, 127.0.0.1, ::1 and every --san.

    Replacing the broker's live server.crt needs --force; a running broker picks it up on
    SIGHUP.
    """
    try:
        info = pki.issue_server(
            ca_dir,
            sans=sans,
            name=name,
            common_name=common_name,
            days=days,
            key_type=key_type,
            out_dir=out_dir,
            force=force,
        )
    except ConfigError as error:
        _fail(ctx, error)
        return
    click.echo(f"Issued a server certificate, signed by the CA in {ca_dir}:")
    _show(info, "server private key", "server certificate")


@pki_group.command(name="revoke")
@click.argument("certificate", type=click.Path(dir_okay=False, path_type=Path))
@_dir_option
@click.option("--reason", type=click.Choice(list(_REASONS)), help="Reason recorded in the CRL.")
@click.option(
    "--crl-days",
    type=int,
    default=365,
    show_default=True,
    help="Days until the CRL's next update; refresh it with `bastion pki crl` before then.",
)
@click.pass_context
def revoke_command(
    ctx: click.Context,
    *,
    certificate: Path,
    ca_dir: Path,
    reason: str | None,
    crl_days: int,
) -> None:
    """Revoke CERTIFICATE: add it to the CA's ca.crl (created if needed) and re-sign it."""
    try:
        result = pki.revoke(
            ca_dir,
            certificate,
            reason=None if reason is None else _REASONS[reason],
            days=crl_days,
        )
    except ConfigError as error:
        _fail(ctx, error)
        return
    verb = "was already revoked" if result.already_revoked else "is revoked"
    click.echo(f"{result.subject} (serial {result.serial:x}) {verb}.")
    _show_crl(result.crl)


@pki_group.command(name="crl")
@_dir_option
@click.option(
    "--days", type=int, default=365, show_default=True, help="Days until the next update."
)
@click.pass_context
def crl_command(ctx: click.Context, *, ca_dir: Path, days: int) -> None:
    """Create the CA's ca.crl, or re-sign it with a fresh validity (same entries)."""
    try:
        info = pki.write_crl(ca_dir, days=days)
    except ConfigError as error:
        _fail(ctx, error)
        return
    _show_crl(info)


# ----------------------------------------------------------------- output


def _width(files: Sequence[pki.WrittenFile]) -> int:
    return max(len(str(f.path)) for f in files)


def _show(info: pki.CertificateInfo, key_role: str, cert_role: str, width: int = 0) -> None:
    width = width or _width(info.files)
    if info.key is not None:
        click.echo(f"  {_file(info.key, width)}  {key_role}")
    click.echo(f"  {_file(info.cert, width)}  {cert_role}")
    rows: list[tuple[str, str]] = [("subject", info.subject)]
    if info.issuer != info.subject:
        rows.append(("issuer", info.issuer))
    if info.sans:
        rows.append(("SANs", ", ".join(info.sans)))
    if info.usages:
        rows.append(("usage", ", ".join(info.usages)))
    rows.append(("expires", _expiry(info.not_after)))
    rows.append(("SHA-256", info.fingerprint_sha256))
    for label, value in rows:
        click.echo(f"      {label:<8} {value}")


def _show_crl(info: pki.CrlInfo) -> None:
    count = len(info.revoked_serials)
    click.echo(f"  {_file(info.file, 0)}  CRL #{info.number} of {info.issuer}")
    click.echo(f"      {'revoked':<8} {count} certificate{'s' if count != 1 else ''}")
    click.echo(f"      {'next':<8} {_expiry(info.next_update)}")


def _file(written: pki.WrittenFile, width: int) -> str:
    return f"{written.path!s:<{width}}  {written.mode:04o}"


def _expiry(when: dt.datetime) -> str:
    days = round((when - dt.datetime.now(dt.UTC)).total_seconds() / 86_400)
    return f"{when:%Y-%m-%d %H:%M} UTC (in {days} days)"


def _fail(ctx: click.Context, error: ConfigError) -> None:
    lines: Sequence[str] = str(error).splitlines() or [""]
    for line in lines:
        click.echo(f"bastion: error: {line}", err=True)
    ctx.exit(EXIT_CONFIG_ERROR)
