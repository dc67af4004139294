"""Metrics and traces of the service: the instruments only (what to count, how to export).

Where they are updated lives with the code that does the work (`service.observe`); what the
published status values say is turned into metrics at scrape time (`service.status_metrics`).
"""
