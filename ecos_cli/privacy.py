"""`ecos privacy`: ε of the noisy coverage scores, and the σ a target ε needs (dp-accounting)."""

from __future__ import annotations

import typer

privacy_app = typer.Typer(help="Privacy accounting (dp-accounting) for the noisy coverage scores.", no_args_is_help=True)


@privacy_app.command("epsilon")
def privacy_epsilon(
    sigma: float = typer.Option(..., help="Noise std of each score."),
    delta: float = typer.Option(1e-5, help="δ."),
    rounds: int = typer.Option(1, help="Responses composed (rounds answered by one client)."),
    accountant: str = typer.Option("pld", help="pld or rdp."),
) -> None:
    """ε of the noisy coverage scores at δ, composed over rounds."""
    from ecos_core.privacy.accounting import gaussian_epsilon

    typer.echo(f"{gaussian_epsilon(sigma, delta, rounds, accountant=accountant):.4f}")


@privacy_app.command("sigma")
def privacy_sigma(
    epsilon: float = typer.Option(..., help="Target ε."),
    delta: float = typer.Option(1e-5, help="δ."),
    rounds: int = typer.Option(1, help="Responses composed."),
) -> None:
    """The smallest σ whose ε (PLD) is at most the target."""
    from ecos_core.privacy.accounting import sigma_for_epsilon

    if not epsilon > 0:
        raise ValueError(f"--epsilon must be > 0 (got {epsilon}): no finite noise gives ε = 0")
    if not 0 < delta < 1:
        raise ValueError(f"--delta must be in (0, 1) (got {delta})")

    typer.echo(f"{sigma_for_epsilon(epsilon, delta, rounds):.4f}")
