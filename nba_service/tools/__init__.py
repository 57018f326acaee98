"""Offline tools over the same engine the server runs: the what-if preview.

Like the CLI, tools sit above the layers and may use any of them (the event
files they read are the API's request format, nba_service.api.event_log);
nothing below imports them.
"""
