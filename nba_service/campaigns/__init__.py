"""Outbound campaigns: a segment of the customers decided and delivered to in batches (docs/campaigns.md).

:mod:`~nba_service.campaigns.plan` makes the campaign's offers candidates of a live decision;
:mod:`~nba_service.campaigns.run` scans, decides, records, delivers and checkpoints a run.
"""
