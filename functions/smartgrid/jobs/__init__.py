"""Lambda handlers of the jobs: each parses its event, calls one domain function and reports
the outcome as metrics (dimension ``job``) and a log line."""
