"""The owner's HTTP service: a box served at a chosen access level (needs the 'serve' extra)."""

from __future__ import annotations

from exotune.serve.config import ServeConfig


def create_app(box, tokens, config: ServeConfig | None = None, model_name: str | None = None):
    """Build the FastAPI app serving ``box`` (see ``exotune.serve.app.create_app``)."""
    try:
        from exotune.serve.app import create_app as _create_app
    except ImportError as err:
        from exotune.errors import MissingDependencyError

        raise MissingDependencyError(
            f"serving a box needs FastAPI ({err.name} is missing): pip install 'exotune[serve]'"
        ) from err
    return _create_app(box, tokens, config, model_name)


__all__ = ["ServeConfig", "create_app"]
