"""`ecos client respond`: the edge client's one command. Imports nothing heavy at module
level and never Prefect: it runs on the device."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer


def client_respond(
    invite: str = typer.Option(..., help="The round's invitation (a file, or a URL) delivered to this device."),
    enrollment: Path = typer.Option(..., help="This device's enrollment file (client id + key), from `ecos clients enroll`."),
    data: str = typer.Option(..., help="Local data: an image folder, a manifest (.csv/.parquet), an ImageSet .npz, or builtin:<domain>."),
    ledger: Path = typer.Option(Path("ecos-privacy-ledger.json"), help="This device's privacy ledger (ε spent so far); "
                                "its signed answers are kept beside it, in <ledger name>.responses/."),  # fmt: skip
    seed: Optional[int] = typer.Option(None, help="Noise seed (simulations only; default: fresh OS entropy)."),
    weights: Optional[str] = typer.Option(None, help="A local file of the probe's backbone (weights, or an ONNX model; "
                                                     "default: packaged, or the probe's URL), checked against its sha256."),
    progress: bool = typer.Option(True, help="Show a progress bar."),
) -> None:
    """Answer one round: verify the probe, compute the noisy coverage scores on local data,
    sign them, keep them beside the ledger and upload them (retried until the round's
    deadline). Run it again after a failed upload: it re-sends the kept answer, never a new
    one. Only K noisy scalars and the ids leave the device; it needs no storage
    credentials (the invitation's URLs are pre-signed) and no Prefect."""
    from ecos_core.exchange import transport
    from ecos_core.exchange.auth import read_enrollment
    from ecos_core.exchange.client import resend_kept, respond
    from ecos_core.exchange.protocol import decode_invitation
    from ecos_core.privacy.ledger import PrivacyLedger

    url = invite if "://" in invite else "file://" + str(Path(invite).resolve())
    invitation = decode_invitation(transport.fetch(url, 1 << 16), invite)
    device, book = read_enrollment(enrollment), PrivacyLedger(ledger)
    notice = _retry_notice(invitation.client_id, invitation.round_id)
    try:
        answer = resend_kept(invitation, device, book, on_retry=notice)  # before loading any data: nothing to compute
        if answer is None:
            images = load_local(data).images
            answer = respond(invitation, device, images, book, seed, weights, progress, on_retry=notice)
    except KeyboardInterrupt:
        kept = book.kept_path(invitation.round_id)
        where = f"its answer is kept at {kept}; run the same command again to send it" if kept.exists() else \
            "nothing was released"  # fmt: skip
        typer.echo(f"interrupted: round {invitation.round_id} not delivered; {where}", err=True)
        raise typer.Exit(130) from None
    typer.echo(_summary(invitation.client_id, invitation.round_id, answer))


def _retry_notice(client_id: str, round_id: str):  # noqa: ANN202
    def notice(attempt: int, delay_s: float, reason: str) -> None:
        print(f"{client_id}: round {round_id}: upload attempt {attempt} failed ({reason}); "
              f"trying again in {delay_s:.1f} s", file=sys.stderr, flush=True)  # fmt: skip

    return notice


def _summary(client_id: str, round_id: str, answer) -> str:  # noqa: ANN001
    spent = f"this device has spent ε={answer.epsilon:.3f} (δ=1e-5)"
    if answer.outcome == "delivered before":
        return f"{client_id}: round {round_id} was already answered and delivered (kept at {answer.kept_path}); " \
               f"nothing sent; {spent}"  # fmt: skip
    if answer.outcome == "resent":
        return (f"{client_id}: round {round_id} was answered before; re-sent the kept answer (kept at "
                f"{answer.kept_path}, {len(answer.wire)} B, not recomputed: no new noise, ε not spent again) in "
                f"{answer.attempts} attempt(s); {spent}")  # fmt: skip
    return (f"{client_id}: answered round {round_id} from {answer.n_samples} local samples in {answer.seconds:.1f} s; "
            f"uploaded {len(answer.wire)} B in {answer.attempts} attempt(s); this device has now spent "
            f"ε={answer.epsilon:.3f} (δ=1e-5)")  # fmt: skip


def load_local(spec: str):  # noqa: ANN201
    """The device's (or a dataset's) images: an ImageSet .npz, a folder, a manifest or builtin:<domain>."""
    if spec.endswith(".npz"):
        from ecos_core.data.npz import load_imageset

        return load_imageset(spec)
    from ecos_core.data.user import load_dataset

    return load_dataset(spec)
