"""Offline tools over the same engine the server runs: the event-file format and the what-if preview.

Like the CLI, tools sit above the layers and may use any of them (the API's
request conversions included, so an event file is checked exactly as a
request would be); nothing below imports them.
"""
