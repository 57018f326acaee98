"""``nba console``: the marketing console, a server-rendered web application on the servers' Redis.

:mod:`~nba_service.console.app` has the pages, sign-in, roles and CSRF; :mod:`~nba_service.console.levers` turns
a form of levers into a new policy set; :mod:`~nba_service.console.live` scrapes the servers' metrics;
:mod:`~nba_service.console.charts` draws SVG. See docs/console.md.
"""
