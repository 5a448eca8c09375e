"""The owner's HTTP service: a box served at a chosen access level (needs the 'serve' extra)."""

from __future__ import annotations

from exotune.serve.config import ServeConfig


def _app_module():
    try:
        from exotune.serve import app
    except ImportError as err:
        from exotune.errors import MissingDependencyError

        raise MissingDependencyError(
            f"serving a box needs FastAPI ({err.name} is missing): pip install 'exotune[serve]'"
        ) from err
    return app


def create_app(box, tokens, config: ServeConfig | None = None, model_name: str | None = None):
    """Build the FastAPI app serving ``box`` (see ``exotune.serve.app.create_app``)."""
    return _app_module().create_app(box, tokens, config, model_name)


def create_towers_app(towers: dict, tokens, config: ServeConfig | None = None):
    """Build the app serving several towers under one token set (``exotune.serve.app.create_towers_app``)."""
    return _app_module().create_towers_app(towers, tokens, config)


__all__ = ["ServeConfig", "create_app", "create_towers_app"]
