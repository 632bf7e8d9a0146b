"""The settings of the app that serves this request: the ones create_app was given."""

from __future__ import annotations

from flask import Flask, current_app, has_app_context

from core.settings import Settings, get_settings

_KEY = "shiftscore.settings"


def attach_settings(app: Flask, settings: Settings) -> None:
    app.extensions[_KEY] = settings


def current_settings() -> Settings:
    """The serving app's settings; outside an app (a script calling a service), the process's."""
    if has_app_context():
        return current_app.extensions[_KEY]
    return get_settings()
